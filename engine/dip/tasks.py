"""DIP tasks: each is an objective plus a net configuration, run by the one loop in `loop.fit`.

Public API for the op layer: `denoise`, `inpaint`, `super_resolve`, `dejpeg`,
`resolve_device`. Images are float32 H×W×C arrays (C = 1 or 3, alpha stripped by the
caller) with values in [0, 1]. Every task takes the same keywords: ``iterations`` (None =
the preset decides, with automatic stopping unless the preset is ``paper``; a number = exactly
that many), ``seed``, ``device``, ``preset`` (see `presets`), ``progress``,
``cancel_requested`` and ``preview`` (gets the result so far, shaped like the return value),
``stats``, ``tile`` and ``fits`` (None = the preset's: several independent fits averaged,
see `_averaged_fits`). An image larger than the largest tile that fits in the device's free
memory (at most 1024²; ``tile`` = a side in input px overrides) is restored in overlapping
tiles, each fitted by the same loop and cross-faded without seams (see `tiles`); inpainting
tiles only when its hole window is that large, and fits only the tiles with holes.
On cancel, `Cancelled.partial` holds the result so far, shaped like the return value (tiled:
the finished tiles over the input, or over its bicubic enlargement for super-resolution).
"""
from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine import budget
from engine.errors import BadInput, Cancelled
from engine.symmetry import grid_symmetry

from . import loop, tiles
from .loop import CancelCallback, FitStats, NoisyTarget, Objective, ProgressCallback, fit
from .nets import NetConfig
from ..noise_level import estimate_noise_sigma
from .presets import PRESET_NAMES, Task, TaskPreset, preset_fits, task_preset

# Smaller images carry too little structure for the prior, and reflection padding them up to
# the net's minimum size would mostly invent content.
MIN_IMAGE_SIDE = 8
SR_SCALES = (2, 4, 8)

# Context kept around the hole's bounding box: at least this many pixels, and at least half
# the box's larger side (big holes need more surrounding texture to be filled plausibly).
INPAINT_MIN_MARGIN = 16
INPAINT_MARGIN_FRACTION = 0.5
# A hole window larger than a tile is filled tile by tile only when every tile keeps most of
# its pixels: a tile inside a large solid hole would have nothing to learn from.
INPAINT_MAX_TILE_HOLE_FRACTION = 0.5

# Gets the result so far, shaped and post-processed like the task's return value.
ImagePreview = Callable[[np.ndarray], None]


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


def _plus_total_variation(objective: Objective, weight: float) -> Objective:
    """``objective`` + ``weight`` × the output's anisotropic total variation (mean absolute
    difference of neighbours, down and across): DIP-TV (Liu et al. 2019)."""

    def regularised(output: torch.Tensor) -> torch.Tensor:
        tv = ((output[..., 1:, :] - output[..., :-1, :]).abs().mean()
              + (output[..., :, 1:] - output[..., :, :-1]).abs().mean())
        return objective(output) + weight * tv

    return regularised


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """H×W×C numpy → 1×C×H×W tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)



def _checked_preset(preset: str) -> str:
    if not isinstance(preset, str) or preset not in PRESET_NAMES:
        raise BadInput(f"preset must be one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    return preset


def lanczos2_kernel(scale: int) -> np.ndarray:
    """The 1-D Lanczos-2 antialiasing kernel of a ×``scale`` downsampling (4·scale taps,
    centred between pixels), normalised to sum 1 — the paper's super-resolution operator."""
    positions = (np.arange(4 * scale) - 2 * scale + 0.5) / scale
    # Lanczos-2: sinc(x)·sinc(x/2); np.sinc is the normalised sinc sin(πx)/(πx).
    taps = np.sinc(positions) * np.sinc(positions / 2.0)
    return (taps / taps.sum()).astype(np.float32)


