"""Memory budget: refuse a job whose working memory would not fit, before it starts, and
size the tiles DIP ops fit large images in.

A DIP fit that runs out of memory either dies (the OOM killer takes the engine, and GIMP
gets "the engine stopped unexpectedly") or swaps the machine to a halt. Both are worse than
a message naming the need, so ops are checked against the memory available now.
No torch import: the check runs in the serve loop and the CLI before any backend loads.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from .errors import BadInput

BUDGET_ENV = "NEURAL_RESTORE_MEMORY_BUDGET_MB"
# Measured (session 1, light CPU net): a 1024² denoise peaked at ~3.2 GB resident, about
# 3 KB per net-input pixel on top of the ~0.4 GB torch itself takes. Kept per op so
# a backend with another footprint (ONNX tiles, paper nets) can declare its own.
TORCH_BASE_BYTES = 400 << 20
DIP_BYTES_PER_PIXEL = 3072
_BYTES_PER_PIXEL = {"denoise": DIP_BYTES_PER_PIXEL, "inpaint": DIP_BYTES_PER_PIXEL,
                    "dejpeg": DIP_BYTES_PER_PIXEL}  # dejpeg: denoise's nets and loop
# The paper-sized nets keep ~3.7× (denoise) / ~5.1× (inpaint) the light nets' activations
# per pixel (`NetConfig.activation_floats_per_pixel`; a test keeps these in step). ``auto``
# runs the light nets on a CPU.
_PAPER_NET_FACTOR = {"denoise": 3.75, "dejpeg": 3.75, "inpaint": 5.1}
# DIP ops fit large images tile by tile (engine/dip/tiles.py): the net needs memory for one
# tile, at most DIP_MAX_TILE² (a larger tile only makes the run slower: iterations grow with
# the side), at least DIP_MIN_TILE² (the light nets' smallest input). The full-size images
# stay in memory: input, colour copy, blended result, result with alpha, file/wire copies —
# about four float32 RGBA copies.
DIP_MAX_TILE = 1024
DIP_MIN_TILE = 64
IMAGE_BYTES_PER_PIXEL = 64
# Mirrors engine/dip/tasks.py's inpaint window: the hole's box plus a margin on each side
# (the optimisation only sees that window, so that is what costs memory).
_INPAINT_MIN_MARGIN = 32
_INPAINT_MARGIN_FRACTION = 0.5


def dip_tile_side(free: int | None, net_bytes_per_pixel: float, image_pixels: int,
                  base: bool = True) -> int:
    """Largest DIP tile side whose fit fits in ``free`` bytes next to the full-size images
    of ``image_pixels`` (and torch's own ~0.4 GB when ``base``), at most DIP_MAX_TILE; may
    be below DIP_MIN_TILE when memory is short (callers raise it to their net's minimum)."""
    if free is None:
        return DIP_MAX_TILE
    left = free - (TORCH_BASE_BYTES if base else 0) - IMAGE_BYTES_PER_PIXEL * image_pixels
    return min(DIP_MAX_TILE, int(math.sqrt(max(left, 0) / net_bytes_per_pixel)))


def available_bytes() -> int | None:
    """Memory this job may use: the env override (MB), else what the OS says is available."""
    override = os.environ.get(BUDGET_ENV)
    if override:
        try:
            return int(float(override) * (1 << 20))
        except ValueError:
            pass
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None  # unknown (e.g. Windows): no check rather than a wrong refusal


def work_area(op: str, height: int, width: int, mask: np.ndarray | None) -> tuple[int, int]:
    """(height, width) the op's backend really works on: the hole window for inpaint."""
    if op != "inpaint" or mask is None or not np.any(mask > 0):
        return height, width
    rows = np.flatnonzero((mask > 0).any(axis=1))
    cols = np.flatnonzero((mask > 0).any(axis=0))
    box_h, box_w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    margin = max(_INPAINT_MIN_MARGIN, math.ceil(_INPAINT_MARGIN_FRACTION * max(box_h, box_w)))
    return min(height, box_h + 2 * margin), min(width, box_w + 2 * margin)


def _output_scale(op: str, params: dict[str, Any]) -> int:
    """How many times larger than the input each side of what the op computes is (Upscale
    with DIP fits the enlarged image: its net and full-size copies are scale² bigger per input
    pixel; ×3 is fitted at ×4, then reduced)."""
    if op != "upscale" or not params.get("scale"):
        return 1
    from .ops import upscale_computed_scale

    return upscale_computed_scale(params)


def _net_bytes_per_pixel(op: str, params: dict[str, Any]) -> float | None:
    """Fit memory per *input* pixel of ``op``'s net, or None if not measured."""
    scale = _output_scale(op, params)
    method = params.get("method")
    if (op == "upscale" and method != "dip") or (op in ("denoise", "inpaint", "dejpeg") and method == "net"):
        return None  # the ONNX nets: not measured here (their runner tiles from a budget)
    if op == "upscale":
        op = "denoise"  # super-resolution runs the denoise nets on the enlarged image
    per_pixel = _BYTES_PER_PIXEL.get(op)
    if per_pixel is None:
        return None
    paper_sized = params.get("preset") in ("quality", "paper")
    return per_pixel * (_PAPER_NET_FACTOR.get(op, 1.0) if paper_sized else 1.0) * scale**2


def _tiled_need(net_bytes_per_pixel: float, height: int, width: int, image_pixels: int, tile: int) -> int:
    net_pixels = min(height, tile) * min(width, tile)
    return int(TORCH_BASE_BYTES + IMAGE_BYTES_PER_PIXEL * image_pixels + net_bytes_per_pixel * net_pixels)


def _requested_tile(params: dict[str, Any]) -> int:
    return max(DIP_MIN_TILE, int(params.get("tile") or 0))


def working_bytes(op: str, params: dict[str, Any], height: int, width: int,
                  work: tuple[int, int] | None = None) -> int | None:
    """Expected peak memory of ``op`` on a height×width image, or None if unknown: the
    full-size images plus one tile's fit on the area the op works on (``work``, default the
    whole image; inpaint: the hole's window). The tile is the one a run would choose now
    (``tile`` param, else from the memory available)."""
    per_pixel = _net_bytes_per_pixel(op, params)
    if per_pixel is None:
        return None
    work_h, work_w = work or (height, width)
    image_pixels = height * width * _output_scale(op, params) ** 2  # the copies are output-sized
    tile = (_requested_tile(params) if params.get("tile")
            else max(DIP_MIN_TILE, dip_tile_side(available_bytes(), per_pixel, image_pixels)))
    return _tiled_need(per_pixel, work_h, work_w, image_pixels, tile)


def _gigabytes(size: int) -> str:
    return f"{size / (1 << 30):.1f} GB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MB"


def check(op: str, params: dict[str, Any], image_shape: tuple[int, ...], mask: np.ndarray | None) -> None:
    """Raise BadInput naming the need when ``op`` would not fit in the available memory
    even in its smallest tiles (or the requested ``tile``)."""
    per_pixel = _net_bytes_per_pixel(op, params)
    budget = available_bytes()
    if per_pixel is None or budget is None:
        return
    height, width = image_shape[0], image_shape[1]
    work_h, work_w = work_area(op, height, width, mask)
    image_pixels = height * width * _output_scale(op, params) ** 2
    # The smallest tile (in input px; Upscale's smallest enlarged tile is 64² too).
    smallest = _requested_tile(params) // _output_scale(op, params)
    need = _tiled_need(per_pixel, work_h, work_w, image_pixels, smallest)
    if need <= budget:
        return
    area = {"inpaint": "the selected area and its surroundings", "upscale": "the enlarged image"}.get(op, "the image")
    raise BadInput(f"{op} on {area} ({work_w}×{work_h} pixels) needs about {_gigabytes(need)} of memory, "
                   f"this machine has {_gigabytes(budget)} free: select a smaller area (or crop / "
                   f"scale the image down), or close other programs, and try again")
