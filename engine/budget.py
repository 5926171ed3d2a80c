"""Memory budget: refuse a job whose working memory would not fit, before it starts.

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
_BASE_BYTES = 400 << 20
_BYTES_PER_PIXEL = {"denoise": 3072, "inpaint": 3072, "dejpeg": 3072}  # dejpeg: denoise's nets and loop
# Mirrors engine/dip/tasks.py's inpaint window: the hole's box plus a margin on each side
# (the optimisation only sees that window, so that is what costs memory).
_INPAINT_MIN_MARGIN = 32
_INPAINT_MARGIN_FRACTION = 0.5


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


def working_bytes(op: str, params: dict[str, Any], height: int, width: int) -> int | None:
    """Expected peak memory of ``op`` on a height×width work area, or None if unknown."""
    per_pixel = _BYTES_PER_PIXEL.get(op)
    if per_pixel is None:
        return None
    return _BASE_BYTES + per_pixel * height * width


def _gigabytes(size: int) -> str:
    return f"{size / (1 << 30):.1f} GB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MB"


def check(op: str, params: dict[str, Any], image_shape: tuple[int, ...], mask: np.ndarray | None) -> None:
    """Raise BadInput naming the need when ``op`` would not fit in the available memory."""
    height, width = work_area(op, image_shape[0], image_shape[1], mask)
    need = working_bytes(op, params, height, width)
    budget = available_bytes()
    if need is None or budget is None or need <= budget:
        return
    area = "the selected area and its surroundings" if op == "inpaint" else "the image"
    raise BadInput(f"{op} on {area} ({width}×{height} pixels) needs about {_gigabytes(need)} of memory, "
                   f"this machine has {_gigabytes(budget)} free: select a smaller area (or crop / "
                   f"scale the image down), or close other programs, and try again")
