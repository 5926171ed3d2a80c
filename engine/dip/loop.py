"""The one Deep Image Prior optimisation loop; every DIP task is an objective handed to `fit`.

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
from collections.abc import Callable, Iterator

import numpy as np
import torch

from engine.errors import Cancelled, EngineError
from engine.system import available_cpu_threads

from .nets import NetConfig, build_net

# Maps the net output (1×C×H×W, values in [0, 1]) to a scalar loss tensor.
Objective = Callable[[torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

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


def _derived_seeds(seed: int, count: int) -> list[int]:
    # Independent streams for init, input noise and perturbations from one user seed.
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64) >> 1]


def fit(
    objective: Objective,
    net_config: NetConfig,
    output_shape: tuple[int, int, int],
    *,
    iterations: int,
    device: torch.device | str,
    seed: int = 0,
    lr: float = 0.01,
    reg_noise_std: float = 1.0 / 30.0,
    ema: float = 0.99,
    progress: ProgressCallback | None = None,
    cancel_requested: CancelCallback | None = None,
    label: str = "Deep Image Prior",
    report_interval_s: float = 0.5,
) -> np.ndarray:
    """Fit a fresh skip net to ``objective`` and return its averaged output.

    ``output_shape`` is (H, W, C) of the returned float32 array; H and W must satisfy the
    net's size rule (see `NetConfig`). With ``ema`` in (0, 1) the result is the exponential
    moving average of the outputs (the first output starts the average); ``ema=0`` returns
    the last output. The same ``seed`` on the same device and torch build gives an identical
    result (same thread count too on the CPU: the conv reductions split work by thread).
    ``progress(fraction, text)`` gets 0.0 first, strictly increasing fractions at most
    once per ``report_interval_s``, and 1.0 last. ``cancel_requested()`` is polled about every
    0.1 s; when it returns True, `Cancelled` is raised.
    """
    height, width, channels = output_shape
    device = torch.device(device)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if not 0.0 <= ema < 1.0:
        raise ValueError("ema must be in [0, 1)")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    for side in (height, width):
        if side % net_config.size_multiple or side < net_config.min_side:
            raise ValueError(
                f"net input {height}×{width} breaks the size rule: sides must be multiples of "
                f"{net_config.size_multiple} and at least {net_config.min_side}"
            )

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    def check_cancel() -> None:
        if cancel_requested is not None and cancel_requested():
            raise Cancelled()

    init_seed, input_seed, perturb_seed = _derived_seeds(seed, 3)
    with _torch_settings(device), torch.enable_grad():
        check_cancel()
        report(0.0, f"{label}: starting")

        # Initialise on the CPU from a private generator state: identical weights on every
        # device, and the caller's global RNG stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(init_seed)
            net = build_net(net_config, channels)
        net = net.to(device).train()

        input_generator = torch.Generator().manual_seed(input_seed)
        net_input = torch.rand(
            (1, net_config.input_channels, height, width), generator=input_generator
        ).mul_(INPUT_NOISE_SCALE).to(device)
        perturbed_input = torch.empty_like(net_input)
        perturbation = torch.empty_like(net_input)
        perturb_generator = torch.Generator(device=device).manual_seed(perturb_seed)

        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        averaged: torch.Tensor | None = None
        last_loss: torch.Tensor | None = None
        now = time.monotonic()
        last_report = last_cancel_check = now

        for iteration in range(1, iterations + 1):
            if reg_noise_std > 0:
                perturbation.normal_(0.0, reg_noise_std, generator=perturb_generator)
                torch.add(net_input, perturbation, out=perturbed_input)
                output = net(perturbed_input)
            else:
                output = net(net_input)
            loss = objective(output)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # The average follows the outputs the loss saw (the perturbed ones), as in the
            # paper; it costs no extra forward pass.
            detached = output.detach()
            if averaged is None:
                averaged = detached.clone()  # owned: updated in place from here on
            elif ema == 0.0:
                averaged.copy_(detached)
            else:
                averaged.lerp_(detached, 1.0 - ema)
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

        assert averaged is not None and last_loss is not None
        result = averaged[0].permute(1, 2, 0).contiguous().to("cpu", torch.float32).numpy()
        if not np.isfinite(result).all():
            raise EngineError(f"{label}: the optimisation diverged (non-finite output)")
        report(1.0, f"{label}: done, final loss {last_loss.item():.5f}")
        return np.clip(result, 0.0, 1.0)
