"""A fast smooth fill of a hole (numpy only): the inpainting net's starting point.

``smooth_fill(image, hole)`` fills the hole with a multigrid membrane (harmonic) fill. Push:
the known pixels are averaged down a pyramid of 2× reductions, each level weighted by how much
of it is known, until a level has no gaps (push-pull, Gortler et al. 1996). Pull: going back
up, every pixel that is (partly) unknown takes the upsampled coarser level in proportion to
what it lacks, then ``SMOOTHING_STEPS`` Jacobi steps of Laplace's equation relax the unknown
pixels towards the mean of their four neighbours at that level. Known pixels come back
exactly; a hole gets a smooth surface that meets its edge without a seam. It costs a few
dozen array passes (≈ 0.3 s per megapixel), whatever the hole's size, where a biharmonic fill
solves a sparse system over every hole pixel.

Measured at 256² (PSNR in the hole; skimage's biharmonic in brackets): half of kate's pixels
missing 27.96 dB with push-pull alone, 29.52 with the Jacobi steps (31.41); the paper's text
mask on kate 26.18 → 27.60 (29.13); a 50² block in BSD 108073's tiger 14.13 → 14.55 (13.51).
(A biharmonic Jacobi step, tried too, diverges: its stencil is not diagonally dominant.)

The trained inpainting net (``onnx_export``, task ``inpaint``) learns the detail to add to
this fill, so the trainer and the engine must fill in the same way: both call this function.
"""
from __future__ import annotations

import numpy as np


def _tent(array: np.ndarray) -> np.ndarray:
    """[1, 2, 1]/4 blur along both axes, edges repeated (smooths the nearest-neighbour blocks)."""
    padded = np.pad(array, ((1, 1), (0, 0), (0, 0)), mode="edge")
    array = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    padded = np.pad(array, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]


SMOOTHING_STEPS = 8


def _relax(filled: np.ndarray, free: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` Jacobi steps of Laplace's equation: each pixel moves towards the mean of its
    four neighbours by ``free`` (H×W×1: 1 for unknown pixels, 0 for known ones)."""
    for _ in range(steps):
        padded = np.pad(filled, ((1, 1), (1, 1), (0, 0)), mode="edge")
        mean = 0.25 * (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
        filled = filled + free * (mean - filled)
    return filled


def _reduce(array: np.ndarray) -> np.ndarray:
    """Sum of each 2×2 block (an odd last row/column is a block of its own)."""
    h, w = array.shape[:2]
    if h % 2 or w % 2:
        array = np.pad(array, ((0, h % 2), (0, w % 2), (0, 0)))
    return array[0::2, 0::2] + array[1::2, 0::2] + array[0::2, 1::2] + array[1::2, 1::2]


def smooth_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """H×W×C float32 image with the pixels where ``hole`` (H×W bool) is true filled smoothly
    from the rest; the others are returned unchanged. Raises ValueError if every pixel is in
    the hole (there is nothing to fill from)."""
    if hole.shape != image.shape[:2]:
        raise ValueError(f"hole is {hole.shape}, image {image.shape[:2]}")
    known = (~hole).astype(np.float32)[:, :, None]
    if not known.any():
        raise ValueError("the hole covers the whole image")
    image = image.astype(np.float32, copy=False)
    # Push: premultiplied colour and known share per level, until no level-pixel is empty.
    levels = [(image * known, known)]
    while levels[-1][1].min() == 0.0 and max(levels[-1][1].shape[:2]) > 1:
        colour, weight = levels[-1]
        levels.append((_reduce(colour), _reduce(weight)))
    # Pull: each level's mean colour where it knows enough, the coarser level's elsewhere.
    colour, weight = levels[-1]
    filled = colour / np.maximum(weight, 1e-12)
    for colour, weight in reversed(levels[:-1]):
        h, w = colour.shape[:2]
        up = _tent(np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[:h, :w])
        # A level-pixel covering 4^k known pixels has weight 4^k; "known enough" = 1 full pixel.
        share = np.minimum(weight, 1.0)
        filled = share * (colour / np.maximum(weight, 1e-12)) + (1.0 - share) * up
        filled = _relax(filled, 1.0 - share, SMOOTHING_STEPS)
    result = np.where(hole[:, :, None], filled, image)
    return result.astype(np.float32)
