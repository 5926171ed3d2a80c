"""Fill a hole with texture copied from the image itself (OpenCV's shift-map inpainting).

The trained net and Deep Image Prior fill a large hole with what is likely on average: on a
bookshelf or a patterned cloth that is a smooth smear (L1 and PSNR reward the mean). Removing
an object from a photo wants the opposite — texture that looks like its surroundings, as
Resynthesizer's *Heal Selection* and G'MIC's patch-based inpaint give. ``patch_fill`` does
that with He & Sun's shift-map completion (ECCV 2012: the dominant offsets between similar
patches of the known area, then a graph cut choosing one offset per hole pixel), as
``cv2.xphoto.inpaint(…, INPAINT_SHIFTMAP)`` implements it: every filled pixel is a copy of
a known one, so the fill is as sharp as the photo. It may copy something that does not
belong (a second head on an animal); the user then reselects or picks the network.

Sources: the hole's bounding box grown by ``context`` on each side (default: three times the
box's longer side, at least ``MIN_CONTEXT``), like Resynthesizer's context sampling. More
context chose better on 256² photos (a 46² block in barbara's striped cloth: 12.2 dB in the
hole with 48 px of context, 18.0 with the whole photo — biharmonic 17.3, the trained net
17.8); the time grows little with it (a 100² hole: 5–8 s with 0.5 to 9 megapixels round it
on the 2-core dev CPU) and more with the hole (300²: 8.5 s, 500²: 16 s;
benchmarks/patch_fill_bench.py). Values keep their precision: the window goes to OpenCV as float32 (on the 0–255
scale its thresholds expect).

Copies meet at seams; ``blend_seams`` takes the steps out there (see "seams" below). Copying
needs whole patches round a hole pixel: ``wide_part`` tells the parts of a hole it suits from
the thin ones (scratches, text, scattered pixels) that the engine's op gives to the network.
"""
from __future__ import annotations

import numpy as np

from .errors import EngineError

# Context round the hole's box: CONTEXT_FACTOR × its longer side, at least MIN_CONTEXT px (a
# small hole still needs a choice of sources).
CONTEXT_FACTOR = 3
MIN_CONTEXT = 256


# Copying needs whole patches round a hole pixel: thin parts of a hole (scratches, text,
# scattered pixels) are the network's (inpaint method patch fills them with it first). A part
# is wide where a square of 2 × WIDE_RADIUS + 1 px fits inside the hole (a square, not a
# disc: a rectangular selection keeps its corners): strokes up to 12 px across stay thin
# (the network was trained on strokes up to 16 px).
WIDE_RADIUS = 6


def wide_part(hole: np.ndarray, radius: int = WIDE_RADIUS) -> np.ndarray:
    """The pixels of ``hole`` (H×W bool) covered by squares of side 2 × ``radius`` + 1 that
    fit inside it (a morphological opening)."""
    import cv2

    square = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    opened = cv2.morphologyEx(hole.astype(np.uint8), cv2.MORPH_OPEN, square, borderType=cv2.BORDER_REPLICATE)
    return opened.astype(bool) & hole


def context_for(hole_box_side: int) -> int:
    """Pixels of context read round a hole whose bounding box's longer side is ``hole_box_side``."""
    return max(MIN_CONTEXT, CONTEXT_FACTOR * int(hole_box_side))


def _opencv_with_xphoto():
    """OpenCV with its contrib module xphoto, or an EngineError saying how to get it (another
    OpenCV wheel in the same environment, e.g. opencv-python, can shadow the contrib one)."""
    try:
        import cv2

        cv2.xphoto.inpaint  # noqa: B018 - the attribute is what we need
    except (ImportError, AttributeError):
        raise EngineError("Inpaint's texture fill needs OpenCV with its contrib modules (cv2.xphoto): run "
                          "install.py again, or `pip install opencv-contrib-python-headless` in the engine's "
                          "environment (and uninstall any other opencv-python package there); or choose the "
                          "trained network as the method") from None
    return cv2


