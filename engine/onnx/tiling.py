"""Run a fully convolutional net over a large image in overlapping tiles, without seams.

numpy + Pillow only (no torch, no onnxruntime): the net is any callable from a 1×C×h×w
float32 array (C = 3, or more for a net with guide channels: the inpainting net's hole) to
1×3×(s·h)×(s·w).

How a tiling is laid out (per axis; the 2-D plan is the product of two 1-D plans):
- The image is first reflect-padded so both sides are multiples of the net's size rule
  (``multiple``, e.g. 2**depth for a U-Net); tile sizes, overlaps and starts are multiples
  of it too, so every tile sees the same sampling grid as an untiled run would.
- All tiles have the same size T (one fixed shape per image: GPU kernels tuned once), evenly
  spread so neighbours overlap by at least ``overlap`` input px (default ~16).
- Blending: inside each overlap, a band ``overlap`` px wide centred in it is cross-faded
  with sin²/cos² weights (smooth, no visible edge); outside the bands a pixel comes from one
  tile only. The weights of all tiles sum to exactly 1 everywhere (a partition of unity), so
  no normalisation image is needed — the output buffer is the only full-size allocation.
  The faded band sits in the middle of the overlap, away from the tile edges where the net
  saw zero padding instead of real neighbours.
- Everything is float32: 16-bit and float images keep their precision.

The tile side comes from a memory budget and the net's activation size per pixel (model card),
clamped so that a tile is at least ~4 overlaps wide (keeps fade bands of one tile apart).
Alpha never goes through the net: ``resize_alpha`` resamples it (bicubic, clipped).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.errors import Cancelled

Infer = Callable[[np.ndarray], np.ndarray]
ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

DEFAULT_OVERLAP = 16
MAX_TILE = 1024
BYTES_PER_FLOAT = 4
RUNTIME_OVERHEAD = 2.0  # ORT keeps inputs/outputs of a few layers alive at once, plus arenas


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple


def min_tile(overlap: int, multiple: int) -> int:
    return round_up(4 * overlap + 2 * multiple, multiple)


def tile_from_budget(budget_bytes: float, floats_per_px: float, overlap: int, multiple: int = 1,
                     max_tile: int = MAX_TILE) -> int:
    """Largest square tile side whose activations fit the budget (within [min_tile, max_tile])."""
    px = budget_bytes / (BYTES_PER_FLOAT * max(floats_per_px, 1.0) * RUNTIME_OVERHEAD)
    side = round_down(int(math.sqrt(max(px, 1.0))), multiple)
    return int(min(max(side, min_tile(overlap, multiple)), max(round_down(max_tile, multiple), multiple)))


def plan_axis(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Tile starts along one axis of ``length`` (a multiple of ``multiple``); all tiles have
    side ``tile`` (clamped to ``length``) and neighbours overlap by ≥ ``overlap``."""
    tile = min(tile, length)
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    starts = [round_down(int(k * step), multiple) for k in range(count - 1)] + [length - tile]
    return sorted(set(starts))


def _fade(length: int, start: float, width: float) -> np.ndarray:
    """sin² ramp from 0 to 1 over [start, start + width) in pixel-centre coordinates."""
    centres = np.arange(length, dtype=np.float64) + 0.5
    t = np.clip((centres - start) / width, 0.0, 1.0)
    return np.sin(0.5 * math.pi * t) ** 2


def axis_weights(starts: list[int], tile: int, overlap: int, scale: int) -> list[np.ndarray]:
    """Per-tile 1-D blending weights at output resolution (tile·scale long each)."""
    tile_out = tile * scale
    weights = []
    for k, start in enumerate(starts):
        w = np.ones(tile_out, dtype=np.float64)
        if k > 0:  # fade in over the band centred in the overlap with the previous tile
            centre = (start + starts[k - 1] + tile) / 2.0
            w *= _fade(tile_out, (centre - overlap / 2.0 - start) * scale, overlap * scale)
        if k + 1 < len(starts):  # fade out: exactly 1 − the next tile's fade in
            centre = (starts[k + 1] + start + tile) / 2.0
            w *= 1.0 - _fade(tile_out, (centre - overlap / 2.0 - start) * scale, overlap * scale)
        weights.append(w.astype(np.float32))
    return weights


