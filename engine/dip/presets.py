"""DIP presets as data: which net, optimiser settings, iteration budget and stopping rule each
task uses under ``paper``, ``fast`` and ``quality``; ``auto`` picks one of ours by device and size.

``paper`` reproduces the reference code's per-task settings (Ulyanov et al., the authors'
notebooks): the paper nets, input depth 32, Adam lr 0.01, a fixed iteration count and the
0.99 output average, no automatic stopping. It exists so our presets can be compared with it.

``fast`` and ``quality`` are ours: both stop automatically (`StoppingRule`), so their
iteration count is a maximum. ``quality`` uses the paper nets; ``fast`` uses a narrower net
of the same shape and a higher learning rate so the averaged output peaks in fewer, cheaper
iterations (measured on this project's 2-core CPU, see README "DIP presets").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .loop import MixedPrecision, StoppingRule
from .nets import LIGHT_DENOISE, LIGHT_INPAINT, PAPER_DENOISE, PAPER_INPAINT, NetConfig

Task = Literal["denoise", "inpaint", "super_resolve", "dejpeg"]
PresetName = Literal["auto", "fast", "quality", "paper"]
TASKS: tuple[Task, ...] = ("denoise", "inpaint", "super_resolve", "dejpeg")
PRESET_NAMES: tuple[PresetName, ...] = ("auto", "fast", "quality", "paper")

# The noise level ``TaskPreset.tv_weight`` is measured for, and how fast the weight falls off
# below it (see FAST["denoise"]); above it the weight stays (stronger noise is unmeasured).
TV_REFERENCE_SIGMA = 25 / 255
TV_FALLOFF_EXPONENT = 4

# Without stopping a run never exceeds this many iterations on the CPU per pixel of the net
# input: a large image gets fewer iterations and a blurrier but timely result rather than an
# hours-long run. 4500 its of a 256² light net (~19 min on one core) lets the stopping rule
# decide at 256²: recorded σ=25 denoise paths there peak at 1500 (smooth Berkeley 135069),
# 3050 (F16), 3600 and past 4000 (textured 122048, two seeds), which 3000, the budget before,
# cut 0.2–0.3 dB short (`benchmarks/denoise_stop_study.py`, README "Automatic stopping").
CPU_PIXEL_ITERATION_BUDGET = 256 * 256 * 4500
MIN_ITERATIONS = 300


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class TaskPreset:
    """How one task runs under one preset.

    The iteration count is ``iterations_per_side × sqrt(pixels of the net input)``, clamped
    to [``min_iterations``, ``max_iterations``] (and on the CPU to the pixel budget unless
    ``cpu_budget`` is False). With ``stop`` it is the maximum and the run usually ends
    after about ``expected_per_side × sqrt(pixels)`` iterations (measured where the rule
    stops; used for time estimates); without ``stop`` it is exact (the paper presets use a
    constant: min = max).
    """

    net: NetConfig
    lr: float
    reg_noise_std: float
    ema: float
    iterations_per_side: float
    min_iterations: int
    max_iterations: int
    stop: StoppingRule | None
    expected_per_side: float | None = None
    cpu_budget: bool = True
    # How ``stop.settled_below`` (given for a 64² input) shrinks with the input's side:
    # threshold × (64 / side) ** exponent (see `stopping_rule`).
    settled_size_exponent: float = 0.5
    # How ``stop.discrepancy_factor`` (given for a 64² input) nears 1 with the input's side:
    # 1 − (1 − factor) × (64 / side) ** exponent, at most DISCREPANCY_FACTOR_CAP (see DENOISE_STOP).
    discrepancy_size_exponent: float = 0.5
    # Speed settings (the loop's ``mixed_precision`` / ``channels_last``), applied by device
    # type. The CUDA ones are off: their PSNR cost is unmeasured (no GPU in the sessions so
    # far); `benchmarks/dip_bench.py --device cuda --gpu-target` measures them side by side.
    cuda_mixed_precision: MixedPrecision | None = None
    cuda_channels_last: bool = False
    # On a CPU bf16 is used only where the CPU computes it natively (AVX512-BF16 / AMX);
    # elsewhere it is emulated and slower. channels_last was 1.2–1.5× slower on the CPU.
    cpu_mixed_precision: MixedPrecision | None = None
    cpu_channels_last: bool = False
    # Independent fits averaged into the result (each a whole run with its own seed, on the
    # image mirrored/transposed: `tasks` does it). Their errors are partly independent, so
    # the average is cleaner: F16 σ=25 128², light net, 30.39 dB for one fit, 30.82 for two,
    # 31.04 for four (CBM3D 30.57).
    fits: int = 1
    # Total variation added to the objective (DIP-TV, Liu et al. 2019): ``tv_weight`` for
    # Gaussian noise of σ = 25/255 or more, × (σ̂ / σ_25)^TV_FALLOFF_EXPONENT below it, σ̂ being
    # the noise level estimated in the image (`noise_level.estimate_noise_sigma`). 0 = off.
    tv_weight: float = 0.0

    def total_variation_weight(self, noise_sigma: float) -> float:
        """The TV weight for an image whose estimated noise σ (in [0, 1] units) is given."""
        return self.tv_weight * min(1.0, noise_sigma / TV_REFERENCE_SIGMA) ** TV_FALLOFF_EXPONENT

    def speed_settings(self, device: torch.device) -> dict:
        """The loop's speed keywords for a run on ``device``."""
        if device.type == "cuda":
            return {"mixed_precision": self.cuda_mixed_precision, "channels_last": self.cuda_channels_last}
        native_bf16 = cpu_has_native_bf16()
        return {"mixed_precision": self.cpu_mixed_precision if native_bf16 else None,
                "channels_last": self.cpu_channels_last}


    def stopping_rule(self, pixels: int) -> StoppingRule | None:
        """``stop`` for a net input of ``pixels``: a ``settled_below`` threshold is given for a
        64² input and scales as side^−``settled_size_exponent`` — the averaged output of a
        larger image moves less per check at the same stage (measured: change at the PSNR
        peak 2.8e-3 at 64², 1.9e-3 at 128² denoising; 3.3e-3 / 1.8e-3 JPEG: exponent 0.5;
        inpainting's hole 0.9e-3 at 256²: 0.68, see INPAINT_STOP). A ``discrepancy_factor``
        is likewise given for 64² and nears 1 as the side grows (see DENOISE_STOP)."""
        rule = self.stop
        if rule is None:
            return None
        side_ratio = math.sqrt(max(1, pixels)) / SETTLED_REFERENCE_SIDE
        if rule.settled_below is not None:
            rule = replace(rule, settled_below=rule.settled_below / side_ratio ** self.settled_size_exponent)
        if rule.discrepancy_factor is not None:
            gap = (1.0 - rule.discrepancy_factor) / side_ratio ** self.discrepancy_size_exponent
            rule = replace(rule, discrepancy_factor=min(DISCREPANCY_FACTOR_CAP, 1.0 - gap))
        return rule

    def iterations(self, pixels: int, device: torch.device) -> int:
        count = min(self.iterations_per_side * math.sqrt(pixels), self.max_iterations)
        if self.cpu_budget and device.type != "cuda":
            count = min(count, CPU_PIXEL_ITERATION_BUDGET / max(1, pixels))
        return int(max(self.min_iterations, round(count)))

    def expected_iterations(self, pixels: int, device: torch.device) -> int:
        planned = self.iterations(pixels, device)
        if self.stop is None or self.expected_per_side is None:
            return planned
        return min(planned, max(self.min_iterations, round(self.expected_per_side * math.sqrt(pixels))))


