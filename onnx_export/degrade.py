"""Synthetic degradations (numpy + Pillow only) that make training inputs from clean images.

All functions take and return float32 H×W×C arrays in [0, 1]. Randomness always comes from a
``numpy.random.Generator`` passed in, so a seed reproduces a degradation exactly.

- Super-resolution: ``bicubic_downscale`` (Pillow's antialiased bicubic, close to MATLAB's
  ``imresize``, the standard SR protocol) of a ``modcrop``-ed image.
- Sharpening: ``sharpen_degradation`` draws one blind degradation: a blur (Gaussian σ 0.5–3,
  defocus disk, or down-and-up resize blur), then, sometimes, light noise and/or JPEG. The
  output keeps the input's shape.
- Denoising: ``denoise_degradation`` draws one blind noise: white Gaussian (per channel),
  signal-dependent (shot + read noise, as a camera's raw noise), the same noise in every
  channel (luminance grain), or noise neighbours share (blurred: demosaiced), σ up to 55/255;
  sometimes 8-bit rounding and/or JPEG after it.
  ``validation_noise`` is the fixed benchmark case: white Gaussian σ=25/255, clipped.
  ``denoise_input`` adds the level channel of a level-reading denoise net.
- Inpainting: ``inpaint_hole`` draws a random hole (strokes, compact shapes, scattered pixels,
  or strokes and shapes); ``inpaint_input`` makes the net's 4-channel input from it (the
  image with the hole smoothly pre-filled, plus the hole).
"""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from engine.onnx.runner import OnnxModel

_RESAMPLE = Image.Resampling


def _resize(img: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """Resize each channel as a float32 ("F") image: no 8-bit rounding on the way."""
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c])).resize((width, height), resample))
           for c in range(img.shape[2])]
    return np.stack(out, axis=2).astype(np.float32)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of ``scale`` (the SR protocol)."""
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    return img[:h, :w]


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """LR image for SR training/evaluation: antialiased bicubic ÷scale of a modcropped image."""
    hr = modcrop(img, scale)
    lr = _resize(hr, hr.shape[1] // scale, hr.shape[0] // scale, _RESAMPLE.BICUBIC)
    return np.clip(lr, 0.0, 1.0)


def bicubic_upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Plain bicubic enlargement (the SR baseline)."""
    return np.clip(_resize(img, img.shape[1] * scale, img.shape[0] * scale, _RESAMPLE.BICUBIC), 0.0, 1.0)


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation of every channel with a small kernel, reflect-padded (same size out)."""
    kh, kw = kernel.shape
    py, px = kh // 2, kw // 2
    padded = np.pad(img, ((py, kh - 1 - py), (px, kw - 1 - px), (0, 0)), mode="reflect")
    out = np.zeros_like(img, dtype=np.float32)
    h, w = img.shape[:2]
    for dy in range(kh):
        for dx in range(kw):
            k = float(kernel[dy, dx])
            if k != 0.0:
                out += k * padded[dy:dy + h, dx:dx + w]
    return out


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    k = gaussian_kernel1d(sigma)
    # Separable: a row pass then a column pass (a 2-D kernel would be 37×37 at σ=3).
    return convolve(convolve(img, k[None, :]), k[:, None])


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Defocus point-spread function: a uniform disk with antialiased (area-weighted) edge."""
    r = int(math.ceil(radius))
    n = (2 * r + 1) * supersample
    coords = (np.arange(n) + 0.5) / supersample - (r + 0.5)
    inside = (coords[None, :] ** 2 + coords[:, None] ** 2) <= radius ** 2
    k = inside.reshape(2 * r + 1, supersample, 2 * r + 1, supersample).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)


def defocus_blur(img: np.ndarray, radius: float) -> np.ndarray:
    return convolve(img, disk_kernel(radius))


