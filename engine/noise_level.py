"""How strong is the noise in an image? (numpy; the denoise net's measure also runs a net
through ONNX Runtime, never torch.)

DIP denoising stops by it (the discrepancy test of `loop.StoppingRule`), so it must be right
to a few per cent on natural photos, weak noise included. The trained denoise net is told
another measure (`probe_noise_level`, below): white noise is not all there is.

`estimate_noise_sigma` follows Chen, Zhu & Heng, "An Efficient Statistical Method for Image
Noise Level Estimation" (ICCV 2015): the covariance of the image's 5×5 patches (all channels
together) has a few large eigenvalues — the image's structure — and many small ones that
white noise of variance σ² puts near σ². Dropping the largest eigenvalues one by one until
the rest have their mean at their median leaves those. Measured on 40 Berkeley photos
(centre crops, Gaussian noise, ratio to the noise actually added after clipping; p10–p90):
σ=25/255: 0.96–1.01 at 64², 0.97–1.01 at 128², 0.99–1.01 at 256²; σ=5/255 at 256²:
1.01–1.02. The finest diagonal Haar band's median deviation (Donoho & Johnstone, what we used
before) read 1.00–1.12 at σ=25 / 64² and 1.11–2.09 at σ=5 / 256²: image detail reaches it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from .onnx.runner import OnnxModel

PATCH_SIDE = 5
# At most this many patches enter the covariance (a regular grid of them on large images):
# 65536 × 75 float64 is 40 MB, and the estimate no longer moves with more.
MAX_PATCHES = 65536
# Below this many patches per covariance dimension the smallest sample eigenvalues fall
# well under σ² (their spread grows as the ratio shrinks); tiny images use the Haar estimate.
MIN_PATCHES_PER_DIMENSION = 8


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white noise in ``image`` (H×W×C float, [0, 1]; C = 1 or 3), in
    the image's units. A grey image stored as three equal channels counts as one channel."""
    x = np.asarray(image)  # no full-size copy: only the chosen patches become float64
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] > 1 and all(np.array_equal(x[:, :, 0], x[:, :, c]) for c in range(1, x.shape[2])):
        x = x[:, :, :1]
    height, width, channels = x.shape
    dimension = channels * PATCH_SIDE * PATCH_SIDE
    positions = max(0, height - PATCH_SIDE + 1) * max(0, width - PATCH_SIDE + 1)
    if positions < MIN_PATCHES_PER_DIMENSION * dimension:
        return haar_noise_sigma(x)
    stride = max(1, int(np.ceil(np.sqrt(positions / MAX_PATCHES))))
    windows = sliding_window_view(x, (PATCH_SIDE, PATCH_SIDE), axis=(0, 1))[::stride, ::stride]
    patches = windows.reshape(-1, dimension).astype(np.float64)
    patches -= patches.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]  # largest first
    for first in range(len(eigenvalues)):
        rest = eigenvalues[first:]
        mean = rest.mean()
        # Structure pulls the mean above the median; once as many lie above it as below,
        # what is left is the noise's share.
        if np.count_nonzero(rest > mean) >= np.count_nonzero(rest < mean):
            return float(np.sqrt(max(mean, 0.0)))
    return float(np.sqrt(max(eigenvalues[-1], 0.0)))


def haar_noise_sigma(image: np.ndarray) -> float:
    """The median absolute deviation of the finest diagonal Haar coefficients / 0.6745
    (Donoho & Johnstone), mean over channels: biased up by image detail, but defined on any
    image of at least 2×2 pixels."""
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    x = image[:height, :width].astype(np.float32)
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    deviation = np.abs(diagonal - np.median(diagonal, axis=(0, 1)))
    return float(np.mean(np.median(deviation, axis=(0, 1))) / 0.6745)


# -- the denoise net's fourth input channel ----------------------------------------------------
# A denoise net with four input channels reads the noise level it should remove as a constant
# plane, in units of 50/255 (25/255 reads 0.5: the plane's values stay near the image's
# scale, so its weights learn at the pace of the others). The level is what the blind denoise
# net (shipped as noise_probe.onnx) removes from the image: the RMS of its residual. Not
# `estimate_noise_sigma`, which assumes white noise: on noise that neighbouring pixels share
# (a camera's demosaiced, JPEG'd noise; grey grain) it reads a fraction of it (σ≈17/255 of
# blurred, JPEG'd noise read as 1/255). The net is trained with the level this function gives
# on each noisy patch, so at run time it reads what it learnt from, and the user's strength
# scales it (FFDNet's noise-level map used as a knob, Zhang et al. 2018; CBDNet's adjustable
# estimate, Guo et al. 2019).
LEVEL_UNIT = 50.0 / 255.0
PROBE_SIDE = 256  # the probe runs on crops of this side ...
PROBE_GRID = 3  # ... at most this many per axis (≤ 9 crops, ≈ 0.6 megapixels, any image size)


def level_plane(level: float, height: int, width: int) -> np.ndarray:
    """H×W×1 float32: the denoise net's level channel for noise of RMS ``level`` (image units)."""
    return np.full((height, width, 1), level / LEVEL_UNIT, dtype=np.float32)


def _probe_starts(length: int) -> list[int]:
    if length <= PROBE_SIDE:
        return [0]
    count = min(PROBE_GRID, -(-length // PROBE_SIDE))
    return sorted({int(round(v)) for v in np.linspace(0, length - PROBE_SIDE, count)})


def probe_noise_level(rgb: np.ndarray, probe: "OnnxModel") -> float:
    """The RMS of what the blind denoise net ``probe`` removes from ``rgb`` (H×W×3 float32 in
    [0, 1]): over the whole image up to PROBE_SIDE px a side, else over a grid of crops."""
    from .onnx.runner import run_rgb

    total, count = 0.0, 0
    for y in _probe_starts(rgb.shape[0]):
        for x in _probe_starts(rgb.shape[1]):
            crop = np.ascontiguousarray(rgb[y:y + PROBE_SIDE, x:x + PROBE_SIDE], dtype=np.float32)
            residual = run_rgb(probe, crop) - np.clip(crop, 0.0, 1.0)
            total += float(np.square(residual, dtype=np.float64).sum())
            count += residual.size
    return float(np.sqrt(total / count))
