"""The shared DIP loop with several generators (Double-DIP's case), augmentation, preview and
cancel-with-partial-result. Tiny nets and sizes: these check the loop's contract, not quality."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.dip.loop import FitStats, Generator, NoisyTarget, StoppingRule, fit, fit_generators
from engine.dip.nets import NetConfig
from engine.errors import Cancelled

TINY = NetConfig(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2), input_channels=4)
SIZE = (16, 16)


def _target() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((1, 3, *SIZE), dtype=np.float32))


class _MixObjective(torch.nn.Module):
    """Two layers mixed with a learnable weight must reproduce the target."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mix = self.weight * outputs["a"] + (1 - self.weight) * outputs["b"]
        return (mix - self.target).square().mean()


def test_two_generators_fit_jointly_and_the_objective_parameters_learn() -> None:
    objective = _MixObjective(_target())
    generators = [Generator("a", TINY, 3), Generator("b", TINY, 3)]
    start = objective.weight.item()
    result = fit_generators(objective, generators, SIZE, iterations=60, device="cpu", seed=3)
    assert set(result) == {"a", "b"}
    assert all(r.shape == (*SIZE, 3) and r.dtype == np.float32 for r in result.values())
    assert objective.weight.item() != start  # the Module's own parameter was optimised
    mix = objective.weight.item() * result["a"] + (1 - objective.weight.item()) * result["b"]
    target = objective.target[0].permute(1, 2, 0).numpy()
    assert np.mean((mix - target) ** 2) < np.mean((0.5 - target) ** 2)


@pytest.mark.parametrize("size", [(16, 16), (16, 32)])
def test_augmented_runs_are_deterministic_and_keep_orientation(size: tuple[int, int]) -> None:
    gradient = torch.linspace(0, 1, size[1]).expand(1, 1, *size).clone()

    def objective(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return (outputs["g"] - gradient).square().mean()

    runs = [fit_generators(objective, [Generator("g", TINY, 1)], size, iterations=80,
                           device="cpu", seed=1, augment=True)["g"] for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    # The objective saw the image's own orientation: the result rises left to right.
    profile = runs[0][:, :, 0].mean(axis=0)
    assert profile[-3:].mean() > profile[:3].mean() + 0.2


def test_preview_gets_the_averaged_outputs() -> None:
    seen: list[dict[str, np.ndarray]] = []
    fit_generators(lambda o: o["g"].mean(), [Generator("g", TINY, 3)], SIZE, iterations=30,
                   device="cpu", preview=seen.append, preview_interval_s=0.0)
    assert seen and set(seen[-1]) == {"g"} and seen[-1]["g"].shape == (*SIZE, 3)


def test_cancel_carries_the_result_so_far() -> None:
    calls = {"n": 0}

    def cancel_after_a_while() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled) as caught:
        fit(lambda out: out.mean(), TINY, (*SIZE, 3), iterations=100000, device="cpu",
            cancel_requested=cancel_after_a_while)
    partial = caught.value.partial
    assert isinstance(partial, np.ndarray) and partial.shape == (*SIZE, 3)
    assert np.isfinite(partial).all() and 0.0 <= partial.min() <= partial.max() <= 1.0


def test_cancel_before_the_first_iteration_has_no_partial() -> None:
    with pytest.raises(Cancelled) as caught:
        fit(lambda out: out.mean(), TINY, (*SIZE, 3), iterations=10, device="cpu",
            cancel_requested=lambda: True)
    assert caught.value.partial is None


def test_duplicate_generator_names_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        fit_generators(lambda o: o["g"].mean(), [Generator("g", TINY, 3)] * 2, SIZE,
                       iterations=1, device="cpu")


# ---------------------------------------------------------------------------------------------
# Automatic stopping


def _noisy_gradient() -> torch.Tensor:
    clean = torch.linspace(0.2, 0.8, SIZE[1]).expand(1, 3, *SIZE)
    noise = torch.from_numpy(np.random.default_rng(5).normal(0, 0.1, (1, 3, *SIZE)).astype(np.float32))
    return (clean + noise).clamp(0, 1)


def test_stopping_rule_ends_the_run_once_the_average_settles() -> None:
    target = _noisy_gradient()
    rule = StoppingRule(check_every=10, patience=3, min_iterations=50)
    stats = FitStats()
    result = fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3), iterations=20000,
                 device="cpu", seed=2, stop=rule, stats=stats)
    assert stats.stopped_early and 50 <= stats.iterations_run < 20000
    assert stats.iterations_run % 10 == 0
    # The result is the average at a check (the last one that still settled further).
    assert stats.result_iteration % 10 == 0 and stats.result_iteration <= stats.iterations_run
    assert result.shape == (*SIZE, 3) and np.isfinite(result).all()
    again_stats = FitStats()
    again = fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3), iterations=20000,
                device="cpu", seed=2, stop=rule, stats=again_stats)
    assert np.array_equal(result, again) and again_stats.iterations_run == stats.iterations_run


