"""Keep a restored JPEG consistent with what the JPEG file says about its pixels.

A JPEG stores each 8×8 block's DCT coefficients as multiples of its quantisation table's
steps, so the photo before saving had each coefficient within half a step of the stored
one. Knowing the tables (the file's, or GIMP's ``jpeg-settings`` parasite), each coefficient
of a restoration is replaced by the mean of a Gaussian around it (σ = RESTORATION_SPREAD)
cut to that interval. Where the steps are wide (low quality) this leaves the restoration
nearly as it is; where they are narrow (high quality) it keeps the result at the JPEG's
coefficients, whose fine detail the network would otherwise smooth.

The tables travel as a short text (``jpeg_tables``, docs/protocol.md):
``sampling=2x2,1x1,1x1 luma=<64 steps> chroma=<64 steps>`` (steps in natural row order,
comma-separated) or ``sampling=… quality=Q`` for the standard IJG tables at quality Q, with
an optional ``origin=X,Y`` (where the region sent starts in the JPEG's pixel grid). The block
grid is checked on the pixels (and found, if the image was cropped since); pixels that no
longer fit the tables (edited, resized) are left as restored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import BadInput

BLOCK = 8
# σ (in 0–255 levels) of the Gaussian put around each restored coefficient: best or within
# 0.04 dB of the best of 0.5–8 at q 10–90 (nets_bench --only dejpeg_spread; docs/results.md).
RESTORATION_SPREAD = 3.0
# Steps this small or larger are used to find/check the block grid: on the true grid
# coefficients sit near multiples of them (off by rounding only), elsewhere anywhere.
GRID_MIN_STEP = 3
GRID_MAX_MISFIT = 0.15  # mean distance to the nearest multiple, in steps (0.25 = random)
# Fewer measured coefficients cannot tell the grid (a mean of 50 random misfits stays above
# 0.18 even at the least of 63 wrong offsets); too few to check a given origin: it is trusted.
GRID_MIN_COEFFICIENTS = 50
GRID_CHECKABLE = 20
GRID_SAMPLE_SIDE = 512  # the grid is found on a centred crop this size (+ 2 MCUs) at most
# Chroma is checked only among the 2–4 offsets the luma grid leaves, on samples recovered from
# the upsampled planes (less exact: up to 0.2 measured on the true grid, 0.25+ elsewhere).
CHROMA_MIN_COEFFICIENTS = 20
CHROMA_MAX_MISFIT = 0.25
# Each interval is widened this much (0–255 levels) for the rounding in the decoded pixels:
# none for luma (the Gaussian's tail already allows it; 0.25 / 0.5 cost 0.15 / 0.3 dB at q 95),
# half a level for chroma, whose stored samples are recovered from upsampled, rounded pixels.
LUMA_MARGIN = 0.0
CHROMA_MARGIN = 0.5

# The JPEG standard's example tables (ITU T.81 Annex K), natural order, which IJG's libjpeg
# scales by quality: what "quality 90" means in GIMP, Pillow, ImageMagick and most cameras'
# software.
IJG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
            14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
            18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
            49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
IJG_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
              24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def ijg_table(base: tuple[int, ...], quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_set_quality`` scaling of a base table (baseline: steps ≤ 255)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    steps = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return np.array(steps, np.float32).reshape(BLOCK, BLOCK)


@dataclass(frozen=True)
class JpegTables:
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor per component
    luma: np.ndarray  # 8×8 steps, natural order
    chroma: np.ndarray | None  # the table of both chroma components (None: greyscale)
    origin: tuple[int, int] | None = None  # (x, y) of the region in the JPEG's grid, if known

    def describe(self) -> str:
        """About which IJG quality the luma table is (for messages)."""
        best = min(range(1, 101), key=lambda q: float(np.abs(ijg_table(IJG_LUMA, q) - self.luma).sum()))
        return f"quality ≈ {best}"


_NUMBERS = re.compile(r"^\d+(,\d+)*$")


def parse_tables(text: str) -> JpegTables | None:
    """The ``jpeg_tables`` text → tables; "" (or "none"/"file", the CLI's words) → None."""
    text = text.strip()
    if text in ("", "none", "file"):
        return None
    fields: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or key not in ("sampling", "luma", "chroma", "quality", "origin") or key in fields:
            raise BadInput(f"jpeg_tables: cannot read {item!r} (expected sampling=, luma=, chroma=, "
                           f"quality= or origin=, each once)")
        fields[key] = value

    def numbers(key: str, count: int | None, low: int, high: int) -> list[int]:
        value = fields[key]
        if not _NUMBERS.match(value):
            raise BadInput(f"jpeg_tables: {key} must be comma-separated whole numbers")
        values = [int(v) for v in value.split(",")]
        if (count is not None and len(values) != count) or not all(low <= v <= high for v in values):
            raise BadInput(f"jpeg_tables: {key} needs {count or 'its'} values in {low}–{high}")
        return values

    if "sampling" not in fields:
        raise BadInput("jpeg_tables: sampling= is missing")
    sampling = []
    for factor in fields["sampling"].split(","):
        h, _, v = factor.partition("x")
        if not (h.isdigit() and v.isdigit() and 1 <= int(h) <= 4 and 1 <= int(v) <= 4):
            raise BadInput(f"jpeg_tables: sampling factor {factor!r} is not HxV with 1–4")
        sampling.append((int(h), int(v)))
    if len(sampling) not in (1, 3):
        raise BadInput("jpeg_tables: only greyscale (1 component) and YCbCr (3) JPEGs are supported")
    if "quality" in fields:
        quality = numbers("quality", 1, 1, 100)[0]
        luma, chroma = ijg_table(IJG_LUMA, quality), ijg_table(IJG_CHROMA, quality)
    else:
        if "luma" not in fields:
            raise BadInput("jpeg_tables: give luma= (and chroma=) or quality=")
        luma = np.array(numbers("luma", 64, 1, 65535), np.float32).reshape(BLOCK, BLOCK)
        chroma = None
        if len(sampling) == 3:
            if "chroma" not in fields:
                raise BadInput("jpeg_tables: a colour JPEG needs chroma=")
            chroma = np.array(numbers("chroma", 64, 1, 65535), np.float32).reshape(BLOCK, BLOCK)
    origin = None
    if "origin" in fields:
        x, y = numbers("origin", 2, 0, 1 << 30)
        origin = (x, y)
    return JpegTables(tuple(sampling), luma, chroma if len(sampling) == 3 else None, origin)


def format_tables(sampling: list[tuple[int, int]], luma: list[int], chroma: list[int] | None,
                  origin: tuple[int, int] | None = None) -> str:
    """The ``jpeg_tables`` text for these factors and (natural-order) tables."""
    parts = ["sampling=" + ",".join(f"{h}x{v}" for h, v in sampling), "luma=" + ",".join(map(str, luma))]
    if chroma is not None:
        parts.append("chroma=" + ",".join(map(str, chroma)))
    if origin is not None:
        parts.append(f"origin={origin[0]},{origin[1]}")
    return " ".join(parts)


def tables_from_pillow(img) -> str:
    """The ``jpeg_tables`` text of a JPEG opened with Pillow, for all its pixels turned
    upright by its EXIF orientation (as the CLI reads them); "" when it is not a plain
    greyscale/YCbCr JPEG."""
    if getattr(img, "format", None) != "JPEG" or img.mode not in ("L", "RGB"):
        return ""
    tables = getattr(img, "quantization", None) or {}
    layers = getattr(img, "layer", None) or []
    if len(layers) != (1 if img.mode == "L" else 3):
        return ""
    indexes = [layer[3] for layer in layers]
    if img.mode == "RGB" and (indexes[1] != indexes[2] or indexes[0] == indexes[1]):
        return ""
    try:
        luma = [int(v) for v in tables[indexes[0]]]
        chroma = [int(v) for v in tables[indexes[1]]] if img.mode == "RGB" else None
    except (KeyError, TypeError):
        return ""
    sampling = [(int(layer[1]), int(layer[2])) for layer in layers]
    orientation = img.getexif().get(0x0112, 1)
    # Where the upright pixels' first row/column lies in the file's grid: an axis the
    # orientation reverses starts at the far edge, so at −length (mod any MCU size).
    source_of_x, source_of_y = _ORIENTATION_AXES.get(orientation, ("x", "y"))
    lengths = {"x": img.size[0], "y": img.size[1]}
    origin = tuple((-lengths[axis[0]]) % 64 if axis.endswith("-") else 0 for axis in (source_of_x, source_of_y))
    if orientation in (5, 6, 7, 8):  # turned by 90°: rows become columns
        luma = _transposed(luma)
        chroma = None if chroma is None else _transposed(chroma)
        sampling = [(v, h) for h, v in sampling]
    return format_tables(sampling, luma, chroma, origin)


# EXIF orientation → which stored axis the upright x and y run along ("-": reversed), as
# Pillow's exif_transpose turns the pixels.
_ORIENTATION_AXES = {1: ("x", "y"), 2: ("x-", "y"), 3: ("x-", "y-"), 4: ("x", "y-"),
                     5: ("y", "x"), 6: ("y-", "x"), 7: ("y-", "x-"), 8: ("y", "x-")}


def _transposed(table: list[int]) -> list[int]:
    return list(np.array(table).reshape(BLOCK, BLOCK).T.ravel())


# -- the maths ------------------------------------------------------------------------------

def _dct_matrix() -> np.ndarray:
    k = np.arange(BLOCK)[:, None]
    x = np.arange(BLOCK)[None, :]
    m = np.cos((2 * x + 1) * k * np.pi / (2 * BLOCK)) * np.sqrt(2.0 / BLOCK)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)  # orthonormal: JPEG's FDCT is this, per axis


