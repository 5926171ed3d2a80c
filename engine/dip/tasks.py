"""DIP tasks: each is an objective plus a net configuration, run by the one loop in `loop.fit`.

Public API for the op layer: `denoise`, `inpaint`, `resolve_device`. Images are float32
H×W×C arrays (C = 1 or 3, alpha stripped by the caller) with values in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import BadInput

from .loop import CancelCallback, Objective, ProgressCallback, fit
from .nets import LIGHT_DENOISE, LIGHT_INPAINT, PAPER_DENOISE, PAPER_INPAINT, NetConfig

# Smaller images carry too little structure for the prior, and reflection padding them up to
# the net's minimum size would mostly invent content.
MIN_IMAGE_SIDE = 8

# Paper settings (reference notebooks).
DENOISE_REG_NOISE_STD = 1.0 / 30.0
INPAINT_REG_NOISE_STD = 0.03
LEARNING_RATE = 0.01
OUTPUT_EMA = 0.99
PAPER_DENOISE_ITERATIONS = 3000
PAPER_INPAINT_ITERATIONS = 5000

# Default iteration rule (see `default_iterations`).
MIN_DEFAULT_ITERATIONS = 300
MAX_DEFAULT_ITERATIONS = {"denoise": PAPER_DENOISE_ITERATIONS, "inpaint": PAPER_INPAINT_ITERATIONS}
# Without early stopping a DIP peaks and then over-fits (noise when denoising, known-pixel
# detail that spills into the hole when inpainting). Measured on this CPU, the peak of the
# averaged output sits near a fixed number of iterations per pixel of image side. Denoising
# F16 crops (σ = 25/255): paper net ~800 its at 128²; light net ~750 at 64², ~1500 at 128²,
# ~2700 at 256². Inpainting kate's text mask with the light net: ~1500 at 128². The paper's
# 3000 denoising its at 512² match the paper net's factor; its 5000 inpainting its at 512²
# give the paper inpaint net's factor (not measured here: needs a GPU).
ITERATIONS_PER_SIDE_PIXEL = {
    (PAPER_DENOISE, "denoise"): 6.0,
    (LIGHT_DENOISE, "denoise"): 11.0,
    (PAPER_INPAINT, "inpaint"): 10.0,
    (LIGHT_INPAINT, "inpaint"): 11.0,
}
DEFAULT_ITERATIONS_PER_SIDE_PIXEL = 11.0  # custom nets: assume the light nets' pace
# On the CPU the run is also capped to about this many pixel-iterations (≈ 3000 its of a
# 256² light net: ~5 min with 2 threads, ~8 min with 1, on the 2-core dev machine), so a
# large image gets fewer iterations and a blurrier but timely result, not an hour-long run.
CPU_PIXEL_ITERATION_BUDGET = 256 * 256 * 3000

# Context kept around the hole's bounding box: at least this many pixels, and at least half
# the box's larger side (big holes need more surrounding texture to be filled plausibly).
INPAINT_MIN_MARGIN = 16
INPAINT_MARGIN_FRACTION = 0.5


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if not isinstance(device, str):
        raise BadInput(f"device must be a string (auto, cpu or cuda), not {type(device).__name__}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no usable GPU or driver"
            raise BadInput(
                f"device {device!r} was requested but CUDA is not available here ({build}, "
                f"torch {torch.__version__}); choose device 'cpu' or 'auto'"
            )
        try:
            resolved = torch.device(name)
        except RuntimeError as exc:
            raise BadInput(f"invalid CUDA device {device!r}: {exc}") from None
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise BadInput(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
        return resolved
    raise BadInput(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'")


def default_net(task: str, device: torch.device) -> NetConfig:
    """The paper's nets on a GPU; narrower nets of the same shape on the CPU."""
    on_gpu = device.type == "cuda"
    if task == "denoise":
        return PAPER_DENOISE if on_gpu else LIGHT_DENOISE
    if task == "inpaint":
        return PAPER_INPAINT if on_gpu else LIGHT_INPAINT
    raise ValueError(f"unknown task {task!r}")


