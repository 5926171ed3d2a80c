"""Image folders → training patch batches and a fixed validation set (numpy + Pillow only).

The train/validation split is decided by a hash of each file's *name* (not its folder or its
place in a listing), so it is stable when folders move or images are added: a file is in
validation iff sha1(name) falls in the first ``val_fraction`` of the hash range. A non-empty
collection always keeps at least one training and (with two or more files) one validation
image.

Tasks:
- ``upscale`` (scale s): the whole image is modcropped and downscaled once (antialiased
  bicubic, ``degrade.bicubic_downscale``); a batch is aligned LR patches P×P and HR patches
  sP×sP, with random flips / 90° turns.
- ``sharpen``: clean P×P crops (flipped / turned), degraded by ``degrade.sharpen_degradation``
  (noise/JPEG probabilities adjustable for training; validation always uses the defaults).
- ``denoise``: clean P×P crops (flipped / turned) with ``degrade.denoise_degradation``'s
  blind noise; validation: white Gaussian σ=25/255 (``degrade.validation_noise``). With
  ``in_channels=4`` the input also carries the noise level the engine measures in it (what
  the blind net ``level_probe`` removes: ``degrade.denoise_input``), so the net can be told
  how strongly to denoise.
- ``inpaint``: clean P×P crops with a random hole (``degrade.inpaint_hole``); the input is
  ``degrade.inpaint_input`` (4 channels: pre-filled image + hole) and ``Sample.weight`` is the
  hole, so the loss counts only the pixels the net must invent.
- ``dejpeg``: clean P×P crops JPEG'd by ``degrade.dejpeg_degradation`` (quality 8–98, block
  grid shifted at random, sometimes saved twice or noisy first, sometimes not JPEG'd); validation: JPEG q 20
  (``degrade.validation_jpeg``).

Validation images are the same every time: upscale uses the standard protocol (whole image,
or a centred crop of at most ``val_max_side``), sharpen, denoise and inpaint degrade each with an rng seeded
by its name, so PSNRs are comparable across evaluations and runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import degrade

TASKS = ("upscale", "sharpen", "denoise", "inpaint", "dejpeg")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(dirs: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        root = Path(d)
        if root.is_file():
            files.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"no such image folder: {root}")
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(set(files))


def name_hash(path: Path) -> float:
    """A file's place in [0, 1) from its name alone."""
    return int(hashlib.sha1(path.name.encode("utf-8")).hexdigest()[:12], 16) / float(16 ** 12)


