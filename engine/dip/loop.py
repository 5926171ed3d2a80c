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

Performance notes: the loop never waits for the device inside an iteration (no ``.item()`` /
``.cpu()`` per step); the loss is read back only when progress is reported (at most every
``report_interval_s``), and the running average is updated in place on the device.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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
CancelCallback = Callable[[], bool]
# Gets the averaged outputs so far (name → H×W×C float32 in [0, 1]) for a live preview.
PreviewCallback = Callable[[dict[str, np.ndarray]], None]

INPUT_NOISE_SCALE = 0.1  # the paper's input: uniform noise in [0, 0.1)
CANCEL_CHECK_INTERVAL_S = 0.1


def cpu_threads_for_fit() -> int:
    """Intra-op threads for a CPU run: every usable CPU but one, or torch's own count when
    the user set OMP_NUM_THREADS (torch already follows it).

    Why leave one free: the net is many small ops, each ending in a thread barrier. When
    another busy process takes one of our cores, every barrier waits for a descheduled
    worker: on this 2-core machine with one busy neighbour, a 64² light-net iteration took
    over 3 s with 2 threads against ~25 ms with 1 (16 ms with 2 on an idle machine). The
    spare core also keeps GIMP's UI responsive during a run of several minutes.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), available_cpu_threads() - 1))


@contextlib.contextmanager
def _torch_settings(device: torch.device) -> Iterator[None]:
    """Per-run torch settings, restored afterwards so other code in the process is unaffected."""
    threads = torch.get_num_threads()
    cudnn_flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads_for_fit())
        if device.type == "cuda":
            # Reproducible runs: fixed conv algorithms instead of benchmarked, racy ones.
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_flags


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
    averaged outputs so far in ``partial`` (None before the first iteration).
    """
    height, width = size
    device = torch.device(device)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if not 0.0 <= ema < 1.0:
        raise ValueError("ema must be in [0, 1)")
    if seed < 0:
        raise ValueError("seed must be non-negative")
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

    def check_cancel() -> None:
        if cancel_requested is not None and cancel_requested():
            raise Cancelled(partial=_to_numpy(averaged) if averaged else None)

    transforms = _DIHEDRAL if height == width else [t for t in _DIHEDRAL if not t[0]]
    init_seed, input_seed, perturb_seed, augment_seed = _derived_seeds(seed, 4)
    with _torch_settings(device), torch.enable_grad():
        check_cancel()
        report(0.0, f"{label}: starting")

        # Initialise on the CPU from a private generator state: identical weights on every
        # device, and the caller's global RNG stream is left untouched.
        nets: dict[str, torch.nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(init_seed)
            for generator in generators:
                nets[generator.name] = build_net(generator.net, generator.channels).to(device).train()

        input_generator = torch.Generator().manual_seed(input_seed)
        inputs = {
            g.name: torch.rand((1, g.net.input_channels, height, width), generator=input_generator)
            .mul_(INPUT_NOISE_SCALE).to(device)
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
        last_loss: torch.Tensor | None = None
        now = time.monotonic()
        last_report = last_cancel_check = last_preview = now

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
                if transform is not None:
                    outputs[name] = _invert(transform, net(_apply(transform, net_input)))
                else:
                    outputs[name] = net(net_input)
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

            now = time.monotonic()
            if now - last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
                last_cancel_check = now
                check_cancel()
            if now - last_report >= report_interval_s and iteration < iterations:
                last_report = now
                # The only host-device sync during the run, a few times per second at most.
                report(
                    iteration / iterations,
                    f"{label}: iteration {iteration}/{iterations}, loss {last_loss.item():.5f}",
                )
            if preview is not None and now - last_preview >= preview_interval_s and iteration < iterations:
                last_preview = now
                preview(_to_numpy(averaged))

        assert last_loss is not None
        results = _to_numpy(averaged, clip=False)
        for name, result in results.items():
            if not np.isfinite(result).all():
                raise EngineError(f"{label}: the optimisation diverged (non-finite output {name!r})")
        report(1.0, f"{label}: done, final loss {last_loss.item():.5f}")
        return {name: np.clip(result, 0.0, 1.0) for name, result in results.items()}
