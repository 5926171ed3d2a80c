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
    if op == "inpaint" and method == "patch":
        return None  # OpenCV's patch-based fill: a few copies of the hole's window, no net
    if op == "upscale":
        op = "denoise"  # super-resolution runs the denoise nets on the enlarged image
    per_pixel = _BYTES_PER_PIXEL.get(op)
    if per_pixel is None:
        return None
    paper_sized = params.get("preset") in ("quality", "paper")
    return per_pixel * (_PAPER_NET_FACTOR.get(op, 1.0) if paper_sized else 1.0) * scale**2


# The trained nets (ONNX Runtime; engine/onnx/runner.py tiles them from an activation budget):
# peak = a fixed part (Python, numpy, ONNX Runtime, the model: 70–85 MB measured on tiny
# inputs), the full-size image copies (the file or wire copy, float32 colour, the result,
# alpha, the written copy), counted per pixel of input plus output, and the tiles'
# activations, which the runner sizes from what is left (at least NET_MIN_ACTIVATION_BYTES).
# Measured with the whole CLI command on photos up to 12 MP: benchmarks/memory_bench.py
# (results/2026-12-07-memory-nets-cpu.json).
NET_BASE_BYTES = 128 << 20
NET_IMAGE_BYTES_PER_PIXEL = 36
NET_MIN_ACTIVATION_BYTES = 256 << 20


# Decompose (Double-DIP) fits its two or three nets together on a copy whose longer side is at
# most the working side (engine/dip/full_resolution.py carries the split to full size): on
# a CPU what its 270 s budget fits with enough iterations — at 256² segment runs 662, dehaze
# ~1060; at 384² the budget allows fewer than the 300 minimum, and the 384² benchmark fitted
# whole scored below the same images fitted at 192 and carried to 384 in every mode but
# segment with colours, the stripe watermark and one-mix transparency (dehaze +4.5 against
# +11.3 dB, in 1.2–2.8× the time; docs/results.md, "Large layers"); on a GPU what the
# paper's nets, three of them, keep within an 8 GB card. Watermark fits only its box and a
# margin, and a mark's strokes need the resolution: 384 on a CPU (the fotolia mark, 500×334,
# is then fitted at full size in ~200 s).
DECOMPOSE_WORKING_SIDE = {"cpu": 256, "cuda": 512}
DECOMPOSE_WATERMARK_WORKING_SIDE_CPU = 384
DECOMPOSE_MIN_WORKING_SIDE = 64
DECOMPOSE_MAX_WORKING_SIDE = 8192


def decompose_working_side(mode: str, device: str) -> int:
    """The automatic working side of ``mode`` on ``device`` ("cpu" or "cuda")."""
    if device == "cuda":
        return DECOMPOSE_WORKING_SIDE["cuda"]
    return DECOMPOSE_WATERMARK_WORKING_SIDE_CPU if mode == "watermark" else DECOMPOSE_WORKING_SIDE["cpu"]


def decompose_working_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) of the copy Decompose fits: the image's own when its longer side is at
    most ``side``, else scaled so that it is (never below 8 px)."""
    longer = max(height, width)
    if longer <= side:
        return height, width
    scale = side / longer
    return max(8, round(height * scale)), max(8, round(width * scale))


# Its memory: torch, the fit on the working copy (per pixel of it: the nets' activations and
# Adam's states, the objective's priors; three nets for segment and transparency, two for
# dehaze and watermark), and the full-size copies that carry the split (per pixel of the
# image: the input, the enlarged layers and maps, the residual, the result layers with alpha,
# the files written). Measured with the whole CLI command (`benchmarks/memory_bench.py --ops
# decompose_…`, light nets): with the working side 384 (…-memory-decompose-working-384-cpu.json)
# a 384×288 photo, the fit alone, peaked at 1.39 / 1.39 / 1.04 / 1.02 GB for segment /
# transparency / dehaze / watermark (1.49 / 1.45 / 1.02 / 1.01 in a run before it), up to
# ~10 and ~6 KB per pixel above torch; with today's 256 (…-memory-decompose-cpu.json) a
# 4000×3000 photo peaked at 2.94 / 2.12 / 1.40 GB (watermark, its box only: 1.04), the
# prediction 3.17 / 3.17 / 2.98 GB: about 200 B per pixel above torch at most (the fit's
# memory is mostly handed back before the carry).
DECOMPOSE_FIT_BYTES_PER_PIXEL = {"segment": 10240, "transparency": 10240, "dehaze": 6144, "watermark": 6144}
DECOMPOSE_IMAGE_BYTES_PER_PIXEL = 200


def _decompose_need(params: dict[str, Any], height: int, width: int) -> int:
    device = "cuda" if str(params.get("device", "")).startswith("cuda") else "cpu"
    side = int(params.get("working_side") or 0) or decompose_working_side(str(params.get("mode")), device)
    work_h, work_w = decompose_working_shape(height, width, side)
    paper_sized = params.get("preset") in ("quality", "paper") or (device == "cuda" and params.get("preset") == "auto")
    per_pixel = DECOMPOSE_FIT_BYTES_PER_PIXEL.get(str(params.get("mode")), max(DECOMPOSE_FIT_BYTES_PER_PIXEL.values()))
    fit = per_pixel * (_PAPER_NET_FACTOR["denoise"] if paper_sized else 1.0) * work_h * work_w
    return int(TORCH_BASE_BYTES + fit + DECOMPOSE_IMAGE_BYTES_PER_PIXEL * height * width)


# Inpaint's texture fill (engine/patch_fill.py): a fixed part (Python, numpy, OpenCV, the
# inpainting net for the thin parts), the image's copies, and the seam solve's arrays over the
# hole's box (indices, guidance, conjugate-gradient vectors). Measured peaks
# (benchmarks/patch_fill_bench.py): 0.42 GB for a 500² hole in a 2.2-megapixel photo, 0.9 GB
# for a 1000² hole in a 6-megapixel one.
PATCH_BASE_BYTES = 200 << 20
PATCH_IMAGE_BYTES_PER_PIXEL = 40
PATCH_BOX_BYTES_PER_PIXEL = 600


def patch_need(image_pixels: int, box_pixels: int) -> int:
    """Expected peak bytes of the texture fill on an image of ``image_pixels`` whose hole's
    bounding box holds ``box_pixels``."""
    return PATCH_BASE_BYTES + PATCH_IMAGE_BYTES_PER_PIXEL * image_pixels + PATCH_BOX_BYTES_PER_PIXEL * box_pixels


def _uses_trained_net(op: str, params: dict[str, Any]) -> bool:
    if op == "sharpen":
        return True
    if op == "upscale":
        return params.get("method", "rdn") != "dip"
    return op in ("denoise", "inpaint", "dejpeg") and params.get("method") == "net"


def net_image_bytes(input_pixels: int, scale: int = 1, result_scale: int | None = None) -> int:
    """Fixed part + full-size copies of a trained net's run on ``input_pixels`` whose net
    enlarges ``scale``× (Upscale ×3/×8: the result is then resized to ``result_scale``×)."""
    result = scale if result_scale is None else result_scale
    copies = input_pixels * (1 + scale * scale + (result * result if result != scale else 0))
    return NET_BASE_BYTES + NET_IMAGE_BYTES_PER_PIXEL * copies


def net_activation_budget(input_pixels: int, scale: int, ceiling: int) -> int:
    """Activation bytes the ONNX runner may use: ``ceiling`` (its own cap), less when the
    memory available would not hold that next to the copies; never below the minimum."""
    free = available_bytes()
    if free is not None:
        ceiling = min(ceiling, free - net_image_bytes(input_pixels, scale))
    return max(NET_MIN_ACTIVATION_BYTES, ceiling)


def _whole_image_activation_bytes(op: str, scale: int, height: int, width: int) -> float | None:
    """What one tile covering the whole (padded) image would take: a small image needs less
    than any budget. None when the model's card cannot be read."""
    from .errors import EngineError
    from .onnx import runner, tiling  # no onnxruntime import: cards and constants only

    name = f"rdn_x{scale}" if op == "upscale" else op
    try:
        floats = float(runner.read_card(runner.find_model(name))["architecture"]["activation_floats_per_px"])
    except (EngineError, KeyError, TypeError, ValueError, OSError):
        return None
    padded = (height + 64) * (width + 64)  # the reflect padding and overlap around it
    return padded * floats * tiling.BYTES_PER_FLOAT * tiling.RUNTIME_OVERHEAD


