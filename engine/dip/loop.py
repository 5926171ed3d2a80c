"""The one Deep Image Prior optimisation loop; every DIP task is an objective handed to it.

`fit_generators` fits one or more *generators* (a skip net fed its own fixed noise image)
jointly to one objective over their outputs: single-image DIP tasks use one generator
(`fit` is that case), Double-DIP couples several (layers + mixing mask).

A DIP run fits a randomly initialised generator net, fed a fixed noise image, to an objective
on its output (e.g. "match the noisy image", "match the known pixels"). The net's structure
fits natural images long before it fits noise, so the output part-way through is the restored
image. Following the paper: uniform input noise ×0.1, a fresh Gaussian perturbation of the
input every iteration (``reg_noise_std``), Adam, and an exponential moving average of the
outputs (0.99) as the result.

Automatic stopping (`StoppingRule`): the averaged output's PSNR rises, peaks and then falls
by several dB as the net starts fitting the noise. The rule watches how much the averaged
output still moves and returns the averaged output of the moment it stopped settling.

Performance notes: the loop never waits for the device inside an iteration (no ``.item()`` /
``.cpu()`` per step); the loss is read back only when progress is reported (at most every
``report_interval_s``), the running average is updated in place on the device, and the
stopping rule's state lives on the device and is read back one check late (see `_LaggedRead`).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engine.errors import Cancelled, EngineError
from engine.system import available_cpu_threads

from .nets import NetConfig, build_net

# Maps the net output (1×C×H×W, values in [0, 1]) to a scalar loss tensor.
Objective = Callable[[torch.Tensor], torch.Tensor]
# Maps every generator's output (name → 1×C×H×W in [0, 1]) to a scalar loss tensor. May be a
# torch.nn.Module: its own parameters (e.g. an airlight colour) are optimised with the nets.
MultiObjective = Callable[[dict[str, torch.Tensor]], torch.Tensor]
ProgressCallback = Callable[[float, str], None]
MixedPrecision = Literal["bf16"]
CancelCallback = Callable[[], bool]
# Gets the averaged outputs so far (name → H×W×C float32 in [0, 1]) for a live preview.
PreviewCallback = Callable[[dict[str, np.ndarray]], None]

INPUT_NOISE_SCALE = 0.1  # the paper's input: uniform noise in [0, 0.1)
CANCEL_CHECK_INTERVAL_S = 0.1


def cpu_threads_for_fit() -> int:
    """Intra-op threads for a CPU run: every usable CPU but one, or torch's own count when
    the user set OMP_NUM_THREADS (torch already follows it); the count `pinned_cpu_threads`
    set while fits run side by side.

    Why leave one free: the net is many small ops, each ending in a thread barrier. When
    another busy process takes one of our cores, every barrier waits for a descheduled
    worker: on this 2-core machine with one busy neighbour, a 64² light-net iteration took
    over 3 s with 2 threads against ~25 ms with 1 (16 ms with 2 on an idle machine). The
    spare core also keeps GIMP's UI responsive during a run of several minutes.
    """
    if _pinned_threads is not None:
        return _pinned_threads
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), available_cpu_threads() - 1))


def _cpu_cores() -> int:
    """Cores fits may share: all usable, or OMP_NUM_THREADS (torch follows it) when set."""
    return torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else available_cpu_threads()


def cpu_fit_plan(fits: int) -> tuple[int, int]:
    """(fits run side by side, intra-op threads of each) for ``fits`` independent CPU fits.

    Separate fits share no thread barrier, so fits side by side on one thread each use every
    core without the stall `cpu_threads_for_fit` avoids, and small convs scale far better
    over fits than over threads (~threads^0.6): two 128² light-net fits side by side took
    2.68 s against 5.74 s one after the other on the 2-core machine. The cores (capped by
    OMP_NUM_THREADS when set) are shared out evenly; a single fit keeps `cpu_threads_for_fit`.
    """
    cores = _cpu_cores()
    side_by_side = max(1, min(fits, cores))
    if side_by_side == 1:
        return 1, cpu_threads_for_fit()
    return side_by_side, max(1, cores // side_by_side)


def spare_core_fits() -> int:
    """Fits of ``auto`` on a CPU: 2 when one fit leaves at least as many cores idle as it
    uses — a second fit then runs beside it at no cost in time (a 2-core machine: one fit runs
    on one core, see `cpu_threads_for_fit`) — else 1."""
    cores = _cpu_cores()
    threads = cpu_threads_for_fit()
    return 2 if cores - threads >= threads else 1


# Set while fits run side by side (`pinned_cpu_threads`): their runs leave the thread count alone.
_pinned_threads: int | None = None
# Net initialisation reseeds torch's global generator (inside fork_rng): fits running side by
# side in threads take turns there, or one would draw the other's weights.
_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def pinned_cpu_threads(threads: int) -> Iterator[None]:
    """Intra-op threads for every run inside (torch's count is process-wide: runs in several
    threads must not each set and restore it)."""
    global _pinned_threads
    saved, previous = torch.get_num_threads(), _pinned_threads
    torch.set_num_threads(threads)
    _pinned_threads = threads
    try:
        yield
    finally:
        _pinned_threads = previous
        torch.set_num_threads(saved)


@contextlib.contextmanager
def _torch_settings(device: torch.device) -> Iterator[None]:
    """Per-run torch settings, restored afterwards so other code in the process is unaffected."""
    threads = torch.get_num_threads()
    cudnn_flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if device.type == "cpu" and _pinned_threads is None:
            torch.set_num_threads(cpu_threads_for_fit())
        if device.type == "cuda":
            # Reproducible runs: fixed conv algorithms instead of benchmarked, racy ones.
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        if _pinned_threads is None:
            torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_flags


@dataclass(frozen=True)
class StoppingRule:
    """Stop once the averaged output has stopped settling; return it as it was then.

    Every ``check_every`` iterations the loop measures how far the averaged outputs moved
    since the previous check, relative to their size: ‖A_t − A_{t−k}‖ / ‖A_t‖ over all
    generators (one reduction on the device; optionally over a region only, the loop's
    ``stop_weight``). While the image forms this change falls
    steeply; once the net has fitted the image and turns to fitting noise the average keeps
    drifting at a constant pace and the change levels off — where the averaged output's PSNR
    peaks. The change is noisy at ±3 % from check to check and falls only slowly near the
    peak, hence a small required drop and a patience of several checks. Measured on F16
    σ=25 crops with the light CPU net (lr 0.01): the kept output was 0.06 dB (64²) and
    0.04 dB (128²) below the best averaged output of a 1500 / 2600-iteration run (see
    README, "Automatic stopping").

    A check "improves" when its change is below ``1 - min_relative_drop`` times the lowest so
    far; the averaged outputs of the last improving check are kept (a device-side copy). The
    run stops after ``patience`` checks without improvement (never before ``min_iterations``)
    and returns the kept outputs. ``iterations`` of the loop is then the maximum.

    ``settled_below`` (optional) also ends the run at the first check whose change is below
    it, returning that check's outputs. It is for objectives without a noise floor (JPEG
    artefacts): there the change keeps falling smoothly past the PSNR peak and never levels
    off, so "has it stopped moving" needs a threshold. ``patience=None`` turns the plateau
    test off (the run ends settled or at its maximum): inpainting's change can pause while
    new detail forms in the hole, long before the hole's PSNR peaks.

    ``discrepancy_factor`` (optional; the loop then needs a `NoisyTarget`) also ends the run at
    the first check where the averaged output's RMS residual to the noisy input is at most
    this × the input's estimated noise level (Morozov's discrepancy principle): a denoised
    image should differ from its input by about the noise, and once the average is closer
    than that it is fitting the noise. At the averaged output's PSNR peak the ratio was
    0.92–0.98 (σ 15–50, white and signal-dependent noise, three photos, three seeds, 64² to
    256²; nearer 1 on larger images, see `presets.DENOISE_STOP`); the plateau test stays as
    the fallback for noise the estimate misjudges (README, "Automatic stopping").
    """

    check_every: int = 25
    # None: no plateau test, only ``settled_below`` (or the maximum) ends the run.
    patience: int | None = 8
    min_relative_drop: float = 0.01
    min_iterations: int = 200
    settled_below: float | None = None
    discrepancy_factor: float | None = None

    def __post_init__(self) -> None:
        if self.check_every < 1 or (self.patience is not None and self.patience < 1) or self.min_iterations < 0:
            raise ValueError("check_every and patience must be positive, min_iterations non-negative")
        if self.patience is None and self.settled_below is None and self.discrepancy_factor is None:
            raise ValueError("a rule without a plateau test (patience None) needs settled_below "
                             "or discrepancy_factor")
        if not 0.0 <= self.min_relative_drop < 1.0:
            raise ValueError("min_relative_drop must be in [0, 1)")
        if self.settled_below is not None and not self.settled_below > 0.0:
            raise ValueError("settled_below must be positive")
        if self.discrepancy_factor is not None and not self.discrepancy_factor > 0.0:
            raise ValueError("discrepancy_factor must be positive")


@dataclass(frozen=True)
class NoisyTarget:
    """What a `StoppingRule`'s discrepancy test compares with: the noisy input ``image``
    (1×C×H×W on the loop's device, in the frame of generator ``output``'s output), where it is
    evidence (``weight``, 1×1×H×W, e.g. 0 on a mirrored border; None: everywhere) and the
    noise level estimated in it (standard deviation, same units as the image)."""

    image: torch.Tensor
    noise_sigma: float
    weight: torch.Tensor | None = None
    output: str = "image"


@dataclass
class FitStats:
    """Filled in by `fit_generators` when passed as ``stats``: how the run ended."""

    iterations_run: int = 0
    stopped_early: bool = False
    # Iteration whose averaged output was returned (= iterations_run without early stopping).
    result_iteration: int = 0
    seconds: float = 0.0
    # Tiles fitted (`tiles.fit_tiles` adds the tiles' iterations and seconds up).
    tiles: int = 1
    # Independent fits averaged (`tasks._averaged_fits` adds their iterations up; seconds are
    # the wall time) and how many of them ran at once.
    fits: int = 1
    side_by_side: int = 1
    # Set to a list to collect each fit's own (result upright, before averaging; seconds):
    # benchmarks score the mean of the first k fits from one run.
    fit_results: list | None = None

    def add(self, part: "FitStats") -> None:
        """Count ``part`` (one tile's or one fit's run) into this total."""
        self.tiles += part.tiles
        self.stopped_early = self.stopped_early and part.stopped_early
        self.iterations_run += part.iterations_run
        self.result_iteration += part.result_iteration
        self.seconds += part.seconds


class _LaggedRead:
    """Reads a small device tensor one check late: a non-blocking copy into pinned host
    memory now, looked at next time (long finished by then), so the host never waits for
    the iterations still queued on a GPU. On the CPU the value is simply copied."""

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, object] | None = None

    def push(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._pending = (tensor.clone(), None)

    def pop(self) -> int | None:
        if self._pending is None:
            return None
        host, event = self._pending
        if event is not None:
            event.synchronize()  # type: ignore[attr-defined]
        self._pending = None
        return int(host.item())


class _StopMonitor:
    """Device-side state of a `StoppingRule` for one run."""

    def __init__(self, rule: StoppingRule, averaged: dict[str, torch.Tensor],
                 weight: torch.Tensor | None = None, noisy: NoisyTarget | None = None) -> None:
        self.rule = rule
        self.weight = weight
        # The discrepancy test's input, when the rule has one.
        self.noisy = noisy if rule.discrepancy_factor is not None else None
        if self.noisy is not None:
            # Mean over the evidence's pixels and channels: the denominator of the RMS.
            image, weight = self.noisy.image, self.noisy.weight
            evidence = weight.sum() if weight is not None else float(image.shape[-2] * image.shape[-1])
            self.residual_count = evidence * image.shape[1]
            self.residual_bound = rule.discrepancy_factor * self.noisy.noise_sigma
        self.last = {name: a.clone() for name, a in averaged.items()}
        self.kept = {name: a.clone() for name, a in averaged.items()}
        any_tensor = next(iter(averaged.values()))
        self.lowest = torch.full((), float("inf"), device=any_tensor.device)
        self.checks_since_kept = torch.zeros((), dtype=torch.int64, device=any_tensor.device)
        self.kept_iteration = torch.zeros((), dtype=torch.int64, device=any_tensor.device)
        self.settled = torch.zeros((), dtype=torch.bool, device=any_tensor.device)
        self.reader = _LaggedRead()

    def check(self, averaged: dict[str, torch.Tensor], iteration: int) -> bool:
        """Update the state with this check; True when the run should stop (decided on the
        previous check's state, read back now)."""
        w = self.weight if self.weight is not None else 1.0
        moved = sum(((averaged[n] - self.last[n]).square() * w).sum() for n in averaged)
        size = sum((a.square() * w).sum() for a in averaged.values())
        change = torch.sqrt(moved / size.clamp_min(1e-12))
        for name, a in averaged.items():
            self.last[name].copy_(a)
        improved = change < self.lowest * (1.0 - self.rule.min_relative_drop)
        settled_now = self._settled(change, averaged)
        if settled_now is not None:
            settled_now = settled_now & (iteration >= self.rule.min_iterations)
            # The first settled check is kept and nothing after it (the run is stopping).
            improved = (improved & ~self.settled) | (settled_now & ~self.settled)
            self.settled = self.settled | settled_now
        self.lowest = torch.where(improved, change, self.lowest)
        self.checks_since_kept = torch.where(improved, torch.zeros_like(self.checks_since_kept),
                                             self.checks_since_kept + 1)
        self.kept_iteration = torch.where(improved, torch.full_like(self.kept_iteration, iteration),
                                          self.kept_iteration)
        for name, a in averaged.items():
            torch.where(improved, a, self.kept[name], out=self.kept[name])
        # One small read per check: checks since the kept one, or -1 once settled.
        state = self.reader.pop()
        self.reader.push(torch.where(self.settled, -1, self.checks_since_kept))
        if state is None:
            return False
        plateau = self.rule.patience is not None and state >= self.rule.patience
        return state == -1 or (plateau and iteration >= self.rule.min_iterations)

    def _settled(self, change: torch.Tensor, averaged: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Device-side bool: does this check pass the rule's settle tests (None: it has none)?"""
        settled: torch.Tensor | None = None
        if self.rule.settled_below is not None:
            settled = change < self.rule.settled_below
        if self.noisy is not None:
            noisy = self.noisy
            squared = (averaged[noisy.output] - noisy.image).square()
            if noisy.weight is not None:
                squared = squared * noisy.weight
            close = torch.sqrt(squared.sum() / self.residual_count) <= self.residual_bound
            settled = close if settled is None else settled | close
        return settled

    def best(self, averaged: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int | None]:
        """The kept outputs and their iteration, or the current ones (None) when the last
        check improved (the current ones are newer and at least as settled)."""
        if int(self.checks_since_kept.item()) == 0 and not bool(self.settled.item()):
            return averaged, None
        return self.kept, int(self.kept_iteration.item())


@dataclass(frozen=True)
class Generator:
    """One DIP of a run: a net of shape ``net`` producing ``channels`` channels, named ``name``
    in the objective's input and in the result."""

    name: str
    net: NetConfig
    channels: int


# The 8 symmetries of the square as (transpose, flip H, flip W); non-square inputs use the 4
# without a transpose. Used for Double-DIP's augmentation.
_DIHEDRAL = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


def _apply(transform: tuple[bool, bool, bool], x: torch.Tensor) -> torch.Tensor:
    transpose, flip_h, flip_w = transform
    dims = [d for d, on in ((2, flip_h), (3, flip_w)) if on]
    x = torch.flip(x, dims) if dims else x
    return x.transpose(2, 3) if transpose else x


def _invert(transform: tuple[bool, bool, bool], x: torch.Tensor) -> torch.Tensor:
    transpose, flip_h, flip_w = transform
    x = x.transpose(2, 3) if transpose else x
    dims = [d for d, on in ((2, flip_h), (3, flip_w)) if on]
    return torch.flip(x, dims) if dims else x


def _to_numpy(averaged: dict[str, torch.Tensor], clip: bool = True) -> dict[str, np.ndarray]:
    arrays = {name: t[0].permute(1, 2, 0).contiguous().to("cpu", torch.float32).numpy()
              for name, t in averaged.items()}
    return {name: np.clip(a, 0.0, 1.0) for name, a in arrays.items()} if clip else arrays


def _derived_seeds(seed: int, count: int) -> list[int]:
    # Independent streams for init, input noise and perturbations from one user seed.
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64) >> 1]