_DCT = _dct_matrix()


def _blocks_dct(plane: np.ndarray) -> np.ndarray:
    """H×W (multiples of 8) → (H/8, W/8, 8, 8) coefficients, level-shifted as JPEG does."""
    h, w = plane.shape
    blocks = (plane - 128.0).reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(0, 2, 1, 3)
    return _DCT @ blocks @ _DCT.T


def _blocks_idct(coefficients: np.ndarray) -> np.ndarray:
    n, m = coefficients.shape[:2]
    return (_DCT.T @ coefficients @ _DCT).transpose(0, 2, 1, 3).reshape(n * BLOCK, m * BLOCK) + 128.0


def _full_blocks(shape: tuple[int, int], oy: int, ox: int) -> tuple[slice, slice] | None:
    h, w = shape
    rows, cols = (h - oy) // BLOCK * BLOCK, (w - ox) // BLOCK * BLOCK
    if rows <= 0 or cols <= 0:
        return None
    return slice(oy, oy + rows), slice(ox, ox + cols)


def grid_misfit(plane: np.ndarray, table: np.ndarray, oy: int, ox: int) -> tuple[float, int]:
    """Mean distance (in steps) of the plane's block coefficients to the nearest multiple of
    the table's steps, with its 8×8 grid starting at (oy, ox); and how many coefficients
    were measured (steps ≥ GRID_MIN_STEP, not quantised to zero)."""
    region = _full_blocks(plane.shape, oy, ox)
    if region is None:
        return 0.5, 0
    coefficients = _blocks_dct(plane[region])
    steps = np.broadcast_to(table, coefficients.shape)
    used = (steps >= GRID_MIN_STEP) & (np.abs(coefficients) > steps / 2)
    ratio = coefficients[used] / steps[used]
    if ratio.size == 0:
        return 0.5, 0
    return float(np.abs(ratio - np.round(ratio)).mean()), int(ratio.size)