def _paper(net: NetConfig, reg_noise_std: float, iterations: int, ema: float = 0.99) -> TaskPreset:
    return TaskPreset(net=net, lr=0.01, reg_noise_std=reg_noise_std, ema=ema,
                      iterations_per_side=0.0, min_iterations=iterations, max_iterations=iterations,
                      stop=None, cpu_budget=False)


# Reference code: denoising.ipynb (F16: 3000 its, reg noise 1/30, average 0.99), inpainting
# (kate: 6000 its, 128-channel skips, nearest upsampling, reg noise 0.03; the notebook keeps
# no average, we keep 0.99 as the issue asks for one comparable setting), super-resolution
# (×4: 2000 its, reg noise 0.03, Lanczos-2 downsampler). JPEG: the paper's blind restoration
# runs the denoising setup and stops early by hand; 2400 its is its snail/JPEG example.
PAPER: dict[Task, TaskPreset] = {
    "denoise": _paper(PAPER_DENOISE, 1.0 / 30.0, 3000),
    "inpaint": _paper(PAPER_INPAINT, 0.03, 6000),
    "super_resolve": _paper(PAPER_DENOISE, 0.03, 2000),
    "dejpeg": _paper(PAPER_DENOISE, 1.0 / 30.0, 2400),
}

# Our stopping rule: checks every 25 iterations, stops after 8 checks (200 its) that did not
# settle the average by 1 % more (measured on F16 σ=25, 64² and 128²: within 0.1 dB of the
# averaged output's PSNR peak; see `StoppingRule`).
AUTO_STOP = StoppingRule(check_every=25, patience=8, min_relative_drop=0.01, min_iterations=200)
# Denoising stops at the first check where the averaged output is within f × the noise level
# estimated in the input (RMS; the discrepancy principle, `StoppingRule`); the plateau test,
# with more patience (12 checks), is only the fallback for noise the estimate misjudges.
# At the best averaged output the ratio was 0.94–0.96 at 64², 0.95–0.98 at 128², 0.98 at
# 256²: a net fits less of a larger image's noise by its peak. So f = 0.95 at 64² and
# 1 − 0.05 × (64 / side)^0.5 above (0.965 at 128², 0.975 at 256²), at most 0.98 (where the
# estimate's own error, ±1 % at 256², would otherwise stop runs before their peak).
# Scored on 21 recorded paths (`benchmarks/denoise_stop_study.py`: F16 / Berkeley 122048 /
# 135069, 64² at σ 15 / 25 / 50, white and signal-dependent noise, seeds 0–2; 128²; 256²),
# the returned average was 0–0.12 dB below the path's best (mean 0.03); the plateau test
# alone (1 %, 8), the rule before, 0–3.49 dB (mean 0.36).
DENOISE_STOP = replace(AUTO_STOP, discrepancy_factor=0.95, patience=12)
DISCREPANCY_FACTOR_CAP = 0.98
# JPEG artefacts are no noise floor: the change keeps falling smoothly past the PSNR peak, so
# the run also stops once it is below 2.5e-3 (for a 64² input; see `TaskPreset.stopping_rule`).
# Measured with the light net on F16 at quality 10 (stop vs best averaged output of the run):
# 64² centre 25.81 vs 25.86 dB, 64² sky 31.95 vs 31.99 dB, 128² centre 26.52 vs 26.52 dB.
SETTLED_REFERENCE_SIDE = 64
JPEG_STOP = replace(AUTO_STOP, settled_below=2.5e-3)
# Inpainting has no noise floor either (the known pixels are clean): the change falls
# smoothly past the hole's PSNR peak and the plateau test rarely fires, so runs used to go to
# their maximum, 0.4 dB past the peak on kate's text mask. Inpainting measures the change
# inside the hole only (tasks pass the loop a ``stop_weight``: the known pixels settle long
# before the hole) and stops below 2.3e-3 at 64² (scaled by 1/sqrt(side) like JPEG's).
# Measured with the light net (`benchmarks/inpaint_stop_study.py`; hole PSNR at the stop vs
# the best averaged output): kate text mask, 96² window: 27.01 dB at 1300 its vs 27.06 best
# (the maximum, 2112 its, ended at 26.62); 128²: 27.85 at 1500 vs 27.92 (27.48 by 1875).
# Vase (a compact hole, 64² window at 96² and 128²) keeps improving slowly up to its
# 1408-iteration maximum: stop 1350 / 1400, 16.22 / 15.84 dB vs 16.24 / 15.84 at the
# maximum; its best overall is a smooth early fill (16.37 / 16.06 at 150–200 its) that no
# settle test can see. A higher threshold suits kate a little better (2.6e-3: −0.03 dB) but
# stops vase 0.2–0.4 dB short; the whole-window change could not serve both at any threshold.
# At 256² (kate's text mask over the whole 256² crop, `inpaint_stop_study.py kate --size 256
# --iterations 4500`) the hole's PSNR peaks at 2800 its (29.51 dB) where the change is
# 0.88e-3; the 1/sqrt(side) scaling (1.15e-3) stopped at ~2100 (29.20 dB in dip_bench), so
# inpainting's threshold shrinks faster with size: × (64/side)^0.68 — unchanged at 64²,
# 1.43e-3 at 128², 0.89e-3 at 256².
# No plateau test for inpainting (patience None): with half of barbara's pixels missing
# (256² centre crop, `inpaint_stop_study.py missing50_barbara --size 256 --iterations 1500`)
# the hole's change paused at 5.2e-3 from 425 its while the cloth's stripes formed, the
# plateau test stopped there at 23.62 dB (biharmonic 23.75), and the hole's PSNR rose
# steadily to 28.89 dB by 1475 its (change 2.55e-3, still above the threshold).
INPAINT_STOP = replace(AUTO_STOP, settled_below=2.3e-3, patience=None)
INPAINT_SETTLED_SIZE_EXPONENT = 0.68