def patch_fill(colour: np.ndarray, hole: np.ndarray, context: int | None = None, seams: bool = True) -> np.ndarray:
    """``colour`` (H×W×C float32 in [0, 1], C = 1 or 3) with the pixels where ``hole`` (H×W
    bool) is True replaced by texture copied from the known pixels round it, the steps at the
    copied regions' seams smoothed away (``seams``; False: the bare copies); every other
    pixel is returned unchanged (bit for bit)."""
    cv2 = _opencv_with_xphoto()

    from .ops import hole_window

    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    box_side = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    window = hole_window(hole, context_for(box_side) if context is None else context)
    crop = np.ascontiguousarray(colour[window], dtype=np.float32)
    crop_hole = hole[window]
    if crop_hole.all():
        raise EngineError("nothing round the hole to copy texture from")
    # OpenCV's shift-map copies nothing sensible into a hole that holds the top-left pixel
    # (a repeating pattern: 17 dB there, 140 dB at the other three corners): such a window
    # goes in turned by 180°, and comes back turned again.
    turn = (slice(None, None, -1),) * 2 if crop_hole[0, 0] else (slice(None),) * 2
    known = np.where(crop_hole[turn], 0, 255).astype(np.uint8)  # OpenCV: non-zero = known
    # Its thresholds are tuned for 8-bit values: float32 on a 0–255 scale gives the 8-bit
    # behaviour at full precision. Colour in OpenCV's BGR order: RGB chose far worse copies,
    # the Lab its documentation suggests no better (docs/results.md).
    source = (crop[turn][:, :, 0] if crop.shape[2] == 1 else crop[turn][:, :, ::-1]) * np.float32(255.0)
    source = np.ascontiguousarray(source)
    filled = np.zeros_like(source)
    try:
        cv2.xphoto.inpaint(source, known, filled, cv2.xphoto.INPAINT_SHIFTMAP)
    except cv2.error as exc:
        first_line = (str(exc).strip().splitlines() or ["OpenCV error"])[-1]
        raise EngineError(f"patch-based fill failed: {first_line[:200]}") from None
    filled = (filled.reshape(crop.shape) if crop.shape[2] == 1 else filled[:, :, ::-1])[turn] / np.float32(255.0)
    copies = np.where(crop_hole[:, :, None], np.clip(filled, 0.0, 1.0), crop)
    if seams:
        copies = blend_seams(copies, crop_hole, *copied_from(copies, crop, crop_hole))
    result = colour.copy()
    result[window] = np.where(crop_hole[:, :, None], np.clip(copies, 0.0, 1.0), crop)
    return result


# -- seams ------------------------------------------------------------------------------------
# Shift-map copies whole regions, each from its own offset; where two regions meet (and where
# one meets the hole's edge) brightness can step and lines can break. The copies are exact, so
# each filled pixel's source can be found again by its value; the fill is then re-solved in the
# gradient domain (Pérez et al. 2003, with several sources): inside a region its own
# gradients, across a seam the mean of what each side's source has there, the known pixels
# round the hole as the boundary. A region's texture stays, the steps between regions go.

def _keys(image: np.ndarray) -> np.ndarray:
    """One uint64 per pixel from its values at 16 bits a channel (C ≤ 3: exact up to 16 bits)."""
    levels = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint64)
    key = np.zeros(image.shape[:2], np.uint64)
    for c in range(image.shape[2]):
        key = key * np.uint64(65536) + levels[:, :, c]
    return key


