"""Large images in bounded memory: a DIP task fitted tile by tile and blended without seams.

A DIP fit keeps every activation of its net for the backward pass, ~3 KB per pixel for the
light CPU net: an 8000×8000 image would need ~190 GB at once. Instead the image is cut into
overlapping square tiles, each tile is restored on its own by the task's untiled path (the
one loop in `loop.fit`, same preset, same seed), and the results are cross-faded.

Layout and blending are the ONNX tiler's (`engine.onnx.tiling`): equal tiles spread evenly so
neighbours overlap by at least two bands; inside each overlap a band ``overlap`` px wide, in
its middle (away from the tile edges, where a fit saw only mirrored context), is cross-faded with sin²/cos² weights that sum to exactly 1 (a partition of unity), so a
pixel's value is a weighted mean of at most four tile results and flat output stays flat.
Unlike a trained net, each DIP tile is a separate fit, so tile starts need no alignment to
the net's sampling grid; only the tile's own side must meet the net's size rule
(`NetConfig.size_multiple` / ``min_side``), which `tile_side_for` guarantees.

Memory: the tile side is the largest that fits the memory free on the run's device
(`budget.dip_tile_side`); the only full-size arrays are the input and the output.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine import budget
from engine.errors import Cancelled
from engine.onnx.tiling import axis_weights, plan_axis

from .loop import CancelCallback, FitStats, ProgressCallback
from .nets import LIGHT_DENOISE, NetConfig

# Per tile: (crop, its (y, x) in the image, progress, cancel_requested, preview, stats) ->
# the crop restored (×scale).
WindowFit = Callable[[np.ndarray, tuple[int, int], "ProgressCallback | None", "CancelCallback | None",
                      "Callable[[np.ndarray], None] | None", FitStats], np.ndarray]

# Fade band between neighbouring tiles (input px). Wide enough that two independent fits'
# different noise residue blends without a visible edge; small next to a tile (≥ 4 bands).
DEFAULT_OVERLAP = 32
MIN_OVERLAP = 4
# GPU memory is shared with the display and cuDNN workspaces: plan with this share of it.
CUDA_FREE_SHARE = 0.8


def net_bytes_per_pixel(config: NetConfig) -> float:
    """Working memory of a fit per net-input pixel: the light CPU net's measured figure
    (`budget.DIP_BYTES_PER_PIXEL`), scaled by how many activations ``config`` keeps per
    pixel relative to that net."""
    return budget.DIP_BYTES_PER_PIXEL * (config.activation_floats_per_pixel()
                                         / LIGHT_DENOISE.activation_floats_per_pixel())


def free_bytes(device: torch.device) -> int | None:
    """Memory a fit on ``device`` may use now: CUDA free memory (a share of it), or the
    host's available memory (`budget.available_bytes`, which honours the env override)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_SHARE)
    return budget.available_bytes()