# Fast nets: the light nets (paper topology, narrow full- and half-resolution levels) at the
# paper's lr. Measured on F16 σ=25 128² (2-core CPU): lr 0.03 peaked later and lower than
# 0.01 (29.5 dB at 1075 its vs 29.6 dB at 1000 its and 30.4 dB at 1625), so lr stays 0.01.
# The light net's averaged output peaks near 12–13 iterations per pixel of side (775 its at
# 64², 1625 at 128²); the maximum leaves room for that plus the rule's patience.
FAST_DENOISE = LIGHT_DENOISE
FAST_INPAINT = LIGHT_INPAINT

# Quality: the paper nets with our stopping rule (tuned on the light net; the paper denoise
# net's averaged output peaked near 6 iterations per pixel of side — ~800 its at 128² on
# this CPU — and the paper's 3000 / 6000 its at 512² bound the rest). Denoising with these
# settings run to their own stop on the CPU (128², σ=25, one fit; `benchmarks/
# denoise_setting_study.py IMAGE --size 128 --settings quality-gpu`): the stop returned within
# 0.02–0.04 dB of the best output seen (F16 30.25 dB at 1075 its, Berkeley 135069 33.21 at
# 1100; 122048 28.55 ran to its 1536 maximum) — but one fit of the light net was as good
# (30.39 / 33.50 / 28.59), so at that size the paper net buys no PSNR. Larger images are
# unmeasured (a paper net needs a GPU to run there); `dip_bench.py --gpu-target` compares
# one and four fits of each on a GPU.
QUALITY: dict[Task, TaskPreset] = {
    "denoise": TaskPreset(PAPER_DENOISE, 0.01, 1.0 / 30.0, 0.99, 12.0, MIN_ITERATIONS, 6000,
                          DENOISE_STOP, expected_per_side=8.0),
    "inpaint": TaskPreset(PAPER_INPAINT, 0.01, 0.03, 0.99, 20.0, MIN_ITERATIONS, 10000,
                          INPAINT_STOP, expected_per_side=12.0,
                          settled_size_exponent=INPAINT_SETTLED_SIZE_EXPONENT),
    "super_resolve": TaskPreset(PAPER_DENOISE, 0.01, 0.03, 0.99, 24.0, MIN_ITERATIONS, 4000,
                                AUTO_STOP, expected_per_side=24.0),
    "dejpeg": TaskPreset(PAPER_DENOISE, 0.01, 1.0 / 30.0, 0.99, 12.0, MIN_ITERATIONS, 6000,
                         JPEG_STOP, expected_per_side=8.0),
}