def test_without_a_rule_the_run_uses_every_iteration() -> None:
    stats = FitStats()
    fit(lambda out: out.mean(), TINY, (*SIZE, 3), iterations=37, device="cpu", stats=stats)
    assert (stats.iterations_run, stats.result_iteration, stats.stopped_early) == (37, 37, False)


def test_stopping_never_happens_before_min_iterations() -> None:
    target = _noisy_gradient()
    stats = FitStats()
    fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3), iterations=400,
        device="cpu", stop=StoppingRule(check_every=5, patience=1, min_relative_drop=0.9,
                                        min_iterations=300), stats=stats)
    # A 90 % drop per check is never met, so only min_iterations holds the run back.
    assert stats.stopped_early and stats.iterations_run >= 300


def test_a_settled_threshold_stops_at_the_first_check_below_it() -> None:
    # A clean target has no noise floor: the change keeps falling, so only the threshold stops.
    target = torch.linspace(0.2, 0.8, SIZE[1]).expand(1, 3, *SIZE).clone()
    stats = FitStats()
    fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3), iterations=5000, device="cpu",
        stop=StoppingRule(check_every=10, patience=1000, settled_below=0.02, min_iterations=30),
        stats=stats)
    assert stats.stopped_early and stats.iterations_run < 5000
    # Stopped on the check after the settled one (read one check late), kept the settled one.
    assert stats.result_iteration == stats.iterations_run - 10 and stats.result_iteration >= 30


def test_without_patience_only_the_threshold_stops_the_run() -> None:
    # The noisy target's change levels off: a plateau test stops it, a threshold-only rule
    # (inpainting's: its change may pause while detail forms) runs on to its maximum.
    target = _noisy_gradient()

    def run(rule: StoppingRule) -> FitStats:
        stats = FitStats()
        fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3), iterations=600,
            device="cpu", seed=2, stop=rule, stats=stats)
        return stats

    plateau = run(StoppingRule(check_every=10, patience=3, settled_below=1e-9, min_iterations=50))
    threshold_only = run(StoppingRule(check_every=10, patience=None, settled_below=1e-9, min_iterations=50))
    assert plateau.stopped_early and plateau.iterations_run < 600
    assert not threshold_only.stopped_early and threshold_only.iterations_run == 600