def tile_side_for(config: NetConfig, device: torch.device, image_pixels: int, scale: int = 1,
                  requested: int | None = None) -> int:
    """Input-resolution tile side for a run: ``requested`` if given (raised to the smallest
    valid tile), else the largest that fits the device's free memory, at most
    `budget.DIP_MAX_TILE`. The tile's ×``scale`` side always meets ``config``'s size rule."""
    multiple = _input_multiple(config, scale)
    smallest = _smallest_tile(config, scale)
    if requested is not None:
        side = requested
    else:
        # Host memory also holds the full-size images; GPU memory only the net.
        host_images = 0 if device.type == "cuda" else image_pixels
        side = budget.dip_tile_side(free_bytes(device), net_bytes_per_pixel(config) * scale * scale,
                                    host_images, base=device.type != "cuda")
    return max(smallest, side // multiple * multiple)


def _input_multiple(config: NetConfig, scale: int) -> int:
    # (tile · scale) must be a multiple of config.size_multiple.
    return max(1, config.size_multiple // math.gcd(config.size_multiple, scale))


def _smallest_tile(config: NetConfig, scale: int) -> int:
    """Smallest tile side: ×scale it meets min_side, and it holds 4 of the narrowest fade
    bands (so one tile's two bands never meet)."""
    multiple = _input_multiple(config, scale)
    side = max(-(-config.min_side // scale), 4 * MIN_OVERLAP + 2)
    return -(-side // multiple) * multiple


def overlap_for(tile: int) -> int:
    """Fade band for a tile side: `DEFAULT_OVERLAP`, narrower for tiles under 4 bands wide."""
    return max(MIN_OVERLAP, min(DEFAULT_OVERLAP, (tile - 2) // 4))


@dataclass(frozen=True)
class TileGrid:
    """Tile starts per axis (input px) and the tile's side per axis (= the image's side on
    an axis no longer than the tile)."""

    tile_height: int
    tile_width: int
    ys: list[int]
    xs: list[int]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def boxes(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]


def plan(height: int, width: int, tile: int, overlap: int | None = None) -> TileGrid:
    """Tiles of side ``tile`` over a height×width image (an axis no longer than ``tile`` is
    one tile of its own length). ``overlap`` defaults to `overlap_for(tile)`."""
    overlap = overlap_for(tile) if overlap is None else overlap
    if tile < 4 * overlap + 2:
        raise ValueError(f"a {tile}-px tile is too small for {overlap}-px fade bands (needs ≥ {4 * overlap + 2})")
    tile_height, tile_width = min(tile, height), min(tile, width)
    # Neighbours overlap by at least two bands, so the band (centred in the overlap) stays
    # half a band or more from either tile's edge, where a fit saw only mirrored context.
    spacing = 2 * overlap
    return TileGrid(tile_height, tile_width, plan_axis(height, tile_height, spacing),
                    plan_axis(width, tile_width, spacing), overlap)


def blend_weights(grid: TileGrid, scale: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-tile 1-D weights (rows, columns) at output resolution; the 2-D weight of tile
    (i, j) is their outer product, and all tiles' weights sum to 1 at every pixel."""
    return (axis_weights(grid.ys, grid.tile_height, grid.overlap, scale),
            axis_weights(grid.xs, grid.tile_width, grid.overlap, scale))


def fit_tiles(image: np.ndarray, fit_window: WindowFit, grid: TileGrid, *, scale: int = 1,
              base: np.ndarray | None = None, skip: Callable[[int, int], bool] | None = None,
              progress: ProgressCallback | None = None, cancel_requested: CancelCallback | None = None,
              preview: Callable[[np.ndarray], None] | None = None, stats: FitStats | None = None,
              label: str = "Deep Image Prior") -> np.ndarray:
    """Restore ``image`` (H×W×C float32) tile by tile with ``fit_window``; return the blend.

    ``base`` is what the result holds where no tile has been fitted yet (default: ``image``;
    for ×``scale`` > 1 pass an upscaled image): a cancel's partial result and the previews
    show the finished tiles over it. ``skip(y, x)`` True leaves a tile as ``base`` (no fit;
    e.g. an inpainting tile with no hole). Progress runs over all tiles; ``stats`` adds up
    the tiles' iterations and seconds (``stopped_early``: every fitted tile stopped itself).
    """
    height, width, channels = image.shape
    if base is None:
        base = image
    if base.shape != (height * scale, width * scale, channels):
        raise ValueError(f"base is {base.shape}, expected {(height * scale, width * scale, channels)}")
    result = np.array(base, dtype=np.float32, copy=True)
    row_weights, column_weights = blend_weights(grid, scale)
    boxes = grid.boxes()
    total = FitStats(iterations_run=0, stopped_early=True, result_iteration=0, seconds=0.0, tiles=0)
    out_h, out_w = grid.tile_height * scale, grid.tile_width * scale

    def add(into: np.ndarray, index: int, restored: np.ndarray) -> None:
        # result += w · (tile − base): finished tiles replace the base by their weighted mean.
        iy, ix = divmod(index, len(grid.xs))
        y, x = grid.ys[iy] * scale, grid.xs[ix] * scale
        weight = row_weights[iy][:, None, None] * column_weights[ix][None, :, None]
        region = into[y:y + out_h, x:x + out_w]
        region += weight * (restored - base[y:y + out_h, x:x + out_w])

    for index, (y, x) in enumerate(boxes):
        if skip is not None and skip(y, x):
            continue
        crop = np.ascontiguousarray(image[y:y + grid.tile_height, x:x + grid.tile_width])
        prefix = f"{label}: tile {index + 1}/{len(boxes)}"

        def tile_progress(fraction: float, text: str, index: int = index, prefix: str = prefix) -> None:
            if progress is not None:
                # The task's own text after its label: "<label>: tile k/n, iteration ...".
                detail = text.split(": ", 1)[-1]
                progress(min(1.0, (index + fraction) / len(boxes)), f"{prefix}, {detail}")

        def tile_preview(so_far: np.ndarray, index: int = index) -> None:
            assert preview is not None
            shown = result.copy()
            add(shown, index, so_far)
            preview(shown)

        tile_stats = FitStats()
        try:
            restored = fit_window(crop, (y, x), tile_progress, cancel_requested,
                                  tile_preview if preview is not None else None, tile_stats)
        except Cancelled as cancelled:
            if isinstance(cancelled.partial, np.ndarray):
                add(result, index, cancelled.partial)
            # Finished tiles (and this one's average so far) over the base.
            raise Cancelled(cancelled.message, np.clip(result, 0.0, 1.0)) from None
        add(result, index, restored)
        total.add(tile_stats)  # a window fit counts as one tile
    if stats is not None:
        stats.__dict__.update(total.__dict__, stopped_early=total.tiles > 0 and total.stopped_early)
    if progress is not None:
        progress(1.0, f"{label}: {total.tiles} of {len(boxes)} tiles fitted")
    return np.clip(result, 0.0, 1.0)