FAST: dict[Task, TaskPreset] = {
    # Not bf16 on the CPU: with native AVX512-BF16 (AMD EPYC here) it is 1.22× / ~1.5×
    # faster per iteration at 128² / 256² (`benchmarks/dip_speed.py`, interleaved) and F16
    # σ=25 128² stopped at the same 30.39 dB, but at 64² the automatic stop returned 28.74 dB
    # (fp32: 29.52), 1 dB below the bf16 run's own best average (29.73 at 659 its): bf16's
    # rounding keeps the average moving, so the rule's plateau comes late.
    # The paper's input perturbation (1/30) is also what the stopping rule is tuned with: on a
    # smooth Berkeley photo (135069, 128², σ=25, one fit, automatic stop) 1/30 gave 33.65 dB,
    # 1/60 31.67, 1/15 30.78, 1/10 30.42, none 28.13 (stopped at 775 its;
    # `benchmarks/denoise_setting_study.py 135069 --size 128 --reg-noise 0.0333,0.0667,0.1,0.0167,0`).
    # Total variation (DIP-TV, `TaskPreset.tv_weight`) stays off: no gain beyond the spread
    # between runs. σ=25, 128², automatic stop (`benchmarks/denoise_setting_study.py IMAGE
    # --size 128 --tv-weight 0,0.005,0.01 [--fits 4]`), weight 0 / 0.005 / 0.01 — one fit:
    # Berkeley 135069 (smooth) 33.50 / 33.82 / 33.89 dB, 122048 28.59 / 28.65 / 28.68, F16
    # 30.39 / 30.60 / 30.42; four fits averaged (what `quality` returns on a CPU): 135069 34.26 /
    # 34.30 / 34.24, 122048 29.15 / 29.08 / 29.13, F16 31.04 / 31.07 / 30.97. But a weight too
    # small to matter (5e-5, σ=10) also moved one fit by +0.38 dB: a changed objective changes
    # the run's path, so one-fit differences of a few tenths are that spread, and the averages
    # did not move. 0.03 lost 0.3–0.5 dB on the textured two; at σ=10 0.0015 / 0.01 cost up to
    # 0.16 / 0.64 dB (hence the fall-off with the estimated noise level, should it be used).
    "denoise": TaskPreset(FAST_DENOISE, 0.01, 1.0 / 30.0, 0.99, 22.0, MIN_ITERATIONS, 6000,
                          DENOISE_STOP, expected_per_side=14.0),
    # Inpainting stops once the hole has settled (INPAINT_STOP). JPEG's whole-window
    # threshold stopped kate's text mask (64² window) near 475 its, 0.77 dB short of its peak.
    "inpaint": TaskPreset(FAST_INPAINT, 0.01, 0.03, 0.99, 22.0, MIN_ITERATIONS, 10000,
                          INPAINT_STOP, expected_per_side=13.0,
                          settled_size_exponent=INPAINT_SETTLED_SIZE_EXPONENT),
    # Super-resolution has no noise to over-fit and improves for longer (zebra ×2, 32² → 64²:
    # still improving at the 2048-iteration maximum, +1.36 dB over bicubic), so it gets a
    # larger budget; the maximum usually ends the run.
    "super_resolve": TaskPreset(FAST_DENOISE, 0.01, 0.03, 0.99, 32.0, MIN_ITERATIONS, 4000,
                                AUTO_STOP, expected_per_side=32.0),
    # Peaks near 7–9 iterations per pixel of side (F16 q10: 450 / 575 its at 64², 1125 at 128²).
    "dejpeg": TaskPreset(FAST_DENOISE, 0.01, 1.0 / 30.0, 0.99, 22.0, MIN_ITERATIONS, 6000,
                         JPEG_STOP, expected_per_side=10.0),
}