class Lanczos2Downsampler(torch.nn.Module):
    """×``scale`` downsampling by a fixed separable Lanczos-2 filter, stride ``scale``, the
    input's edges repeated so an H×W input gives exactly H/scale × W/scale.

    Edge repetition is written with expand + cat (not ``F.pad(mode="replicate")``) for the
    same reason as in `nets`: its gradient is deterministic on CUDA.
    """

    def __init__(self, scale: int, channels: int) -> None:
        super().__init__()
        self.scale = scale
        taps = torch.from_numpy(lanczos2_kernel(scale))
        kernel = torch.outer(taps, taps).expand(channels, 1, -1, -1).contiguous()
        self.register_buffer("kernel", kernel)
        self.pad = (3 * scale) // 2  # (taps − stride) / 2: output = input / scale

    def _repeat_edges(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        p = self.pad
        first = x.narrow(dim, 0, 1)
        last = x.narrow(dim, x.shape[dim] - 1, 1)
        shape = list(x.shape)
        shape[dim] = p
        return torch.cat((first.expand(shape), x, last.expand(shape)), dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._repeat_edges(self._repeat_edges(x, 2), 3)
        return torch.nn.functional.conv2d(x, self.kernel, stride=self.scale, groups=x.shape[1])


def _fit_task(
    *,
    task: Task,
    objective: Objective,
    output_shape: tuple[int, int, int],
    settings: TaskPreset,
    device: torch.device,
    iterations: int | None,
    seed: int,
    finish: Callable[[np.ndarray], np.ndarray],
    progress: ProgressCallback | None,
    cancel_requested: CancelCallback | None,
    preview: ImagePreview | None,
    stats: FitStats | None,
    label: str,
    stop_region: np.ndarray | None = None,
    stop_noisy: NoisyTarget | None = None,
) -> np.ndarray:
    """Run the loop with a preset's settings; ``finish`` turns the net's output into the
    task's result and is applied alike to the result, previews and a cancel's partial.
    ``stop_region`` (bool, the net output's H×W) is where the stopping rule looks;
    ``stop_noisy`` is the noisy input for a rule's discrepancy test (ignored without one)."""
    height, width, _ = output_shape
    pixels = height * width
    automatic = iterations is None
    if automatic:
        iterations = settings.iterations(pixels, device)
    stop = settings.stopping_rule(pixels) if automatic else None
    loop_preview = None if preview is None else (lambda outputs: preview(finish(outputs["image"])))
    if stats is None and device.type == "cpu":
        stats = FitStats()  # to record how fast this machine ran it
    try:
        result = finish(fit(
            objective,
            settings.net,
            output_shape,
            iterations=iterations,
            device=device,
            seed=seed,
            lr=settings.lr,
            reg_noise_std=settings.reg_noise_std,
            ema=settings.ema,
            # An explicit iteration count is obeyed exactly.
            stop=stop,
            stop_noisy=stop_noisy if stop is not None and stop.discrepancy_factor is not None else None,
            stats=stats,
            stop_weight=(None if stop_region is None else
                         _to_tensor(stop_region[:, :, None].astype(np.float32), device)),
            **settings.speed_settings(device),
            progress=progress,
            cancel_requested=cancel_requested,
            preview=loop_preview,
            label=label,
        ))
    except Cancelled as cancelled:
        partial = cancelled.partial
        raise Cancelled(cancelled.message,
                        finish(partial) if isinstance(partial, np.ndarray) else None) from None
    except torch.cuda.OutOfMemoryError:
        raise BadInput(
            f"{label}: a {width}×{height} px net input does not fit in GPU memory; "
            "select a smaller area or use device 'cpu'"
        ) from None
    if device.type == "cpu" and stats is not None:
        from .loop import cpu_threads_for_fit
        from .presets import record_cpu_fit

        record_cpu_fit(settings.net, pixels, stats.seconds, stats.iterations_run, cpu_threads_for_fit())
    return result


MAX_FITS = 16


def _checked_fits(fits: int | None) -> int | None:
    """None or 0 = the preset's; else how many fits to average (1–16)."""
    if fits is None or (isinstance(fits, (int, np.integer)) and not isinstance(fits, bool) and fits == 0):
        return None
    if isinstance(fits, bool) or not isinstance(fits, (int, np.integer)) or not 1 <= fits <= MAX_FITS:
        raise BadInput(f"fits must be an integer from 1 to {MAX_FITS} (or 0 = the preset's), got {fits!r}")
    return int(fits)


# Fits a task's images (already under one grid symmetry) with one seed and returns the result
# in the same orientation: (inputs, seed, progress, cancel_requested, preview, stats) -> result.
SingleFit = Callable[[tuple[np.ndarray, ...], int, "ProgressCallback | None", "CancelCallback | None",
                      "ImagePreview | None", FitStats], np.ndarray]


def _averaged_fits(fit_one: SingleFit, inputs: tuple[np.ndarray, ...], fits: int, seed: int, *,
                   label: str, progress: ProgressCallback | None,
                   cancel_requested: CancelCallback | None, preview: ImagePreview | None,
                   stats: FitStats | None, side_by_side: int = 1) -> np.ndarray:
    """The mean of ``fits`` independent runs of ``fit_one``. Run k uses seed ``seed`` + k and
    sees the inputs under grid symmetry k (`grid_symmetry`), so the nets' errors — the noise
    they start to fit, their padding and upsampling grid — differ from run to run and partly
    cancel in the mean. Run 0 is the single-fit run exactly.

    Up to ``side_by_side`` runs go at once, each in its own thread (CPU only: see
    `loop.cpu_fit_plan`); the runs are independent and summed in index order, so the mean is
    the same as one after the other with the same threads per run. Progress and previews
    cover all runs (a preview shows the finished runs' mean with the reporting run's output
    so far); a cancel returns the mean of the finished runs (or the lowest running run's
    partial result); ``stats`` adds the runs up, its seconds are the wall time."""
    started = time.monotonic()
    lock = threading.Lock()  # the caller's callbacks and the shared sums, one thread at a time
    failed = threading.Event()  # a run raised: the others stop at their next cancel check
    fractions = [0.0] * fits
    finished: dict[int, tuple[np.ndarray, FitStats]] = {}

    def finished_sum() -> np.ndarray | None:
        parts = [finished[k][0] for k in sorted(finished)]
        return None if not parts else np.sum(parts, axis=0, dtype=np.float32)

    def run(index: int) -> np.ndarray:
        if failed.is_set():  # another run failed or was cancelled before this one started
            raise Cancelled(f"{label}: cancelled", None)
        oriented = tuple(np.ascontiguousarray(grid_symmetry(array, index)) for array in inputs)

        def fit_progress(fraction: float, text: str) -> None:
            if progress is None:
                return
            detail = text.split(": ", 1)[-1]  # the task's own text after its label
            with lock:
                fractions[index] = fraction
                if fraction >= 1.0:  # this fit's own last word ("settled, stopped after …")
                    which = str(index + 1)
                else:
                    running = {k + 1 for k in range(fits) if k not in finished and 0 < fractions[k] < 1}
                    which = "+".join(map(str, sorted(running | {index + 1})))
                progress(min(1.0, sum(fractions) / fits), f"{label}: fit {which}/{fits}, {detail}")

        def fit_preview(so_far: np.ndarray) -> None:
            assert preview is not None
            upright = grid_symmetry(so_far, index, inverse=True)
            with lock:
                summed = finished_sum()
                preview(upright if summed is None else (summed + upright) / (len(finished) + 1))

        def fit_cancel() -> bool:
            return failed.is_set() or (cancel_requested is not None and bool(cancel_requested()))

        fit_stats = FitStats()
        try:
            if fits == 1:  # the single-fit run exactly, callbacks untouched
                result = fit_one(oriented, seed, progress, cancel_requested, preview, fit_stats)
            else:
                result = fit_one(oriented, seed + index, fit_progress, fit_cancel,
                                 None if preview is None else fit_preview, fit_stats)
        except Cancelled:
            raise
        except BaseException:
            failed.set()
            raise
        upright = np.asarray(grid_symmetry(result, index, inverse=True), dtype=np.float32)
        with lock:
            fractions[index] = 1.0
            finished[index] = (upright, fit_stats)
        return upright

    workers = max(1, min(side_by_side, fits))
    partials: dict[int, Cancelled] = {}
    errors: list[BaseException] = []
    if workers == 1:
        for index in range(fits):
            try:
                run(index)
            except Cancelled as cancelled:
                partials[index] = cancelled
                break
    else:
        with loop.pinned_cpu_threads(loop.cpu_fit_plan(fits)[1]), \
                concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="dip-fit") as pool:
            futures = {pool.submit(run, index): index for index in range(fits)}
            for future in concurrent.futures.as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others stop
                    if isinstance(exc, Cancelled):
                        partials[futures[future]] = exc
                    else:
                        errors.append(exc)
                    failed.set()  # the running fits stop at their next cancel check
                    for waiting in futures:
                        waiting.cancel()  # and the ones not started never start
    if errors:
        raise errors[0]
    if partials:
        first = min(partials)
        message = partials[first].message
        if finished:
            raise Cancelled(message, finished_sum() / len(finished)) from None
        partial = partials[first].partial
        raise Cancelled(message, np.ascontiguousarray(grid_symmetry(partial, first, inverse=True))
                        if isinstance(partial, np.ndarray) else None) from None
    total = FitStats(iterations_run=0, stopped_early=True, result_iteration=0, seconds=0.0, tiles=0)
    for index in range(fits):
        total.add(finished[index][1])
    if stats is not None:
        if stats.fit_results is not None:
            stats.fit_results.extend((finished[k][0].copy(), finished[k][1].seconds) for k in range(fits))
        stats.__dict__.update({key: value for key, value in total.__dict__.items() if key != "fit_results"},
                              fits=fits, side_by_side=workers, seconds=time.monotonic() - started)
    summed = finished_sum()
    assert summed is not None
    return np.ascontiguousarray(summed / fits, dtype=np.float32)


def _fit_count(requested: int | None, preset: str, settings: TaskPreset, device: torch.device,
               net_pixels: int, tiled: bool) -> int:
    """``requested``, else `presets.preset_fits`; the fits ``auto`` adds on a CPU only as far
    as they truly run side by side here (`_fits_side_by_side`): about one fit's time."""
    if requested is not None:
        return requested
    fits = preset_fits(preset, settings, device)
    if fits > settings.fits:
        return max(settings.fits, _fits_side_by_side(fits, settings.net, device, net_pixels, tiled))
    return fits


def _fits_side_by_side(fits: int, config: NetConfig, device: torch.device, net_pixels: int,
                       tiled: bool) -> int:
    """How many of ``fits`` may run at once: on a CPU, `loop.cpu_fit_plan`'s count as far as
    the free memory holds that many fits of ``net_pixels``; one at a time on a GPU (one fit
    already keeps it busy) or when the image is tiled (each tile takes the memory a fit may
    use)."""
    if fits <= 1 or device.type != "cpu" or tiled:
        return 1
    workers = loop.cpu_fit_plan(fits)[0]
    free = tiles.free_bytes(device)
    if free is None:
        return workers
    per_fit = tiles.net_bytes_per_pixel(config) * net_pixels
    return max(1, min(workers, int((free - budget.TORCH_BASE_BYTES) // max(per_fit, 1.0))))


def _checked_tile(tile: int | None) -> int | None:
    """None or 0 = choose from the memory available; else a tile side in px."""
    if tile is None or (isinstance(tile, (int, np.integer)) and not isinstance(tile, bool) and tile == 0):
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise BadInput(f"tile must be a positive integer (or 0 = automatic), got {tile!r}")
    return int(tile)


def _checked_run_settings(iterations: int | None, seed: int, preset: str, device: str,
                          tile: int | None) -> tuple[int | None, int, str, torch.device, int | None]:
    """The keywords every task takes, checked (BadInput on a bad value), device resolved."""
    return (_checked_iterations(iterations), _checked_seed(seed), _checked_preset(preset),
            resolve_device(device), _checked_tile(tile))


def _tile_grid(config: NetConfig, device: torch.device, height: int, width: int, tile: int | None,
               scale: int = 1) -> tiles.TileGrid | None:
    """The tiles a run over a height×width input uses, or None when it fits in one."""
    side = tiles.tile_side_for(config, device, height * width * scale * scale, scale, tile)
    if height <= side and width <= side:
        return None
    return tiles.plan(height, width, side)


def _denoise_window(task: Task, label: str, image: np.ndarray, settings: TaskPreset,
                    device: torch.device, iterations: int | None, seed: int,
                    progress: ProgressCallback | None, cancel_requested: CancelCallback | None,
                    preview: ImagePreview | None, stats: FitStats | None, tv_weight: float = 0.0,
                    noise_sigma: float | None = None) -> np.ndarray:
    """Denoise-like fit of one window (the image, or one tile of it); ``tv_weight`` > 0 adds
    the output's total variation to the objective; ``noise_sigma`` (the whole image's
    estimated noise level) is for the stopping rule's discrepancy test."""
    config = settings.net
    height, width, channels = image.shape
    pad_y, pad_x = _padding(height, config), _padding(width, config)
    padded = np.pad(image, (pad_y, pad_x, (0, 0)), mode="reflect")
    # The mirrored border only gives the net room; it is not evidence, so no loss there.
    known = np.zeros(padded.shape[:2], dtype=np.float32)
    known[pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width] = 1.0

    def finish(output: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(output[pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width])

    target, evidence = _to_tensor(padded, device), _to_tensor(known[:, :, None], device)
    objective = _weighted_mse(target, evidence)
    if tv_weight > 0:
        objective = _plus_total_variation(objective, tv_weight)
    return _fit_task(task=task, objective=objective, output_shape=padded.shape, settings=settings,
                     device=device, iterations=iterations, seed=seed, finish=finish,
                     progress=progress, cancel_requested=cancel_requested, preview=preview,
                     stats=stats, label=label,
                     stop_noisy=None if noise_sigma is None else NoisyTarget(target, noise_sigma, evidence))


def _denoise_like(task: Task, label: str, image: np.ndarray, iterations: int | None, seed: int,
                  device: str, preset: str, progress: ProgressCallback | None,
                  cancel_requested: CancelCallback | None, preview: ImagePreview | None,
                  stats: FitStats | None, tile: int | None, fits: int | None,
                  strength: float = 1.0) -> np.ndarray:
    image = _checked_image(image)
    if not (isinstance(strength, (int, float)) and 0.0 < strength <= 10.0):
        raise ValueError(f"strength must be in (0, 10], got {strength!r}")
    iterations, seed, preset, torch_device, tile = _checked_run_settings(iterations, seed, preset, device, tile)
    fits = _checked_fits(fits)
    height, width = image.shape[:2]
    # One preset (one net) for every tile and fit, chosen for the whole image.
    settings = task_preset(preset, task, torch_device, height * width)
    net_pixels = settings.net.padded_side(height) * settings.net.padded_side(width)
    tiled = _tile_grid(settings.net, torch_device, height, width, tile) is not None
    fits = _fit_count(fits, preset, settings, torch_device, net_pixels, tiled)
    # One noise level for every fit and tile (the total-variation weight and the stopping
    # rule's discrepancy test), estimated in the whole image; the strength scales it (the fit
    # stops once it is that far from the input: sooner and smoother above 1, later below).
    noise_sigma = estimate_noise_sigma(image) * strength
    tv_weight = settings.total_variation_weight(noise_sigma) if settings.tv_weight else 0.0

    def fit_image(inputs, fit_seed, fit_progress, fit_cancel, fit_preview, fit_stats):
        (oriented,) = inputs
        grid = _tile_grid(settings.net, torch_device, *oriented.shape[:2], tile)
        if grid is None:
            return _denoise_window(task, label, oriented, settings, torch_device, iterations, fit_seed,
                                   fit_progress, fit_cancel, fit_preview, fit_stats, tv_weight, noise_sigma)

        def fit_window(crop, origin, tile_progress, tile_cancel, tile_preview, tile_stats):
            return _denoise_window(task, label, crop, settings, torch_device, iterations, fit_seed,
                                   tile_progress, tile_cancel, tile_preview, tile_stats, tv_weight, noise_sigma)

        return tiles.fit_tiles(oriented, fit_window, grid, progress=fit_progress, cancel_requested=fit_cancel,
                               preview=fit_preview, stats=fit_stats, label=label)

    return _averaged_fits(fit_image, (image,), fits, seed, label=label, progress=progress,
                          cancel_requested=cancel_requested, preview=preview, stats=stats,
                          side_by_side=_fits_side_by_side(fits, settings.net, torch_device, net_pixels, tiled))


# ---------------------------------------------------------------------------------------------
# Public tasks


def denoise(
    image: np.ndarray,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    preview: ImagePreview | None = None,
    stats: FitStats | None = None,
    tile: int | None = None,
    fits: int | None = None,
    strength: float = 1.0,
) -> np.ndarray:
    """Denoise ``image`` (float32 H×W×C in [0, 1]); the noise level need not be known.

    The paper's DIP setup: MSE to the noisy image, a perturbed input, the outputs' running
    average as the result. The image is reflect-padded to the net's size rule (the padding
    is outside the loss) and cropped back. ``strength`` scales the noise level measured in
    the image, which the automatic stop (``fast``/``quality``) and the total-variation weight
    use: above 1 the fit stops sooner (smoother), below 1 later (more texture and grain); a
    fixed ``iterations`` count or the ``paper`` preset's fixed run does not stop by it.
    Returns float32 H×W×C in [0, 1].
    """
    return _denoise_like("denoise", "DIP denoise", image, iterations, seed, device, preset,
                         progress, cancel_requested, preview, stats, tile, fits, strength)


def dejpeg(
    image: np.ndarray,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    preview: ImagePreview | None = None,
    stats: FitStats | None = None,
    tile: int | None = None,
    fits: int | None = None,
) -> np.ndarray:
    """Remove JPEG artefacts blindly (quality factor unknown): the paper's blind restoration.

    The net is fitted to the JPEG image itself; it reproduces the image's structure long
    before the blocking and ringing, and the run stops (automatically, or after
    ``iterations``) before it gets to them. Returns float32 H×W×C in [0, 1].
    """
    return _denoise_like("dejpeg", "DIP JPEG artefact removal", image, iterations, seed, device,
                         preset, progress, cancel_requested, preview, stats, tile, fits)


def inpaint(
    image: np.ndarray,
    hole: np.ndarray,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    preview: ImagePreview | None = None,
    stats: FitStats | None = None,
    tile: int | None = None,
    fits: int | None = None,
) -> np.ndarray:
    """Fill the ``hole`` pixels (bool H×W, True = fill) of ``image`` (float32 H×W×C in [0, 1]).

    Only a window around the hole is optimised: its bounding box plus a margin of
    max(16 px, half the box's larger side), grown to the net's size rule from real pixels
    where possible and reflect-padded otherwise. The loss covers the known pixels of that
    window. The returned image (and every preview and partial result) equals the input bit
    for bit outside the hole.
    """
    image = _checked_image(image)
    hole = _checked_hole(hole, image.shape[:2])
    iterations, seed, preset, torch_device, tile = _checked_run_settings(iterations, seed, preset, device, tile)
    fits = _checked_fits(fits)
    # The window is at most the image; its exact size depends on the net, so decide on the
    # hole's box with margins (what the window is grown from).
    box_rows, box_cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    box_pixels = (int(box_rows[-1] - box_rows[0]) + 1 + 2 * INPAINT_MIN_MARGIN) * (
        int(box_cols[-1] - box_cols[0]) + 1 + 2 * INPAINT_MIN_MARGIN)
    settings = task_preset(preset, "inpaint", torch_device, box_pixels)

    def fit_image(inputs, fit_seed, fit_progress, fit_cancel, fit_preview, fit_stats):
        oriented, oriented_hole = inputs
        return _inpaint_image(oriented, oriented_hole, settings, torch_device, iterations, fit_seed, tile,
                              fit_progress, fit_cancel, fit_preview, fit_stats)

    def keep_known(filled: np.ndarray) -> np.ndarray:
        # A mean of several fits is not bit-exact where they all kept the input.
        filled = np.array(filled, dtype=np.float32, copy=True)
        filled[~hole] = image[~hole]
        return filled

    window = _inpaint_window(hole, settings.net)
    window_height, window_width = window.y1 - window.y0, window.x1 - window.x0
    side = tiles.tile_side_for(settings.net, torch_device, hole.size, 1, tile)
    tiled = max(window_height, window_width) > side
    fits = _fit_count(fits, preset, settings, torch_device, window_height * window_width, tiled)
    side_by_side = _fits_side_by_side(fits, settings.net, torch_device, window_height * window_width, tiled)
    try:
        return keep_known(_averaged_fits(
            fit_image, (image, hole), fits, seed, label="DIP inpaint", progress=progress,
            cancel_requested=cancel_requested, preview=None if preview is None else (lambda so_far: preview(keep_known(so_far))),
            stats=stats, side_by_side=side_by_side))
    except Cancelled as cancelled:
        partial = cancelled.partial
        raise Cancelled(cancelled.message, keep_known(partial) if isinstance(partial, np.ndarray) else None) from None


def _inpaint_image(image: np.ndarray, hole: np.ndarray, settings: TaskPreset, torch_device: torch.device,
                   iterations: int | None, seed: int, tile: int | None,
                   progress: ProgressCallback | None, cancel_requested: CancelCallback | None,
                   preview: ImagePreview | None, stats: FitStats | None) -> np.ndarray:
    """One inpainting fit of the whole image: one window around the hole, or tiles."""
    window = _inpaint_window(hole, settings.net)
    height, width = image.shape[:2]
    side = tiles.tile_side_for(settings.net, torch_device, height * width, 1, tile)
    if window.y1 - window.y0 <= side and window.x1 - window.x0 <= side:
        return _inpaint_window_fit(image, hole, settings, torch_device, iterations, seed, progress,
                                   cancel_requested, preview, stats)

    # Scattered holes over a large area (text, scratches, missing pixels): tiles, each filling
    # its own holes from its own surroundings; tiles without a hole are left alone.
    grid = tiles.plan(height, width, side)
    for y, x in grid.boxes():
        tile_hole = hole[y:y + grid.tile_height, x:x + grid.tile_width]
        if tile_hole.any() and tile_hole.mean() > INPAINT_MAX_TILE_HOLE_FRACTION:
            raise BadInput(
                f"the hole is too large to fill in the memory available (about {tile_hole.mean():.0%} "
                f"of a {grid.tile_width}×{grid.tile_height} px tile is missing): select a smaller "
                "area, or close other programs, and try again")

    def fit_window(crop, origin, tile_progress, tile_cancel, tile_preview, tile_stats):
        y, x = origin
        crop_hole = hole[y:y + grid.tile_height, x:x + grid.tile_width]
        return _inpaint_window_fit(crop, crop_hole, settings, torch_device, iterations, seed,
                                   tile_progress, tile_cancel, tile_preview, tile_stats)

    def skip(y: int, x: int) -> bool:
        return not hole[y:y + grid.tile_height, x:x + grid.tile_width].any()

    result = tiles.fit_tiles(image, fit_window, grid, skip=skip, progress=progress,
                             cancel_requested=cancel_requested, preview=preview, stats=stats,
                             label="DIP inpaint")
    # The blend weights sum to 1 only up to rounding: known pixels come back bit for bit.
    result[~hole] = image[~hole]
    return result


def _inpaint_window_fit(image: np.ndarray, hole: np.ndarray, settings: TaskPreset,
                        torch_device: torch.device, iterations: int | None, seed: int,
                        progress: ProgressCallback | None, cancel_requested: CancelCallback | None,
                        preview: ImagePreview | None, stats: FitStats | None) -> np.ndarray:
    """Inpaint ``image`` (the image, or one tile of it) on the window around ``hole``."""
    config = settings.net
    window = _inpaint_window(hole, config)
    crop = image[window.y0 : window.y1, window.x0 : window.x1]
    crop_hole = hole[window.y0 : window.y1, window.x0 : window.x1]
    padded = np.pad(crop, (window.pad_y, window.pad_x, (0, 0)), mode="reflect")
    # Padding is not evidence either: only real known pixels enter the loss.
    known = np.pad(~crop_hole, (window.pad_y, window.pad_x), mode="constant", constant_values=False)
    top, left = window.pad_y[0], window.pad_x[0]

    def finish(output: np.ndarray) -> np.ndarray:
        filled = output[top : top + crop.shape[0], left : left + crop.shape[1]]
        result = image.copy()
        result_crop = result[window.y0 : window.y1, window.x0 : window.x1]
        result_crop[crop_hole] = filled[crop_hole]
        return result

    weight = known[:, :, None].astype(np.float32)
    objective = _weighted_mse(_to_tensor(padded, torch_device), _to_tensor(weight, torch_device))
    return _fit_task(task="inpaint", objective=objective, output_shape=padded.shape,
                     settings=settings, device=torch_device, iterations=iterations, seed=seed,
                     finish=finish, progress=progress, cancel_requested=cancel_requested,
                     preview=preview, stats=stats, label="DIP inpaint",
                     # The rule watches the hole: the known pixels settle long before it.
                     stop_region=np.pad(crop_hole, (window.pad_y, window.pad_x), mode="constant"))


def _sr_padded_side(side: int, scale: int, config: NetConfig) -> int:
    """Smallest low-resolution side >= ``side`` whose ×``scale`` image meets the size rule."""
    multiple = max(1, config.size_multiple // math.gcd(config.size_multiple, scale))
    padded = -(-side // multiple) * multiple
    while padded * scale < config.min_side:
        padded += multiple
    return padded


def super_resolve(
    image: np.ndarray,
    scale: int,
    *,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str = "auto",
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    preview: ImagePreview | None = None,
    stats: FitStats | None = None,
    tile: int | None = None,
    fits: int | None = None,
) -> np.ndarray:
    """Upscale ``image`` (float32 h×w×C in [0, 1]) by ``scale`` (2, 4 or 8) with the paper's
    super-resolution prior: the net makes the high-resolution image, and the loss is the
    MSE between its Lanczos-2 downsampling (`Lanczos2Downsampler`, fixed) and ``image``.
    The low-resolution image is reflect-padded so its ×scale size meets the net's size rule
    (padding outside the loss). Returns float32 (h·scale)×(w·scale)×C in [0, 1].
    """
    image = _checked_image(image)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in SR_SCALES:
        raise BadInput(f"scale must be one of {', '.join(map(str, SR_SCALES))}, got {scale!r}")
    scale = int(scale)
    iterations, seed, preset, torch_device, tile = _checked_run_settings(iterations, seed, preset, device, tile)
    fits = _checked_fits(fits)
    height, width = image.shape[:2]
    settings = task_preset(preset, "super_resolve", torch_device, height * width * scale * scale)
    label = f"DIP super-resolution ×{scale}"

    def fit_image(inputs, fit_seed, fit_progress, fit_cancel, fit_preview, fit_stats):
        (oriented,) = inputs
        grid = _tile_grid(settings.net, torch_device, *oriented.shape[:2], tile, scale)
        if grid is None:
            return _super_resolve_window(oriented, scale, settings, torch_device, iterations, fit_seed,
                                         fit_progress, fit_cancel, fit_preview, fit_stats)

        def fit_window(crop, origin, tile_progress, tile_cancel, tile_preview, tile_stats):
            return _super_resolve_window(crop, scale, settings, torch_device, iterations, fit_seed,
                                         tile_progress, tile_cancel, tile_preview, tile_stats)

        from engine.onnx.tiling import resize_alpha  # Pillow only

        # Where no tile is fitted yet (previews, a cancel's partial result): bicubic.
        bicubic = np.concatenate([resize_alpha(oriented[:, :, c:c + 1], scale)
                                  for c in range(oriented.shape[2])], axis=2)
        return tiles.fit_tiles(oriented, fit_window, grid, scale=scale, base=bicubic, progress=fit_progress,
                               cancel_requested=fit_cancel, preview=fit_preview, stats=fit_stats, label=label)

    net_pixels = _sr_padded_side(height, scale, settings.net) * _sr_padded_side(width, scale, settings.net) * scale ** 2
    tiled = _tile_grid(settings.net, torch_device, height, width, tile, scale) is not None
    fits = _fit_count(fits, preset, settings, torch_device, net_pixels, tiled)
    return _averaged_fits(fit_image, (image,), fits, seed, label=label, progress=progress,
                          cancel_requested=cancel_requested, preview=preview, stats=stats,
                          side_by_side=_fits_side_by_side(fits, settings.net, torch_device, net_pixels, tiled))


def _super_resolve_window(image: np.ndarray, scale: int, settings: TaskPreset, torch_device: torch.device,
                          iterations: int | None, seed: int, progress: ProgressCallback | None,
                          cancel_requested: CancelCallback | None, preview: ImagePreview | None,
                          stats: FitStats | None) -> np.ndarray:
    """Super-resolve one window (the image, or one tile of it)."""
    config = settings.net
    height, width, channels = image.shape
    padded_h, padded_w = _sr_padded_side(height, scale, config), _sr_padded_side(width, scale, config)
    pad_y = ((padded_h - height) // 2, padded_h - height - (padded_h - height) // 2)
    pad_x = ((padded_w - width) // 2, padded_w - width - (padded_w - width) // 2)
    padded = np.pad(image, (pad_y, pad_x, (0, 0)), mode="reflect")
    known = np.zeros((padded_h, padded_w, 1), dtype=np.float32)
    known[pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width] = 1.0

    downsample = Lanczos2Downsampler(scale, channels).to(torch_device)
    low_resolution_loss = _weighted_mse(_to_tensor(padded, torch_device), _to_tensor(known, torch_device))

    def objective(output: torch.Tensor) -> torch.Tensor:
        return low_resolution_loss(downsample(output))

    top, left = pad_y[0] * scale, pad_x[0] * scale

    def finish(output: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(output[top : top + height * scale, left : left + width * scale])

    return _fit_task(task="super_resolve", objective=objective,
                     output_shape=(padded_h * scale, padded_w * scale, channels), settings=settings,
                     device=torch_device, iterations=iterations, seed=seed, finish=finish,
                     progress=progress, cancel_requested=cancel_requested, preview=preview,
                     stats=stats, label=f"DIP super-resolution ×{scale}")