@dataclass(frozen=True)
class TilePlan:
    padded_height: int
    padded_width: int
    tile_height: int
    tile_width: int
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def make_plan(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TilePlan:
    ph, pw = round_up(height, multiple), round_up(width, multiple)
    overlap = round_up(max(overlap, 0), multiple) if overlap else 0
    # ≥ ~4 overlaps: the fade bands of one tile's two sides then never meet (see module doc).
    tile = max(round_down(tile, multiple), min_tile(overlap, multiple))
    th, tw = min(tile, ph), min(tile, pw)
    return TilePlan(ph, pw, th, tw, plan_axis(ph, th, overlap, multiple), plan_axis(pw, tw, overlap, multiple))


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    dy, dx = height - image.shape[0], width - image.shape[1]
    if dy == 0 and dx == 0:
        return image
    # Reflect needs at least 2 px; a 1-px side can only be repeated.
    mode = "reflect" if min(image.shape[:2]) > max(dy, dx) else "symmetric"
    return np.pad(image, ((0, dy), (0, dx), (0, 0)), mode=mode)


def run_tiled(image: np.ndarray, infer: Infer, *, scale: int = 1, multiple: int = 1, tile: int = 512,
              overlap: int = DEFAULT_OVERLAP, progress: ProgressCallback | None = None,
              cancel_requested: CancelCallback | None = None) -> np.ndarray:
    """Apply ``infer`` to an H×W×C float32 image (C ≥ 3: RGB, then any guide channels) tile by
    tile; returns (s·H)×(s·W)×3 float32.

    ``progress(fraction, text)`` is called after each tile; ``cancel_requested()`` is asked
    before each tile and raises ``Cancelled`` when true.
    """
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"run_tiled wants H×W×C with C ≥ 3, got {image.shape}")
    height, width = image.shape[:2]
    plan = make_plan(height, width, tile, overlap, multiple)
    overlap = round_up(overlap, multiple) if overlap else 0
    padded = _pad_to(np.asarray(image, dtype=np.float32), plan.padded_height, plan.padded_width)
    out = np.zeros((plan.padded_height * scale, plan.padded_width * scale, 3), dtype=np.float32)
    wy = axis_weights(plan.ys, plan.tile_height, overlap, scale)
    wx = axis_weights(plan.xs, plan.tile_width, overlap, scale)
    done = 0
    for iy, y in enumerate(plan.ys):
        for ix, x in enumerate(plan.xs):
            if cancel_requested is not None and cancel_requested():
                raise Cancelled()
            patch = padded[y:y + plan.tile_height, x:x + plan.tile_width]
            result = infer(np.ascontiguousarray(patch.transpose(2, 0, 1)[None]))
            expected = (1, 3, plan.tile_height * scale, plan.tile_width * scale)
            if result.shape != expected:
                raise ValueError(f"net returned {result.shape} for a tile, expected {expected}")
            weight = wy[iy][:, None, None] * wx[ix][None, :, None]
            oy, ox = y * scale, x * scale
            out[oy:oy + expected[2], ox:ox + expected[3]] += weight * result[0].transpose(1, 2, 0)
            done += 1
            if progress is not None:
                progress(done / plan.count, f"tile {done}/{plan.count}")
    return out[:height * scale, :width * scale]


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Every channel (alpha too) to height×width, float32 all the way (16-bit stays 16-bit),
    by Pillow's bicubic, antialiased when reducing; clipped to [0, 1]."""
    out = np.empty((height, width, image.shape[2]), np.float32)
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
        out[:, :, c] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """H×W×1 alpha → (s·H)×(s·W)×1 by bicubic (float32, so 16-bit alpha keeps its depth)."""
    if scale == 1:
        return alpha.astype(np.float32, copy=False)
    h, w = alpha.shape[:2]
    return resize_to(alpha, h * scale, w * scale)