# Quality on a CPU: the paper nets would take hours there (~2 s/iteration at 256²), so it is
# the fast settings with four fits averaged: 4× fast's time, and above CBM3D on F16 where one
# fit is below it (numbers at `TaskPreset.fits`; README "Presets").
CPU_QUALITY_FITS = 4
QUALITY_CPU: dict[Task, TaskPreset] = {task: replace(settings, fits=CPU_QUALITY_FITS)
                                       for task, settings in FAST.items()}

PRESETS: dict[str, dict[Task, TaskPreset]] = {"paper": PAPER, "quality": QUALITY, "fast": FAST}


# Above this many net-input pixels a GPU run uses ``fast`` too: a paper net's 128-channel
# full-resolution activations for 1024² already take several GB.
GPU_QUALITY_MAX_PIXELS = 1024 * 1024


def choose_preset(preset: str, device: torch.device, pixels: int) -> str:
    """Resolve ``auto``: ``quality`` (paper-sized nets) on a GPU up to 1024² of net input,
    otherwise ``fast`` — on the CPU a paper net costs ~15× more per iteration (0.40 s vs
    ~0.03 s at 128² on 2 cores)."""
    if preset == "auto":
        return "quality" if device.type == "cuda" and pixels <= GPU_QUALITY_MAX_PIXELS else "fast"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_NAMES)}")
    return preset