def split_files(files: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    ranked = sorted(files, key=name_hash)
    val = [p for p in ranked if name_hash(p) < val_fraction]
    if not val and len(ranked) >= 2 and val_fraction > 0:
        val = ranked[:1]
    if len(val) == len(ranked) and ranked:
        val = val[:-1]  # keep one image to train on
    held_out = set(val)
    train = [p for p in files if p not in held_out]
    return train, sorted(val)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # reads the header only
        return im.size


def load_rgb(path: Path) -> np.ndarray:
    """uint8 H×W×3 (compact: the cache keeps uint8, batches are float32)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip/turn for every array in the list (LR and HR stay aligned)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


@dataclass
class Sample:
    source: np.ndarray  # net input, N×3×h×w float32 (inpaint, level-reading denoise: N×4×h×w)
    target: np.ndarray  # N×3×(s·h)×(s·w) float32
    weight: np.ndarray | None = None  # N×1×h×w: where the loss counts (inpaint: the hole)


class PatchData:
    def __init__(self, dirs: list[str | Path], task: str, patch: int, scale: int = 1,
                 val_fraction: float = 0.1, val_max_side: int = 256, cache: bool = True,
                 noise_probability: float = degrade.NOISE_PROBABILITY,
                 jpeg_probability: float = degrade.JPEG_PROBABILITY,
                 blur_mix: tuple[float, float, float] = degrade.BLUR_MIX, in_channels: int = 3,
                 level_probe: str | Path | None = None,
                 noise_mix: tuple[float, ...] = degrade.NOISE_MIX,
                 denoise_jpeg_probability: float = degrade.DENOISE_JPEG_PROBABILITY) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        self.probe = None  # the blind net whose residual is a level-reading denoise net's level
        if task == "denoise" and in_channels == 4:
            from engine.onnx import runner

            self.probe = runner.load_model(level_probe or runner.models_dir() / "noise_probe.onnx", "cpu", threads=1)
        self.task, self.patch, self.scale = task, int(patch), int(scale if task == "upscale" else 1)
        self.val_max_side = val_max_side
        # Training batches only: validation keeps degrade's default mix (see ``validation``).
        self.noise_probability, self.jpeg_probability = noise_probability, jpeg_probability
        self.blur_mix = blur_mix
        self.noise_mix, self.denoise_jpeg_probability = noise_mix, denoise_jpeg_probability
        self.files = list_images(dirs)
        if not self.files:
            raise FileNotFoundError(f"no images in {', '.join(map(str, dirs))}")
        self.train_files, self.val_files = split_files(self.files, val_fraction)
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray | None]] = {}
        self._use_cache = cache
        hr_side = self.patch * self.scale
        self.train_files = [p for p in self.train_files if min(image_size(p)) >= hr_side]
        self._validation: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}
        if not self.train_files:
            raise ValueError(f"no training image is at least {hr_side} px on its short side")

    # -- training -------------------------------------------------------------------------
    def _pair(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(HR uint8, LR float32 or None): the LR is made once per image, as the protocol does."""
        if path in self._cache:
            return self._cache[path]
        hr = load_rgb(path)
        lr = None
        if self.task == "upscale":
            hr = degrade.modcrop(hr, self.scale)
            lr = degrade.bicubic_downscale(hr.astype(np.float32) / 255.0, self.scale)
        if self._use_cache:
            self._cache[path] = (hr, lr)
        return hr, lr

    def batch(self, size: int, rng: np.random.Generator) -> Sample:
        sources, targets, weights = [], [], []
        p, s = self.patch, self.scale
        for _ in range(size):
            hr, lr = self._pair(self.train_files[int(rng.integers(len(self.train_files)))])
            if lr is not None:
                y = int(rng.integers(lr.shape[0] - p + 1))
                x = int(rng.integers(lr.shape[1] - p + 1))
                src = lr[y:y + p, x:x + p]
                tgt = hr[y * s:(y + p) * s, x * s:(x + p) * s].astype(np.float32) / 255.0
                src, tgt = augment([src, tgt], rng)
            else:
                y = int(rng.integers(hr.shape[0] - p + 1))
                x = int(rng.integers(hr.shape[1] - p + 1))
                (tgt,) = augment([hr[y:y + p, x:x + p].astype(np.float32) / 255.0], rng)
                if self.task == "inpaint":
                    hole = degrade.inpaint_hole(p, p, rng)
                    src = degrade.inpaint_input(tgt, hole)
                    weights.append(hole[None].astype(np.float32))
                elif self.task == "denoise":
                    src = degrade.denoise_degradation(tgt, rng, self.noise_mix, self.denoise_jpeg_probability)
                    if self.probe is not None:
                        src = degrade.denoise_input(src, self.probe)
                elif self.task == "dejpeg":
                    src = degrade.dejpeg_degradation(tgt, rng)
                else:
                    src = degrade.sharpen_degradation(tgt, rng, self.noise_probability, self.jpeg_probability,
                                                      self.blur_mix)
            sources.append(src.transpose(2, 0, 1))
            targets.append(tgt.transpose(2, 0, 1))
        return Sample(np.stack(sources).astype(np.float32), np.stack(targets).astype(np.float32),
                      np.stack(weights) if weights else None)

    # -- validation -----------------------------------------------------------------------
    def validation(self, multiple: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, input H×W×3, target) per validation image; input sides are multiples of
        ``multiple`` (the net's size rule) and at most ``val_max_side``. Made once, then reused."""
        if multiple in self._validation:
            return self._validation[multiple]
        out = []
        for path in self.val_files:
            img = load_rgb(path).astype(np.float32) / 255.0
            unit = self.scale * multiple
            side = max(unit, self.val_max_side * self.scale - (self.val_max_side * self.scale) % unit)
            h = min(img.shape[0] - img.shape[0] % unit, side)
            w = min(img.shape[1] - img.shape[1] % unit, side)
            if h < unit or w < unit:
                continue
            y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            hr = img[y:y + h, x:x + w]
            if self.task == "upscale":
                out.append((path.name, degrade.bicubic_downscale(hr, self.scale), hr))
            else:
                rng = np.random.default_rng(int(name_hash(path) * 2 ** 32))
                if self.task == "inpaint":
                    degraded = degrade.inpaint_input(hr, degrade.inpaint_hole(h, w, rng))
                elif self.task == "denoise":
                    degraded = degrade.validation_noise(hr, rng)
                    if self.probe is not None:
                        degraded = degrade.denoise_input(degraded, self.probe)
                elif self.task == "dejpeg":
                    degraded = degrade.validation_jpeg(hr)
                else:
                    degraded = degrade.sharpen_degradation(hr, rng)
                out.append((path.name, degraded, hr))
        self._validation[multiple] = out
        return out


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 0–255 scale (16–235), as the SR papers measure it."""
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2])


def psnr(result: np.ndarray, target: np.ndarray, shave: int = 0, y_only: bool = False,
         where: np.ndarray | None = None) -> float:
    """PSNR in dB of H×W×3 images in [0, 1]; ``shave`` px dropped on each side; on Y if asked;
    over the pixels where ``where`` (H×W bool) is true if given (an inpainted hole)."""
    a = np.clip(result.astype(np.float64), 0.0, 1.0)
    b = target.astype(np.float64)
    if where is not None:
        a, b = a[where], b[where]
    if y_only:
        a, b, peak = rgb_to_y(a), rgb_to_y(b), 255.0
    else:
        peak = 1.0
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak ** 2 / mse)