def fit(
    objective: Objective,
    net_config: NetConfig,
    output_shape: tuple[int, int, int],
    **options,
) -> np.ndarray:
    """Fit one fresh skip net to ``objective``; return its averaged output (H×W×C float32).

    The single-generator case of `fit_generators` (same options). On cancel, the raised
    `Cancelled` carries the averaged output so far as an array in ``partial``.
    """
    height, width, channels = output_shape
    generator = Generator("image", net_config, channels)
    try:
        result = fit_generators(lambda outputs: objective(outputs["image"]), [generator],
                                (height, width), **options)
    except Cancelled as cancelled:
        partial = cancelled.partial["image"] if isinstance(cancelled.partial, dict) else None
        raise Cancelled(cancelled.message, partial) from None
    return result["image"]


def fit_generators(
    objective: MultiObjective,
    generators: Sequence[Generator],
    size: tuple[int, int],
    *,
    iterations: int,
    device: torch.device | str,
    seed: int = 0,
    lr: float = 0.01,
    reg_noise_std: float = 1.0 / 30.0,
    ema: float = 0.99,
    augment: bool = False,
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    preview: PreviewCallback | None = None,
    preview_interval_s: float = 5.0,
    label: str = "Deep Image Prior",
    report_interval_s: float = 0.5,
    stop: StoppingRule | None = None,
    stats: FitStats | None = None,
    mixed_precision: MixedPrecision | None = None,
    channels_last: bool = False,
    stop_weight: torch.Tensor | None = None,
    stop_noisy: NoisyTarget | None = None,
) -> dict[str, np.ndarray]:
    """Fit fresh skip nets (one per generator) jointly to ``objective``; return their
    averaged outputs (name → H×W×C float32 in [0, 1]).

    ``size`` is (H, W) of every output; it must satisfy each net's size rule (see
    `NetConfig`). With ``ema`` in (0, 1) a result is the exponential moving average of that
    generator's outputs (the first output starts the average); ``ema=0`` returns the last
    output. ``augment`` draws one of the image's symmetries (flips, and transposes when
    square) per iteration, applies it to every net input and undoes it on the outputs, so the
    objective always sees the image's own orientation (Double-DIP's augmentation). The same
    ``seed`` on the same device and torch build gives an identical result (same thread count
    too on the CPU: the conv reductions split work by thread).
    ``progress(fraction, text)`` gets 0.0 first, strictly increasing fractions at most once
    per ``report_interval_s``, and 1.0 last. ``preview(outputs)`` gets the averaged outputs
    about every ``preview_interval_s`` (the only other host copy). ``cancel_requested()`` is
    polled about every 0.1 s; when it returns True, `Cancelled` is raised carrying the
    averaged outputs so far in ``partial`` (None before the first iteration; with ``stop``,
    the outputs the rule would return now).
    With ``stop`` (a `StoppingRule`), ``iterations`` is the maximum and the run may end
    earlier, returning the averaged outputs of the check where they stopped settling.
    ``stats`` (a `FitStats`), if given, is filled in with how the run ended.
    ``stop_weight`` (1×1×H×W, on ``device``) restricts the rule's change measure to where it
    is non-zero (inpainting: the hole, where the result is; the known pixels settle early).
    ``stop_noisy`` (a `NoisyTarget`) is what a rule's ``discrepancy_factor`` compares with.
    ``mixed_precision="bf16"`` runs the nets' forward passes under autocast in bfloat16 (on
    any device; the objective, the gradients' optimiser state and the averages stay float32);
    ``channels_last`` stores the nets and their inputs in NHWC memory format. Both are speed
    settings whose effect on PSNR is per device and net (see `presets.TaskPreset`).
    """
    height, width = size
    device = torch.device(device)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if not 0.0 <= ema < 1.0:
        raise ValueError("ema must be in [0, 1)")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    if mixed_precision not in (None, "bf16"):
        # fp16 would need a GradScaler, whose step reads an inf flag back every iteration.
        raise ValueError(f"mixed_precision must be None or 'bf16', got {mixed_precision!r}")
    if stop is not None and stop.discrepancy_factor is not None and stop_noisy is None:
        raise ValueError("a stopping rule with a discrepancy_factor needs stop_noisy")
    if not generators or len({g.name for g in generators}) != len(generators):
        raise ValueError("generators must be non-empty with distinct names")
    for generator in generators:
        config = generator.net
        for side in (height, width):
            if side % config.size_multiple or side < config.min_side:
                raise ValueError(
                    f"net input {height}×{width} breaks the size rule of {generator.name!r}: sides "
                    f"must be multiples of {config.size_multiple} and at least {config.min_side}"
                )

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    averaged: dict[str, torch.Tensor] = {}
    monitor: _StopMonitor | None = None
    started = time.monotonic()

    def check_cancel() -> None:
        if cancel_requested is not None and cancel_requested():
            if not averaged:
                raise Cancelled(partial=None)
            best = monitor.best(averaged)[0] if monitor is not None else averaged
            raise Cancelled(partial=_to_numpy(best))

    def progress_text(iteration: int) -> str:
        if stop is None:
            return f"{label}: iteration {iteration}/{iterations}"
        return f"{label}: iteration {iteration} (stops when settled, at most {iterations})"

    transforms = _DIHEDRAL if height == width else [t for t in _DIHEDRAL if not t[0]]
    init_seed, input_seed, perturb_seed, augment_seed = _derived_seeds(seed, 4)
    with _torch_settings(device), torch.enable_grad():
        check_cancel()
        report(0.0, f"{label}: starting")

        # Initialise on the CPU from a private generator state: identical weights on every
        # device, and the caller's global RNG stream is left untouched.
        nets: dict[str, torch.nn.Module] = {}
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(init_seed)
            for generator in generators:
                nets[generator.name] = build_net(generator.net, generator.channels).to(device).train()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            nets = {name: net.to(memory_format=memory_format) for name, net in nets.items()}

        input_generator = torch.Generator().manual_seed(input_seed)
        inputs = {
            g.name: torch.rand((1, g.net.input_channels, height, width), generator=input_generator)
            .mul_(INPUT_NOISE_SCALE).to(device).contiguous(memory_format=memory_format)
            for g in generators
        }
        perturbed = {name: torch.empty_like(x) for name, x in inputs.items()}
        perturb_generator = torch.Generator(device=device).manual_seed(perturb_seed)
        augment_rng = np.random.default_rng(augment_seed)

        parameters = [p for net in nets.values() for p in net.parameters()]
        if isinstance(objective, torch.nn.Module):
            objective.to(device)
            parameters += [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=lr)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mixed_precision == "bf16"
                    else contextlib.nullcontext())
        last_loss: torch.Tensor | None = None
        now = time.monotonic()
        last_report = last_cancel_check = last_preview = now
        stopped_at: int | None = None

        for iteration in range(1, iterations + 1):
            transform = transforms[augment_rng.integers(len(transforms))] if augment else None
            outputs: dict[str, torch.Tensor] = {}
            for name, net in nets.items():
                net_input = inputs[name]
                if reg_noise_std > 0:
                    # In place into a buffer owned by the run: no allocation per iteration.
                    buffer = perturbed[name]
                    buffer.normal_(0.0, reg_noise_std, generator=perturb_generator).add_(net_input)
                    net_input = buffer
                with autocast:
                    output = net(_apply(transform, net_input)) if transform is not None else net(net_input)
                # The objective and the average see float32 whatever the nets computed in.
                output = output.float()
                outputs[name] = _invert(transform, output) if transform is not None else output
            loss = objective(outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # The average follows the outputs the loss saw (the perturbed ones), as in the
            # paper; it costs no extra forward pass.
            for name, output in outputs.items():
                detached = output.detach()
                if name not in averaged:
                    averaged[name] = detached.clone()  # owned: updated in place from here on
                elif ema == 0.0:
                    averaged[name].copy_(detached)
                else:
                    averaged[name].lerp_(detached, 1.0 - ema)
            last_loss = loss.detach()

            if stop is not None and iteration % stop.check_every == 0:
                if monitor is None:
                    monitor = _StopMonitor(stop, averaged, stop_weight, stop_noisy)
                elif monitor.check(averaged, iteration):
                    stopped_at = iteration
                    break

            now = time.monotonic()
            if now - last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
                last_cancel_check = now
                check_cancel()
            if now - last_report >= report_interval_s and iteration < iterations:
                last_report = now
                # The only host-device sync during the run, a few times per second at most.
                report(iteration / iterations, f"{progress_text(iteration)}, loss {last_loss.item():.5f}")
            if preview is not None and now - last_preview >= preview_interval_s and iteration < iterations:
                last_preview = now
                preview(_to_numpy(averaged))

        assert last_loss is not None
        iterations_run = stopped_at or iterations
        chosen, chosen_iteration = monitor.best(averaged) if monitor is not None else (averaged, None)
        results = _to_numpy(chosen, clip=False)
        for name, result in results.items():
            if not np.isfinite(result).all():
                raise EngineError(f"{label}: the optimisation diverged (non-finite output {name!r})")
        if stats is not None:
            stats.iterations_run = iterations_run
            stats.stopped_early = stopped_at is not None
            stats.result_iteration = chosen_iteration or iterations_run
            stats.seconds = time.monotonic() - started
        ending = (f"settled, stopped after {iterations_run} iterations" if stopped_at is not None
                  else f"done after {iterations_run} iterations")
        report(1.0, f"{label}: {ending}, final loss {last_loss.item():.5f}")
        return {name: np.clip(result, 0.0, 1.0) for name, result in results.items()}