def preset_table(preset: str, device: torch.device) -> dict[Task, TaskPreset]:
    """The settings of a resolved preset on ``device`` (``quality`` differs by device type)."""
    if preset == "quality" and device.type != "cuda":
        return QUALITY_CPU
    return PRESETS[preset]


def task_preset(preset: str, task: Task, device: torch.device, pixels: int) -> TaskPreset:
    """The settings ``task`` runs with; ``pixels`` is the net input's size (roughly: the
    image's, or for inpainting the hole's window) and only matters to ``auto``."""
    return preset_table(choose_preset(preset, device, pixels), device)[task]


def preset_fits(preset: str, settings: TaskPreset, device: torch.device) -> int:
    """Fits a run of ``preset`` averages when the caller asks for none: the preset's, and for
    ``auto`` on a CPU the ones that run beside the first on cores it would leave idle
    (`loop.spare_core_fits`). Tiled images fit once, and a run may lower the count to what
    its memory holds side by side (`tasks._fit_count`)."""
    if preset == "auto" and device.type == "cpu" and settings.fits == 1:
        from .loop import spare_core_fits

        return spare_core_fits()
    return settings.fits


# ---------------------------------------------------------------------------------------------
# Time estimates (shown in the dialog before a run)

# ms per iteration ≈ fixed + per_megapixel × megapixels of the net input, per net.
# CPU: measured on the 2-core dev machine with 1 thread (what a run uses there) next to a busy
# neighbour — light denoise net 68 / 209 ms at 128² / 256², light inpaint 63 / 227, paper
# denoise 366 / 2000, paper inpaint 602 / 3179 — and scaled for the threads a run uses
# (`cpu_thread_factor`). CUDA: a rough guess for a current desktop GPU (not measured here).
CPU_MS_PER_ITERATION: dict[NetConfig, tuple[float, float]] = {
    LIGHT_DENOISE: (21.0, 2870.0),
    LIGHT_INPAINT: (8.0, 3340.0),
    PAPER_DENOISE: (0.0, 30500.0),
    PAPER_INPAINT: (0.0, 48000.0),
}
CUDA_MS_PER_ITERATION: dict[NetConfig, tuple[float, float]] = {
    LIGHT_DENOISE: (4.0, 20.0),
    LIGHT_INPAINT: (4.0, 25.0),
    PAPER_DENOISE: (5.0, 120.0),
    PAPER_INPAINT: (5.0, 160.0),
}
MEASURED_CPU_THREADS = 1


def cpu_thread_factor(threads: int | None = None) -> float:
    """Time of a CPU iteration with ``threads`` (None = what one fit uses) relative to the
    measured single-thread figures."""
    # Conv layers of this size scale sub-linearly with threads (~threads^0.6 measured on an
    # idle 2-core box: 25 ms with 1 thread, 17 ms with 2 at 64²).
    from .loop import cpu_threads_for_fit

    return (MEASURED_CPU_THREADS / max(1, threads or cpu_threads_for_fit())) ** 0.6


# The tables were measured on one CPU; a run on another records how its fits compared (the
# mean of the last few, engine.measured_speed), and estimates on the CPU follow that machine.
# Only estimates: iteration budgets never depend on it, so the same seed gives the same result.
_SPEED_RECORD_NAMES = {LIGHT_DENOISE: "light_denoise", LIGHT_INPAINT: "light_inpaint",
                       PAPER_DENOISE: "paper_denoise", PAPER_INPAINT: "paper_inpaint"}