def resize_blur(img: np.ndarray, factor: float, down: int = _RESAMPLE.BICUBIC) -> np.ndarray:
    """Lost resolution: shrink by ``factor`` with the given filter, enlarge back bicubically."""
    h, w = img.shape[:2]
    small = _resize(img, max(1, round(w / factor)), max(1, round(h / factor)), down)
    return _resize(small, w, h, _RESAMPLE.BICUBIC)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip (also quantises to 8 bits, as real JPEG'd photos are)."""
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    grey = u8.shape[2] == 1
    pil = Image.fromarray(u8[:, :, 0] if grey else u8)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
    return out[:, :, None] if grey else out


BLUR_KINDS = ("gaussian", "defocus", "resize")
BLUR_MIX = (0.5, 0.25, 0.25)  # how often each of BLUR_KINDS is drawn


def random_blur(img: np.ndarray, rng: np.random.Generator,
                blur_mix: tuple[float, float, float] = BLUR_MIX) -> np.ndarray:
    kind = rng.choice(BLUR_KINDS, p=list(blur_mix))
    if kind == "gaussian":
        return gaussian_blur(img, float(rng.uniform(0.5, 3.0)))
    if kind == "defocus":
        return defocus_blur(img, float(rng.uniform(1.0, 4.0)))
    filters = [_RESAMPLE.BICUBIC, _RESAMPLE.BILINEAR, _RESAMPLE.BOX]
    return resize_blur(img, float(rng.uniform(1.5, 3.0)), filters[int(rng.integers(len(filters)))])


NOISE_PROBABILITY = 0.5
JPEG_PROBABILITY = 0.3


def sharpen_degradation(img: np.ndarray, rng: np.random.Generator, noise_probability: float = NOISE_PROBABILITY,
                        jpeg_probability: float = JPEG_PROBABILITY,
                        blur_mix: tuple[float, float, float] = BLUR_MIX) -> np.ndarray:
    """One random blind degradation for the sharpen net: blur, then maybe noise, maybe JPEG.

    The probabilities (and the share of each blur kind, ``blur_mix``, summing to 1) are a
    training knob (what the net sees most); validation always uses the defaults, so scores
    stay comparable between nets."""
    out = random_blur(img.astype(np.float32, copy=False), rng, blur_mix)
    if rng.random() < noise_probability:
        out = add_noise(out, float(rng.uniform(0.002, 0.02)), rng)  # light: we sharpen, not denoise
    out = np.clip(out, 0.0, 1.0)
    if rng.random() < jpeg_probability:
        out = jpeg(out, int(rng.integers(70, 96)))
    return out.astype(np.float32)


# -- denoising --------------------------------------------------------------------------------

NOISE_KINDS = ("white", "signal", "luminance", "correlated")
NOISE_MIX = (0.5, 0.2, 0.15, 0.15)  # how often each of NOISE_KINDS is drawn (train --noise-mix; session 21: 4,2,1,3)
MAX_NOISE_SIGMA = 55.0 / 255.0  # a little past σ=50, the usual top of the benchmarks
VALIDATION_NOISE_SIGMA = 25.0 / 255.0
QUANTISE_PROBABILITY = 0.5
DENOISE_JPEG_PROBABILITY = 0.1  # train --denoise-jpeg-prob (session 21: 0.35)


def signal_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Shot + read noise: variance a·x + b, scaled so that mid-grey gets σ (a raw photo's noise
    model; brighter pixels are noisier in absolute terms, darker ones relative to their level)."""
    shot_share = float(rng.uniform(0.5, 1.0))
    a = shot_share * sigma ** 2 / 0.5
    b = (1.0 - shot_share) * sigma ** 2
    std = np.sqrt(a * np.clip(img, 0.0, 1.0) + b).astype(np.float32)
    return img + std * rng.standard_normal(img.shape).astype(np.float32)


def correlated_noise(shape: tuple[int, ...], sigma: float, blur: float, rng: np.random.Generator) -> np.ndarray:
    """Noise that neighbouring pixels share, as a camera's demosaiced and sharpened raw noise
    is: white noise blurred (Gaussian, ``blur`` px), scaled back to a standard deviation of σ."""
    noise = gaussian_blur(rng.standard_normal(shape).astype(np.float32), blur)
    return (noise * (sigma / max(float(noise.std()), 1e-6))).astype(np.float32)


def denoise_degradation(img: np.ndarray, rng: np.random.Generator,
                        mix: tuple[float, ...] = NOISE_MIX,
                        jpeg_probability: float = DENOISE_JPEG_PROBABILITY) -> np.ndarray:
    """One random blind noise for the denoise net: a kind (``mix``: shares of NOISE_KINDS), σ
    uniform in (0, ``MAX_NOISE_SIGMA``], clipped; then sometimes 8-bit rounding, sometimes
    JPEG q 75–95 (a phone's noisy, compressed photo)."""
    img = img.astype(np.float32, copy=False)
    sigma = float(rng.uniform(1.0 / 255.0, MAX_NOISE_SIGMA))
    kind = rng.choice(NOISE_KINDS, p=list(mix))
    if kind == "white":
        out = add_noise(img, sigma, rng)
    elif kind == "signal":
        out = signal_noise(img, sigma, rng)
    elif kind == "luminance":
        grain = rng.normal(0.0, sigma, size=(*img.shape[:2], 1)).astype(np.float32)
        out = img + grain  # the same in every channel: grey grain, no colour speckle
    else:
        out = img + correlated_noise(img.shape, sigma, float(rng.uniform(0.4, 1.0)), rng)
    out = np.clip(out, 0.0, 1.0)
    if rng.random() < QUANTISE_PROBABILITY:
        out = np.round(out * 255.0) / 255.0
    if rng.random() < jpeg_probability:
        out = jpeg(out, int(rng.integers(75, 96)))
    return out.astype(np.float32)


def denoise_input(noisy: np.ndarray, probe: "OnnxModel") -> np.ndarray:
    """A level-reading denoise net's input: the noisy RGB and, as a fourth channel, the noise
    level the engine measures in it with the blind net ``probe`` (``engine.noise_level``:
    what the engine feeds the net at run time, before the user's strength scales it)."""
    from engine.noise_level import level_plane, probe_noise_level

    plane = level_plane(probe_noise_level(noisy, probe), *noisy.shape[:2])
    return np.concatenate([noisy.astype(np.float32, copy=False), plane], axis=2)


def validation_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The benchmark's case (as for CBM3D and the DIP engine): white Gaussian σ=25/255, clipped."""
    return np.clip(add_noise(img.astype(np.float32, copy=False), VALIDATION_NOISE_SIGMA, rng), 0.0, 1.0)


# -- JPEG artefacts: one blind net for any quality ------------------------------------------
# Quality drawn uniformly from bad web images to camera files; most JPEGs subsample chroma
# 4:2:0 (Pillow's default), some keep it (4:4:4); some were saved twice (an edited download);
# real photos carry sensor noise that the JPEG then mangles. Some inputs are not JPEG'd at
# all (8-bit rounding only): without them the net smoothed every input to ~39.5 dB, a q 95
# camera JPEG (50 dB) and an uncompressed PNG alike.
DEJPEG_QUALITY = (8, 98)
DEJPEG_CLEAN_PROBABILITY = 0.1
DEJPEG_FULL_CHROMA_PROBABILITY = 0.2
DEJPEG_TWICE_PROBABILITY = 0.2
DEJPEG_NOISE_PROBABILITY = 0.2
DEJPEG_MAX_NOISE_SIGMA = 5.0 / 255.0
VALIDATION_JPEG_QUALITY = 20
_MCU = 16  # the 4:2:0 block grid (8 px for luma, 16 for chroma)


def jpeg_at(img: np.ndarray, quality: int, offset: tuple[int, int] = (0, 0), full_chroma: bool = False) -> np.ndarray:
    """JPEG round trip with the block grid shifted by ``offset`` (dy, dx) px: the image is
    edge-padded at the top left before saving and cropped back after, so the net learns
    blocks wherever a tile of a photo happens to start."""
    dy, dx = offset
    padded = np.pad(img, ((dy, 0), (dx, 0), (0, 0)), mode="edge") if dy or dx else img
    u8 = (np.clip(padded, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    grey = u8.shape[2] == 1
    buf = io.BytesIO()
    Image.fromarray(u8[:, :, 0] if grey else u8).save(buf, format="JPEG", quality=int(quality),
                                                      subsampling=0 if full_chroma else 2)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
    out = out[:, :, None] if grey else out
    return np.ascontiguousarray(out[dy:, dx:])


def dejpeg_degradation(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random JPEG'd copy for the artefact-removal net: sometimes light noise first, then
    JPEG at a quality drawn from ``DEJPEG_QUALITY`` (4:2:0, sometimes 4:4:4) on a randomly
    shifted block grid, sometimes a second time at another quality; sometimes no JPEG at all
    (``DEJPEG_CLEAN_PROBABILITY``: 8-bit rounding only)."""
    out = img.astype(np.float32, copy=False)
    if rng.random() < DEJPEG_NOISE_PROBABILITY:
        out = np.clip(add_noise(out, float(rng.uniform(0.0, DEJPEG_MAX_NOISE_SIGMA)), rng), 0.0, 1.0)
    if rng.random() < DEJPEG_CLEAN_PROBABILITY:
        return (np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)
    saves = 2 if rng.random() < DEJPEG_TWICE_PROBABILITY else 1
    for _ in range(saves):
        offset = (int(rng.integers(_MCU)), int(rng.integers(_MCU)))
        out = jpeg_at(out, int(rng.integers(DEJPEG_QUALITY[0], DEJPEG_QUALITY[1] + 1)), offset,
                      full_chroma=bool(rng.random() < DEJPEG_FULL_CHROMA_PROBABILITY))
    return out.astype(np.float32)


def validation_jpeg(img: np.ndarray) -> np.ndarray:
    """The artefact net's validation case: JPEG q 20, 4:2:0, grid at the crop's corner."""
    return jpeg_at(img.astype(np.float32, copy=False), VALIDATION_JPEG_QUALITY)


# -- inpainting: random holes -------------------------------------------------------------
# What users select to fill, drawn at random: strokes (scratches, wires, text, hairs),
# compact shapes (a blemish, an object, a date stamp), scattered pixels (dead pixels, the
# DIP paper's 50 %-missing case), and strokes plus shapes together.
HOLE_KINDS = ("strokes", "shapes", "scattered", "mixed")
HOLE_MIX = (0.35, 0.3, 0.15, 0.2)
MAX_HOLE_SHARE = 0.85  # some image must be left to fill from


def _strokes(draw: "ImageDraw.ImageDraw", height: int, width: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 7))):
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height)))]
        for _ in range(int(rng.integers(1, 5))):
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.5) * max(height, width)
            x, y = points[-1]
            points.append((x + length * math.cos(angle), y + length * math.sin(angle)))
        stroke = int(rng.choice([1, 2, 3, 4, 6, 8, 12, 16], p=[.1, .15, .15, .15, .15, .12, .1, .08]))
        draw.line(points, fill=255, width=stroke, joint="curve")


def _shapes(draw: "ImageDraw.ImageDraw", height: int, width: int, rng: np.random.Generator) -> None:
    side = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        h, w = (float(v) for v in rng.uniform(0.06, 0.5, size=2) * side)
        y, x = float(rng.uniform(-h / 2, height - h / 2)), float(rng.uniform(-w / 2, width - w / 2))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), fill=255)
        else:
            draw.ellipse((x, y, x + w, y + h), fill=255)


def inpaint_hole(height: int, width: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """One random hole (H×W bool, true = to fill) of ``kind`` (one of ``HOLE_KINDS``; None:
    drawn from ``HOLE_MIX``); never empty and never more than ``MAX_HOLE_SHARE`` of the image."""
    from PIL import ImageDraw

    if kind is not None and kind not in HOLE_KINDS:
        raise ValueError(f"unknown hole kind {kind!r}; known: {', '.join(HOLE_KINDS)}")
    fixed_kind = kind
    while True:
        kind = fixed_kind or rng.choice(HOLE_KINDS, p=list(HOLE_MIX))
        if kind == "scattered":
            hole = rng.random((height, width)) < rng.uniform(0.1, 0.8)
        else:
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            if kind in ("strokes", "mixed"):
                _strokes(draw, height, width, rng)
            if kind in ("shapes", "mixed"):
                _shapes(draw, height, width, rng)
            hole = np.asarray(canvas) > 127
        if hole.any() and hole.mean() <= MAX_HOLE_SHARE:
            return hole


def inpaint_input(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The inpainting net's input: the image with the hole smoothly filled (``engine.fill``,
    as the engine does it), and the hole as a fourth channel (1 = to fill)."""
    from engine.fill import smooth_fill

    filled = smooth_fill(img.astype(np.float32, copy=False), hole)
    return np.concatenate([filled, hole[:, :, None].astype(np.float32)], axis=2)