def default_iterations(task: str, net: NetConfig, device: torch.device, pixels: int) -> int:
    """Iterations used when the caller passes ``iterations=None``.

    ``pixels`` is the net input's size (for inpainting: the hole's context window, not the
    whole image). The count is ``factor × sqrt(pixels)`` — the denoising peak moves out
    linearly with the image side — with factor 6 (paper denoise net), 10 (paper inpaint
    net, the paper's 5000 its at 512²) or 11 (light nets and any other net). It is clamped
    to [300, paper count] (denoise 3000, inpaint 5000), and on the CPU also to
    ``CPU_PIXEL_ITERATION_BUDGET / pixels`` (never below 300). Examples on the CPU (light nets) — denoise: 64² → 704, 128² → 1408,
    256² → 2816, 512² → 750, 1024² → 300; inpaint window 64² → 704, 128² → 1408.
    The rule depends only on the task, net, device type and size, so runs stay
    reproducible; a later change adds automatic stopping.
    """
    factor = ITERATIONS_PER_SIDE_PIXEL.get((net, task), DEFAULT_ITERATIONS_PER_SIDE_PIXEL)
    count = min(factor * math.sqrt(pixels), MAX_DEFAULT_ITERATIONS[task])
    if device.type != "cuda":
        count = min(count, CPU_PIXEL_ITERATION_BUDGET / max(1, pixels))
    return int(max(MIN_DEFAULT_ITERATIONS, round(count)))


# ---------------------------------------------------------------------------------------------
# Input checks and geometry


def _checked_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise BadInput(f"image must be a numpy array, not {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise BadInput(
            f"image must be H×W×C with C = 1 (grey) or 3 (RGB), got shape {image.shape}; "
            "strip alpha before calling"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise BadInput(f"image must hold floats in [0, 1], got dtype {image.dtype}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise BadInput(
            f"image is {width}×{height} px; Deep Image Prior needs at least "
            f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}"
        )
    if not np.isfinite(image).all():
        raise BadInput("image contains NaN or infinite values")
    return image.astype(np.float32, copy=False)