# A fit shorter than this says more about start-up than about the machine.
MIN_RECORDED_SECONDS = 5.0
MIN_RECORDED_ITERATIONS = 50


def _speed_key(net: NetConfig) -> str | None:
    name = _SPEED_RECORD_NAMES.get(net)
    return None if name is None else f"dip:{name}"


def machine_speed_factor(net: NetConfig) -> float:
    """Measured ÷ tabled CPU time per iteration of ``net`` on this machine (1 when none)."""
    from ..measured_speed import recorded

    key = _speed_key(net)
    return (recorded(key) or 1.0) if key is not None else 1.0


def record_cpu_fit(net: NetConfig, pixels: int, seconds: float, iterations: int, threads: int) -> None:
    """Keep how a finished CPU fit of ``net`` on a ``pixels`` net input with ``threads``
    compared with the table (skipped when too short to tell)."""
    key = _speed_key(net)
    if key is None or seconds < MIN_RECORDED_SECONDS or iterations < MIN_RECORDED_ITERATIONS:
        return
    tabled = milliseconds_per_iteration(net, pixels, torch.device("cpu"), threads, measured=False)
    if tabled:
        from ..measured_speed import record_value

        record_value(key, seconds * 1000.0 / iterations / tabled)


def milliseconds_per_iteration(net: NetConfig, pixels: int, device: torch.device,
                               threads: int | None = None, measured: bool = True) -> float | None:
    """Expected ms per iteration; on the CPU scaled by this machine's recorded speed unless
    ``measured`` is False (the table alone)."""
    table = CUDA_MS_PER_ITERATION if device.type == "cuda" else CPU_MS_PER_ITERATION
    if net not in table:
        return None
    fixed, per_megapixel = table[net]
    milliseconds = fixed + per_megapixel * pixels / 1e6
    if device.type == "cuda":
        return milliseconds
    return milliseconds * cpu_thread_factor(threads) * (machine_speed_factor(net) if measured else 1.0)


def estimate_seconds(task: Task, preset: str, device: str, iterations: int | None,
                     height: int, width: int, fits: int | None = None) -> float | None:
    """Expected seconds of a run on an image of ``height``×``width`` (None if unknown).

    The net input is taken as the image padded to the net's size rule (for super-resolution
    pass the output size). With ``iterations`` None the preset's expected count is used.
    An image larger than a tile (`tiles.tile_side_for`, from the free memory) costs one run
    per tile (for super-resolution the tiles are approximated at output resolution), and
    ``fits`` (None = the preset's, for ``auto`` on a CPU as `tasks._fit_count` counts them)
    cost a whole run each, or on a CPU one per round of fits side by side.
    """
    try:
        from .tasks import resolve_device

        torch_device = resolve_device(device)
    except Exception:  # noqa: BLE001 - an estimate is never worth an error
        return None
    from . import tiles

    settings = task_preset(preset, task, torch_device, height * width)
    side = tiles.tile_side_for(settings.net, torch_device, height * width)
    count_of_tiles = 1
    if height > side or width > side:
        grid = tiles.plan(height, width, side)
        count_of_tiles, height, width = grid.count, grid.tile_height, grid.tile_width
    pixels = settings.net.padded_side(height) * settings.net.padded_side(width)
    if fits is None:
        fits = preset_fits(preset, settings, torch_device) if count_of_tiles == 1 else settings.fits
    # On a CPU an untiled image's fits run side by side (`tasks._fits_side_by_side`; memory
    # permitting, which this leaves out): rounds of them, each fit on its share of threads.
    rounds, threads = fits, None
    if torch_device.type == "cpu" and count_of_tiles == 1:
        from .loop import cpu_fit_plan

        side_by_side, threads = cpu_fit_plan(fits)
        rounds = math.ceil(fits / side_by_side)
    per_iteration = milliseconds_per_iteration(settings.net, pixels, torch_device, threads)
    if per_iteration is None:
        return None
    count = iterations if iterations is not None else settings.expected_iterations(pixels, torch_device)
    return round(rounds * count_of_tiles * per_iteration * count / 1000.0, 1)