def _net_need(op: str, params: dict[str, Any], height: int, width: int, smallest: bool) -> int:
    from .onnx.runner import cpu_activation_budget  # no onnxruntime import

    result_scale = int(params.get("scale") or 1) if op == "upscale" else 1
    scale = _output_scale(op, params)
    fixed = net_image_bytes(height * width, scale, result_scale)
    if smallest:
        return fixed + NET_MIN_ACTIVATION_BYTES
    activations = cpu_activation_budget(height * width, 3, scale)  # what the runner would take now
    whole = _whole_image_activation_bytes(op, scale, height, width)
    return fixed + int(activations if whole is None else min(activations, whole))


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
    if _uses_trained_net(op, params):
        return _net_need(op, params, height, width, smallest=False)
    if op == "inpaint" and params.get("method") == "patch":  # the dialog's area is the box
        work_h, work_w = work or (height, width)
        return patch_need(height * width, work_h * work_w)
    if op == "decompose":
        return _decompose_need(params, height, width)
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
    patch = op == "inpaint" and params.get("method") == "patch" and mask is not None and bool(np.any(mask > 0))
    if budget is None or (per_pixel is None and not _uses_trained_net(op, params) and op != "decompose"
                          and not patch):
        return
    height, width = image_shape[0], image_shape[1]
    if patch:  # the texture fill: the image's copies and the solve over the hole's box
        from .ops import hole_window

        assert mask is not None
        rows, cols = hole_window(mask > 0, 0)
        work_h, work_w = rows.stop - rows.start, cols.stop - cols.start
        need = patch_need(height * width, work_h * work_w)
        area = "the selected area"
    elif op == "decompose":  # the fit on the working copy and the full-size layers
        work_h, work_w = height, width
        need = _decompose_need(params, height, width)
        area = "the image"
    elif per_pixel is None:  # a trained net: the copies of the whole image, the smallest tiles
        work_h, work_w = height, width
        need = _net_need(op, params, height, width, smallest=True)
        area = "the enlarged image" if op == "upscale" else "the image"
    else:
        work_h, work_w = work_area(op, height, width, mask)
        area = {"inpaint": "the selected area and its surroundings",
                "upscale": "the enlarged image"}.get(op, "the image")
        image_pixels = height * width * _output_scale(op, params) ** 2
        # The smallest tile (in input px; Upscale's smallest enlarged tile is 64² too).
        smallest = _requested_tile(params) // _output_scale(op, params)
        need = _tiled_need(per_pixel, work_h, work_w, image_pixels, smallest)
    if need <= budget:
        return
    smaller = ("choose a smaller working size (or crop / scale the image down)" if op == "decompose"
               else "select a smaller area (or crop / scale the image down)")
    raise BadInput(f"{op} on {area} ({work_w}×{work_h} pixels) needs about {_gigabytes(need)} of memory, "
                   f"this machine has {_gigabytes(budget)} free: {smaller}, or close other programs, "
                   f"and try again")