def _checked_hole(hole: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(hole, np.ndarray):
        raise BadInput(f"hole must be a numpy array, not {type(hole).__name__}")
    if hole.shape != shape:
        raise BadInput(f"hole mask shape {hole.shape} does not match the image's {shape}")
    if hole.dtype != np.bool_:
        if not np.isin(hole, (0, 1)).all():
            raise BadInput("hole must be a boolean mask (True = pixel to fill)")
        hole = hole.astype(bool)
    if not hole.any():
        raise BadInput("the hole mask is empty: there is nothing to inpaint")
    if hole.all():
        raise BadInput("the hole covers the whole image: there are no known pixels to learn from")
    return hole


def _checked_iterations(iterations: int | None) -> int | None:
    if iterations is None:
        return None
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise BadInput(f"iterations must be a positive integer, got {iterations!r}")
    return int(iterations)


def _checked_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _padding(side: int, config: NetConfig) -> tuple[int, int]:
    """Split the padding that brings ``side`` up to the net's size rule over both ends."""
    extra = config.padded_side(side) - side
    return extra // 2, extra - extra // 2


@dataclass(frozen=True)
class _Window:
    """A crop of the image (``y0:y1, x0:x1``) and the reflect padding around it."""

    y0: int
    y1: int
    x0: int
    x1: int
    pad_y: tuple[int, int]
    pad_x: tuple[int, int]


def _axis_window(lo: int, hi: int, length: int, config: NetConfig) -> tuple[int, int, tuple[int, int]]:
    """Grow [lo, hi) to a size the net accepts, using real pixels where the image has them
    and reflection padding only where it does not."""
    target = config.padded_side(hi - lo)
    if target >= length:
        return 0, length, _padding(length, config)
    grow = target - (hi - lo)
    lo -= grow // 2
    lo = min(max(lo, 0), length - target)
    return lo, lo + target, (0, 0)


def _inpaint_window(hole: np.ndarray, config: NetConfig) -> _Window:
    rows = np.flatnonzero(hole.any(axis=1))
    cols = np.flatnonzero(hole.any(axis=0))
    box_y0, box_y1 = int(rows[0]), int(rows[-1]) + 1
    box_x0, box_x1 = int(cols[0]), int(cols[-1]) + 1
    margin = max(
        INPAINT_MIN_MARGIN,
        math.ceil(INPAINT_MARGIN_FRACTION * max(box_y1 - box_y0, box_x1 - box_x0)),
    )
    height, width = hole.shape
    y0, y1, pad_y = _axis_window(max(0, box_y0 - margin), min(height, box_y1 + margin), height, config)
    x0, x1, pad_x = _axis_window(max(0, box_x0 - margin), min(width, box_x1 + margin), width, config)
    return _Window(y0, y1, x0, x1, pad_y, pad_x)


def _weighted_mse(target: torch.Tensor, weight: torch.Tensor) -> Objective:
    """Mean squared error over the pixels where ``weight`` is 1 (weights pre-normalised so
    the sum is the mean; no data-dependent host sync in the loss)."""
    normalised = weight / (weight.sum() * target.shape[1])

    def objective(output: torch.Tensor) -> torch.Tensor:
        return ((output - target).square() * normalised).sum()

    return objective


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """H×W×C numpy → 1×C×H×W tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)


def _run(
    *,
    task: str,
    target: np.ndarray,
    known: np.ndarray,
    net: NetConfig,
    device: torch.device,
    iterations: int | None,
    seed: int,
    reg_noise_std: float,
    progress: ProgressCallback | None,
    cancel_requested: CancelCallback | None,
    label: str,
) -> np.ndarray:
    """Fit the net to ``target`` (already padded to the size rule) on the ``known`` pixels."""
    height, width, channels = target.shape
    if iterations is None:
        iterations = default_iterations(task, net, device, height * width)
    target_t = _to_tensor(np.clip(target, 0.0, 1.0), device)
    weight_t = _to_tensor(known[:, :, None].astype(np.float32), device)
    try:
        return fit(
            _weighted_mse(target_t, weight_t),
            net,
            (height, width, channels),
            iterations=iterations,
            device=device,
            seed=seed,
            lr=LEARNING_RATE,
            reg_noise_std=reg_noise_std,
            ema=OUTPUT_EMA,
            progress=progress,
            cancel_requested=cancel_requested,
            label=label,
        )
    except torch.cuda.OutOfMemoryError:
        raise BadInput(
            f"{label}: a {width}×{height} px net input does not fit in GPU memory; "
            "select a smaller area or use device 'cpu'"
        ) from None


# ---------------------------------------------------------------------------------------------
# Public tasks


def denoise(
    image: np.ndarray,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    net: NetConfig | None = None,
) -> np.ndarray:
    """Denoise ``image`` (float32 H×W×C in [0, 1]) with the paper's DIP setup: MSE to the
    noisy image, input perturbation 1/30, output averaged with EMA 0.99. The image is
    reflect-padded to the net's size rule and cropped back. ``iterations=None`` uses
    `default_iterations`; ``net=None`` uses `default_net`. Returns float32 H×W×C in [0, 1].
    """
    image = _checked_image(image)
    iterations = _checked_iterations(iterations)
    seed = _checked_seed(seed)
    torch_device = resolve_device(device)
    config = net or default_net("denoise", torch_device)

    height, width, _ = image.shape
    pad_y, pad_x = _padding(height, config), _padding(width, config)
    padded = np.pad(image, (pad_y, pad_x, (0, 0)), mode="reflect")
    # The mirrored border only gives the net room; it is not evidence, so no loss there.
    known = np.zeros(padded.shape[:2], dtype=bool)
    known[pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width] = True

    restored = _run(
        task="denoise",
        target=padded,
        known=known,
        net=config,
        device=torch_device,
        iterations=iterations,
        seed=seed,
        reg_noise_std=DENOISE_REG_NOISE_STD,
        progress=progress,
        cancel_requested=cancel_requested,
        label="DIP denoise",
    )
    return np.ascontiguousarray(restored[pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width])


def inpaint(
    image: np.ndarray,
    hole: np.ndarray,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    net: NetConfig | None = None,
) -> np.ndarray:
    """Fill the ``hole`` pixels (bool H×W, True = fill) of ``image`` (float32 H×W×C in [0, 1]).

    Only a window around the hole is optimised: its bounding box plus a margin of
    max(16 px, half the box's larger side), grown to the net's size rule from real pixels
    where possible and reflect-padded otherwise. The loss covers the known pixels of that
    window. The returned image equals the input bit for bit outside the hole.
    """
    image = _checked_image(image)
    hole = _checked_hole(hole, image.shape[:2])
    iterations = _checked_iterations(iterations)
    seed = _checked_seed(seed)
    torch_device = resolve_device(device)
    config = net or default_net("inpaint", torch_device)

    window = _inpaint_window(hole, config)
    crop = image[window.y0 : window.y1, window.x0 : window.x1]
    crop_hole = hole[window.y0 : window.y1, window.x0 : window.x1]
    padded = np.pad(crop, (window.pad_y, window.pad_x, (0, 0)), mode="reflect")
    # Padding is not evidence either: only real known pixels enter the loss.
    known = np.pad(~crop_hole, (window.pad_y, window.pad_x), mode="constant", constant_values=False)

    filled = _run(
        task="inpaint",
        target=padded,
        known=known,
        net=config,
        device=torch_device,
        iterations=iterations,
        seed=seed,
        reg_noise_std=INPAINT_REG_NOISE_STD,
        progress=progress,
        cancel_requested=cancel_requested,
        label="DIP inpaint",
    )
    top, left = window.pad_y[0], window.pad_x[0]
    filled = filled[top : top + crop.shape[0], left : left + crop.shape[1]]

    result = image.copy()
    result_crop = result[window.y0 : window.y1, window.x0 : window.x1]
    result_crop[crop_hole] = filled[crop_hole]
    return result