def test_a_stop_weight_restricts_the_change_to_a_region() -> None:
    # Only the left half is fitted; the unconstrained right half settles differently.
    target = torch.linspace(0.2, 0.8, SIZE[1]).expand(1, 3, *SIZE).clone()
    left = torch.zeros(1, 1, *SIZE)
    left[..., : SIZE[1] // 2] = 1.0
    rule = StoppingRule(check_every=10, patience=1000, settled_below=0.02, min_iterations=30)

    def stop_iteration(weight: torch.Tensor | None) -> int:
        stats = FitStats()
        fit(lambda out: ((out - target).square() * left).mean(), TINY, (*SIZE, 3), iterations=5000,
            device="cpu", stop=rule, stats=stats, stop_weight=weight)
        return stats.result_iteration

    assert stop_iteration(torch.ones(1, 1, *SIZE)) == stop_iteration(None)
    assert stop_iteration(left) != stop_iteration(1.0 - left)


def _rms(a: np.ndarray, target: torch.Tensor) -> float:
    return float(np.sqrt(np.mean((a - target[0].permute(1, 2, 0).numpy()) ** 2)))


def test_the_discrepancy_test_stops_once_the_average_is_as_close_to_the_input_as_the_noise() -> None:
    target = _noisy_gradient()  # noise σ = 0.1

    everywhere = torch.ones(1, 1, *SIZE)

    def run(factor: float, fitted: torch.Tensor = everywhere, **options) -> tuple[np.ndarray, FitStats]:
        stats = FitStats()
        rule = StoppingRule(check_every=10, patience=None, discrepancy_factor=factor, min_iterations=30)
        result = fit(lambda out: ((out - target).square() * fitted).mean(), TINY, (*SIZE, 3), iterations=600,
                     device="cpu", seed=2, stop=rule, stats=stats, stop_noisy=NoisyTarget(target, 0.1, **options))
        return result, stats

    result, stats = run(1.0)
    assert stats.stopped_early and stats.result_iteration >= 30
    # The kept average is the first within σ of the input: the check before it was not (the
    # same seed retraces the same path without a rule).
    assert _rms(result, target) <= 0.1
    before = fit(lambda out: (out - target).square().mean(), TINY, (*SIZE, 3),
                 iterations=stats.result_iteration - 10, device="cpu", seed=2)
    assert _rms(before, target) > 0.1
    # A looser bound stops sooner.
    assert run(1.3)[1].result_iteration < stats.result_iteration
    # The weight says where the input is evidence: fitting only the left half, a residual
    # measured there settles; one measured on the unfitted right half never does.
    left = torch.zeros(1, 1, *SIZE)
    left[..., : SIZE[1] // 2] = 1.0
    assert run(1.0, weight=everywhere)[1].result_iteration == stats.result_iteration
    assert run(1.0, fitted=left, weight=left)[1].stopped_early
    assert not run(1.0, fitted=left, weight=1.0 - left)[1].stopped_early


def test_a_discrepancy_rule_needs_the_noisy_input() -> None:
    with pytest.raises(ValueError, match="stop_noisy"):
        fit(lambda out: out.mean(), TINY, (*SIZE, 3), iterations=50, device="cpu",
            stop=StoppingRule(discrepancy_factor=0.9))


@pytest.mark.parametrize("bad", [dict(check_every=0), dict(patience=0), dict(min_relative_drop=1.0),
                                 dict(min_iterations=-1), dict(settled_below=0.0), dict(patience=None),
                                 dict(discrepancy_factor=0.0)])
def test_bad_stopping_rules_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        StoppingRule(**bad)


# --- speed settings (the CUDA path's autocast / channels_last, exercised on the CPU) ---------


def _noisy_smooth_image(side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    ramp = np.linspace(0.2, 0.8, side, dtype=np.float32)
    clean = np.stack([ramp[:, None] * np.ones(side, np.float32), np.outer(ramp, ramp),
                      np.ones((side, side), np.float32) * 0.5], axis=2)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    return clean, noisy


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("settings", [{"mixed_precision": "bf16"}, {"channels_last": True},
                                      {"mixed_precision": "bf16", "channels_last": True}])
def test_bf16_autocast_and_channels_last_still_denoise_deterministically(settings: dict) -> None:
    clean, noisy = _noisy_smooth_image()
    target = torch.from_numpy(noisy.transpose(2, 0, 1))[None]
    small = NetConfig(channels_down=(16, 16, 16), channels_up=(16, 16, 16), channels_skip=(4, 4, 4))

    def run() -> np.ndarray:
        return fit(lambda out: (out - target).square().mean(), small, noisy.shape, iterations=150,
                   device="cpu", seed=1, **settings)

    out = run()
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert _psnr(out, clean) > _psnr(noisy, clean) + 2.0
    assert np.array_equal(out, run())


def test_fp16_is_refused_without_a_grad_scaler() -> None:
    with pytest.raises(ValueError, match="bf16"):
        fit(lambda out: out.mean(), TINY, (*SIZE, 3), iterations=1, device="cpu", mixed_precision="fp16")


def test_presets_apply_speed_settings_by_device_type() -> None:
    from dataclasses import replace

    from engine.dip import presets

    setting = replace(presets.FAST["denoise"], cuda_mixed_precision="bf16", cuda_channels_last=True)
    assert setting.speed_settings(torch.device("cuda")) == {"mixed_precision": "bf16", "channels_last": True}
    on_cpu = replace(setting, cpu_mixed_precision="bf16").speed_settings(torch.device("cpu"))
    assert on_cpu["mixed_precision"] == ("bf16" if presets.cpu_has_native_bf16() else None)
    assert presets.FAST["inpaint"].speed_settings(torch.device("cpu")) == {"mixed_precision": None,
                                                                          "channels_last": False}
    # Unmeasured on a GPU, and it upset the automatic stop on the CPU: no preset turns it on.
    for table in presets.PRESETS.values():
        assert all(task.cuda_mixed_precision is None and task.cpu_mixed_precision is None
                   for task in table.values())