def _sample(plane: np.ndarray, multiple: int) -> np.ndarray:
    """A centred crop of at most GRID_SAMPLE_SIDE (+ 2·multiple) px, cut at a multiple of
    ``multiple`` so that grid offsets found on it hold for the plane."""
    h, w = plane.shape
    side = GRID_SAMPLE_SIDE + 2 * multiple
    y0 = max((h - side) // 2 // multiple * multiple, 0)
    x0 = max((w - side) // 2 // multiple * multiple, 0)
    return plane[y0:y0 + side, x0:x0 + side]


def find_grid(luma: np.ndarray, table: np.ndarray, origin: tuple[int, int] | None) -> tuple[int, int] | None:
    """Where the JPEG's 8×8 grid starts in this luma plane (0–255), (oy, ox) in 0–7, or None
    when no offset fits the table (the pixels were edited or resized since, or were never
    this JPEG). ``origin``: the region's (x, y) in the JPEG's grid, tried first."""
    sample = _sample(luma, 16)
    if origin is not None:
        oy, ox = (-origin[1]) % BLOCK, (-origin[0]) % BLOCK
        misfit, count = grid_misfit(sample, table, oy, ox)
        if count < GRID_CHECKABLE or misfit <= GRID_MAX_MISFIT:
            return oy, ox  # (too flat, or steps too fine, to check: the caller's word stands)
    scores = sorted((grid_misfit(sample, table, oy, ox), (oy, ox)) for oy in range(BLOCK) for ox in range(BLOCK))
    (misfit, count), best = scores[0]
    runner_up = scores[1][0][0]
    if count >= GRID_MIN_COEFFICIENTS and misfit <= GRID_MAX_MISFIT and misfit <= 0.6 * runner_up:
        return best
    return None


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Φ(x), vectorised: numpy has no erf (and scipy is not an engine dependency), so
    Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7 — far below what matters here)."""
    z = np.abs(x) / np.float32(np.sqrt(2.0))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def _truncated_gaussian_mean(centre: np.ndarray, low: np.ndarray, high: np.ndarray, sigma: float) -> np.ndarray:
    """Mean of N(centre, σ²) cut to [low, high] (elementwise), kept inside the interval."""
    a = (low - centre) / sigma
    b = (high - centre) / sigma
    # (From the nearer tail: 1 − 1 loses the digits when the interval is far above the centre.)
    mass = np.where(a > 0, _normal_cdf(-a) - _normal_cdf(-b), _normal_cdf(b) - _normal_cdf(a))
    shift = sigma * (np.exp(-0.5 * a * a) - np.exp(-0.5 * b * b)) / np.float32(np.sqrt(2.0 * np.pi))
    # Far outside the interval the mass underflows: the nearer end is the mean's limit.
    inside = mass > 1e-6
    mean = np.where(inside, centre + shift / np.where(inside, mass, 1.0), np.where(a > 0, low, high))
    return np.clip(mean, low, high)


def _constrain_plane(restored: np.ndarray, decoded: np.ndarray, table: np.ndarray, oy: int, ox: int,
                     margin: float) -> np.ndarray:
    """The change (restored → consistent) of one plane (0–255) on its full blocks from
    (oy, ox); zero elsewhere. ``margin`` widens each interval for rounding in the decoded
    pixels."""
    change = np.zeros_like(restored)
    region = _full_blocks(restored.shape, oy, ox)
    if region is None:
        return change
    rows = region[0]
    band = 32 * BLOCK  # block rows per pass: temporaries stay a few MB per 1000 px of width
    for top in range(rows.start, rows.stop, band):
        part = (slice(top, min(top + band, rows.stop)), region[1])
        ours = _blocks_dct(restored[part])
        stored = np.round(_blocks_dct(decoded[part]) / table)
        low = (stored - 0.5) * table - margin
        high = (stored + 0.5) * table + margin
        kept = _truncated_gaussian_mean(ours, low, high, RESTORATION_SPREAD)
        change[part] = _blocks_idct(kept - ours) - 128.0
    return change


# JFIF's YCbCr (full range, BT.601), what JPEG files use: rows give Y, Cb, Cr from R, G, B.
_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                   np.float32)
_TO_RGB = np.linalg.inv(_TO_YCC).astype(np.float32)


def _channel(rgb: np.ndarray, row: int) -> np.ndarray:
    """Y (row 0), Cb or Cr of the first three channels, in 0–255 levels (contiguous H×W)."""
    plane = rgb[:, :, :3] @ (_TO_YCC[row] * np.float32(255.0))
    if row:
        plane += np.float32(128.0)
    return plane


def _box_mean(plane: np.ndarray, fy: int, fx: int, oy: int, ox: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """fy×fx box means of the plane from (oy, ox) over whole boxes; and the area they cover."""
    h, w = plane.shape
    rows, cols = (h - oy) // fy, (w - ox) // fx
    area = (slice(oy, oy + rows * fy), slice(ox, ox + cols * fx))
    total = np.zeros((rows, cols), np.float32)
    for dy in range(fy):  # strided sums: much faster than a reshaped mean over two axes
        for dx in range(fx):
            total += plane[oy + dy:oy + rows * fy:fy, ox + dx:ox + cols * fx:fx]
    return total / np.float32(fy * fx), area


def _undo_fancy_upsampling(means: np.ndarray, axis: int) -> np.ndarray:
    """libjpeg's default (“fancy”) ×2 chroma upsampling mixes each sample with its neighbour
    3:1; a pair's mean is then the samples filtered by [1/8, 3/4, 1/8] (edges repeated).
    Solving that tridiagonal system along ``axis`` gives back the stored samples."""
    values = np.moveaxis(means, axis, 0)  # (diagonally dominant: float32 is plenty)
    n = values.shape[0]
    if n < 2:
        return means
    diagonal = np.full(n, 0.75)
    diagonal[0] = diagonal[-1] = 0.875
    off = 0.125
    # Thomas algorithm, vectorised over the other axis.
    c_prime = np.empty(n, np.float32)
    d_prime = np.empty(values.shape, np.float32)
    c_prime[0] = off / diagonal[0]
    d_prime[0] = values[0] / diagonal[0]
    for i in range(1, n):
        denominator = diagonal[i] - off * c_prime[i - 1]
        c_prime[i] = off / denominator
        d_prime[i] = (values[i] - off * d_prime[i - 1]) / denominator
    for i in range(n - 2, -1, -1):
        d_prime[i] -= c_prime[i] * d_prime[i + 1]
    return np.moveaxis(d_prime, 0, axis)


def _chroma_change(restored: np.ndarray, decoded: np.ndarray, table: np.ndarray, factors: tuple[int, int],
                   grid: tuple[int, int], margin: float) -> np.ndarray:
    """The change of a chroma plane stored at 1/fx × 1/fy resolution with its blocks' origin
    at ``grid`` (full-resolution pixels, mod 8·f): the subsampled means are made consistent
    and each full-resolution pixel moves by its box's change (the least change that does it)."""
    fy, fx = factors
    oy, ox = grid[0] % fy, grid[1] % fx
    ours, area = _box_mean(restored, fy, fx, oy, ox)
    stored, _ = _box_mean(decoded, fy, fx, oy, ox)
    for axis, factor in ((0, fy), (1, fx)):
        if factor == 2:
            stored = _undo_fancy_upsampling(stored, axis)
    change_small = _constrain_plane(ours, stored, table, grid[0] // fy, grid[1] // fx, margin)
    change = np.zeros_like(restored)
    for dy in range(fy):  # each pixel of a box moves by the box's change
        for dx in range(fx):
            change[area[0].start + dy:area[0].stop:fy, area[1].start + dx:area[1].stop:fx] = change_small
    return change


def _chroma_grid(decoded_cb: np.ndarray, table: np.ndarray, factors: tuple[int, int],
                 luma_grid: tuple[int, int], origin: tuple[int, int] | None) -> tuple[int, int] | None:
    """The chroma blocks' origin (mod 8·f per axis) given the luma grid's (mod 8)."""
    fy, fx = factors
    candidates = [(luma_grid[0] + BLOCK * i, luma_grid[1] + BLOCK * j) for i in range(fy) for j in range(fx)]
    if origin is not None:
        preferred = ((-origin[1]) % (BLOCK * fy), (-origin[0]) % (BLOCK * fx))
        candidates.sort(key=lambda c: c != preferred)
    sample = _sample(decoded_cb, 16 * max(fy, fx))
    scored = []
    for oy, ox in candidates:
        means, _ = _box_mean(sample, fy, fx, oy % fy, ox % fx)
        for axis, factor in ((0, fy), (1, fx)):
            if factor == 2:
                means = _undo_fancy_upsampling(means, axis)
        scored.append((grid_misfit(means, table, oy // fy, ox // fx), (oy, ox)))
    if len(scored) == 1:
        return scored[0][1]
    ranked = sorted(scored, key=lambda s: s[0][0])
    (misfit, count), best = ranked[0]
    if count < CHROMA_MIN_COEFFICIENTS:  # flat colour: nothing to tell the offsets apart, or to move
        return scored[0][1]
    if misfit <= CHROMA_MAX_MISFIT and misfit <= 0.7 * ranked[1][0][0]:
        return best
    return None


def make_consistent(restored: np.ndarray, decoded: np.ndarray, tables: JpegTables) -> tuple[np.ndarray, str]:
    """``restored`` (float H×W×C in [0, 1], C 1–4, alpha last of 2/4) with each JPEG block's
    coefficients moved into what the JPEG ``decoded`` (same shape, the pixels as loaded) and
    its tables allow; and a line saying what was done."""
    colours = decoded.shape[2] - 1 if decoded.shape[2] in (2, 4) else decoded.shape[2]
    if (colours == 1) != (tables.chroma is None):
        return restored, "not made consistent with the JPEG's tables: they are for a " + \
            ("colour" if tables.chroma is not None else "greyscale") + " JPEG, the image is not"
    if colours == 1:
        decoded_luma = decoded[:, :, 0] * 255.0
        restored_luma = restored[:, :, 0] * 255.0
    else:
        decoded_luma = _channel(decoded, 0)
        restored_luma = _channel(restored, 0)
    grid = find_grid(decoded_luma, tables.luma, tables.origin)
    if grid is None:
        return restored, ("not made consistent with the JPEG's tables: the pixels no longer fit them "
                          "(edited or resized since it was opened?)")
    delta_luma = _constrain_plane(restored_luma, decoded_luma, tables.luma, grid[0], grid[1], LUMA_MARGIN)
    out = restored.copy()
    if colours == 1:
        out[:, :, 0] += delta_luma / 255.0
        np.clip(out[:, :, :1], 0.0, 1.0, out=out[:, :, :1])
        return out, f"kept consistent with the JPEG's tables ({tables.describe()})"
    deltas = [delta_luma]
    chroma_done = True
    vmax = max(v for _, v in tables.sampling)
    hmax = max(h for h, _ in tables.sampling)
    for row, (h, v) in zip((1, 2), tables.sampling[1:]):
        factors = (vmax // v, hmax // h)
        decoded_plane = _channel(decoded, row)
        chroma_grid = None
        if vmax % v == 0 and hmax % h == 0 and all(f in (1, 2) for f in factors):
            chroma_grid = _chroma_grid(decoded_plane, tables.chroma, factors, grid, tables.origin)
        if chroma_grid is None:
            deltas.append(np.zeros_like(delta_luma))
            chroma_done = False
            continue
        deltas.append(_chroma_change(_channel(restored, row), decoded_plane, tables.chroma, factors,
                                     chroma_grid, CHROMA_MARGIN))
    for c in range(3):
        out[:, :, c] += (_TO_RGB[c, 0] * deltas[0] + _TO_RGB[c, 1] * deltas[1] + _TO_RGB[c, 2] * deltas[2]) / 255.0
    np.clip(out[:, :, :3], 0.0, 1.0, out=out[:, :, :3])
    note = f"kept consistent with the JPEG's tables ({tables.describe()})"
    return out, note + ("" if chroma_done else "; its colour planes were left as restored")