def _shifted(array: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """array[y + dy, x + dx] at every (y, x); ``fill`` where that falls outside."""
    out = np.full_like(array, fill)
    height, width = array.shape[:2]
    out[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = \
        array[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    return out


# Each pixel is found by its value and two neighbours' (an L of three pixels: one pair of
# pixels repeats too often in flat or striped areas), trying the four Ls in turn, so a pixel
# on a seam is found through the neighbours copied with it.
_CORNERS = ((0, 1, 1, 0), (0, -1, 1, 0), (0, 1, -1, 0), (0, -1, -1, 0))  # (dy1, dx1, dy2, dx2)


def copied_from(filled: np.ndarray, image: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the known pixel each hole pixel of ``filled`` is a copy of (−1 where
    none matches it and two of its neighbours). In flat areas several sources match; any of
    them has the same differences round it."""
    height, width = hole.shape
    src_rows = np.full((height, width), -1, np.int64)
    src_cols = np.full((height, width), -1, np.int64)
    image_keys, filled_keys = _keys(image), _keys(filled)
    known = ~hole
    for ay, ax, by, bx in _CORNERS:
        def triple(keys: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore"):
                return (keys * np.uint64(0x9E3779B97F4A7C15)
                        ^ (_shifted(keys, ay, ax, 0) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(1))
                        ^ (_shifted(keys, by, bx, 0) * np.uint64(0x94D049BB133111EB) + np.uint64(7)))

        complete = known & _shifted(known, ay, ax, False) & _shifted(known, by, bx, False)
        table = triple(image_keys)[complete]
        where = np.flatnonzero(complete.ravel())
        if not len(table):
            continue
        order = np.argsort(table, kind="stable")
        table, where = table[order], where[order]
        inside = _shifted(np.ones_like(hole), ay, ax, False) & _shifted(np.ones_like(hole), by, bx, False)
        rows, cols = np.nonzero(hole & (src_rows < 0) & inside)
        wanted = triple(filled_keys)[rows, cols]
        found = np.minimum(np.searchsorted(table, wanted), len(table) - 1)
        hit = table[found] == wanted
        source = where[found[hit]]
        src_rows[rows[hit], cols[hit]] = source // width
        src_cols[rows[hit], cols[hit]] = source % width
    return src_rows, src_cols


# The gradient-domain solve: conjugate gradients until the residual is this small against
# the right-hand side (per channel), at most this many steps per grid. 1e-3 stays within 0.02
# (5/255) of a 1e-4 solve on a 250 000-pixel hole, in half its time.
SOLVE_TOLERANCE = 1e-3
SOLVE_MAX_STEPS = 3000


def _guidance(filled: np.ndarray, hole: np.ndarray, src_rows: np.ndarray, src_cols: np.ndarray,
              box: tuple[slice, slice], axis: int) -> np.ndarray:
    """Target differences X[p] − X[p + e] along ``axis`` (e = one pixel down or right) for the
    pixels p of ``box`` with a neighbour there in it: the mean over the pair's hole pixels
    with a known source of what that source has between the same two positions; where
    neither has one, the fill's own difference."""
    height, width, channels = filled.shape
    step = (1, 0) if axis == 0 else (0, 1)
    ys, xs = np.mgrid[box[0].start:box[0].stop - step[0], box[1].start:box[1].stop - step[1]]
    qs, qx = ys + step[0], xs + step[1]
    total = np.zeros(ys.shape + (channels,), np.float64)
    count = np.zeros(ys.shape, np.int64)
    for ry, rx in ((ys, xs), (qs, qx)):  # the pair seen from p's source, then from q's
        sr, sc = src_rows[ry, rx], src_cols[ry, rx]
        dy, dx = sr - ry, sc - rx
        py, px, qy, qxx = ys + dy, xs + dx, qs + dy, qx + dx
        usable = (hole[ry, rx] & (sr >= 0) & (py >= 0) & (py < height) & (px >= 0) & (px < width)
                  & (qy >= 0) & (qy < height) & (qxx >= 0) & (qxx < width))
        py, px, qy, qxx = (np.where(usable, v, 0) for v in (py, px, qy, qxx))
        usable &= ~hole[py, px] & ~hole[qy, qxx]  # both ends real pixels of the source
        diff = filled[py, px].astype(np.float64) - filled[qy, qxx]
        total += np.where(usable[..., None], diff, 0.0)
        count += usable
    own = filled[ys, xs].astype(np.float64) - filled[qs, qx]
    return np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], own)


def _laplacian(x: np.ndarray) -> np.ndarray:
    """Σ over each pixel's 2–4 neighbours q of (x[p] − x[q])."""
    out = np.zeros_like(x)
    dv = x[:-1] - x[1:]
    dh = x[:, :-1] - x[:, 1:]
    out[:-1] += dv
    out[1:] -= dv
    out[:, :-1] += dh
    out[:, 1:] -= dh
    return out


def blend_seams(filled: np.ndarray, hole: np.ndarray, src_rows: np.ndarray, src_cols: np.ndarray) -> np.ndarray:
    """``filled`` (H×W×C; the hole's pixels copies, the rest the image) re-solved inside
    ``hole`` so that its differences between neighbours match the sources' (``_guidance``)
    in the least-squares sense, the pixels round the hole fixed."""
    # Only the hole's box and a ring of known pixels round it take part in the solve.
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    height, width = hole.shape
    box = (slice(max(0, int(rows[0]) - 1), min(height, int(rows[-1]) + 2)),
           slice(max(0, int(cols[0]) - 1), min(width, int(cols[-1]) + 2)))
    g_v = _guidance(filled, hole, src_rows, src_cols, box, axis=0)
    g_h = _guidance(filled, hole, src_rows, src_cols, box, axis=1)
    divergence = np.zeros(filled[box].shape, np.float64)
    divergence[:-1] += g_v
    divergence[1:] -= g_v
    divergence[:, :-1] += g_h
    divergence[:, 1:] -= g_h
    result = filled.copy()
    result[box] = _solve(filled[box], hole[box], divergence)
    return result


def _solve(filled: np.ndarray, hole: np.ndarray, divergence: np.ndarray) -> np.ndarray:
    """Laplacian(x) = divergence inside ``hole``, x = filled outside: x = filled + the
    correction that ``_correction`` solves for."""
    start = filled.astype(np.float64)
    rhs = np.where(hole[..., None], divergence - _laplacian(start), 0.0).astype(np.float32)
    return np.where(hole[..., None], start + _correction(hole, rhs), filled).astype(np.float32)


# Coarser grids stop below this many hole pixels.
COARSEST_HOLE = 256


def _correction(hole: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """e with Laplacian(e) = rhs inside ``hole``, e = 0 outside, by conjugate gradients
    started from the same problem solved on a grid half as fine (cascadic multigrid: the
    correction is smooth, so the coarse solution is most of it and the fine grid only adds
    detail — a few dozen steps instead of hundreds on a large hole)."""
    start = np.zeros_like(rhs)
    height, width = hole.shape
    if hole.sum() > COARSEST_HOLE and min(height, width) >= 8:
        even = np.zeros(((height + 1) // 2 * 2, (width + 1) // 2 * 2), bool)
        even[:height, :width] = hole
        coarse_hole = even[0::2, 0::2] & even[1::2, 0::2] & even[0::2, 1::2] & even[1::2, 1::2]
        if coarse_hole.any():
            padded = np.zeros(even.shape + rhs.shape[2:], rhs.dtype)
            padded[:height, :width] = rhs
            # A cell twice as wide sees 4× the Laplacian: the sum of its four fine values.
            coarse_rhs = padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]
            coarse = _correction(coarse_hole, np.where(coarse_hole[..., None], coarse_rhs, np.float32(0.0)))
            start = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:height, :width]
            start = np.where(hole[..., None], start, np.float32(0.0))
    return _conjugate_gradients(hole, rhs, start)


def _conjugate_gradients(hole: np.ndarray, rhs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Laplacian(x) = rhs inside ``hole`` with x = 0 outside, from ``x``, per channel."""
    inside = hole[..., None]
    residual = np.where(inside, rhs - _laplacian(x), np.float32(0.0))
    # (an absolute floor: a flat hole has no right-hand side to be relative to)
    norm_b = np.maximum(np.sqrt(np.square(rhs).sum(axis=(0, 1))), 1e-6 * np.sqrt(hole.sum()))
    direction = residual.copy()
    rr = np.square(residual).sum(axis=(0, 1))
    for _ in range(SOLVE_MAX_STEPS):
        if np.all(np.sqrt(rr) <= SOLVE_TOLERANCE * norm_b):
            break
        applied = np.where(inside, _laplacian(direction), np.float32(0.0))
        alpha = (rr / np.maximum((direction * applied).sum(axis=(0, 1)), 1e-30)).astype(np.float32)
        x = x + alpha * direction
        residual -= alpha * applied
        rr_new = np.square(residual).sum(axis=(0, 1))
        direction = residual + (rr_new / np.maximum(rr, 1e-30)).astype(np.float32) * direction
        rr = rr_new
    return x
