"""Deep Image Prior backend: nets, the loop and the denoise/inpaint tasks (CPU only)."""
from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import noise_level
from engine.dip import loop, nets, presets, tasks
from engine.errors import BadInput, Cancelled

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dip"


def _load(relative: str) -> np.ndarray:
    path = DATA / relative
    if not path.exists():
        pytest.fail(f"test data missing: {path}")  # the data is required, never skipped
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10.0 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def f16() -> np.ndarray:
    return _load("denoising/F16_GT.png")


@pytest.fixture(scope="module")
def kate() -> np.ndarray:
    return _load("inpainting/kate.png")


@pytest.fixture(scope="module")
def kate_text_hole() -> np.ndarray:
    mask = np.asarray(Image.open(DATA / "inpainting/kate_mask.png").convert("L"))
    return mask == 0  # black marks the pixels to fill


# ---------------------------------------------------------------------------------------------
# Nets


def test_custom_pad_and_upsample_match_torch_ops() -> None:
    x = torch.randn(2, 3, 8, 6)
    for pad in (1, 2, 3):
        assert torch.equal(nets.ReflectionPad(pad)(x), F.pad(x, (pad,) * 4, mode="reflect"))
    assert torch.equal(nets.Upsample2x("nearest")(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    reference = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(nets.Upsample2x("bilinear")(x), reference, rtol=0, atol=1e-6)


def test_size_rule_and_output_shape() -> None:
    config = nets.PAPER_DENOISE
    assert config.depth == 5 and config.size_multiple == 32 and config.min_side == 64
    assert config.input_channels == 32 and config.channels_skip == (4,) * 5
    assert [config.padded_side(s) for s in (1, 64, 65, 96, 100)] == [64, 64, 96, 96, 128]
    net = nets.build_net(nets.LIGHT_DENOISE, 1)
    with torch.no_grad():
        out = net(torch.rand(1, 32, 64, 96))
    assert out.shape == (1, 1, 64, 96)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    shallow = nets.NetConfig(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(0, 2))
    assert shallow.size_multiple == 4 and shallow.min_side == 8
    with pytest.raises(ValueError):
        nets.NetConfig(channels_down=(8, 8), channels_up=(8,), channels_skip=(4, 4))


def test_light_nets_are_cheaper_than_paper_nets() -> None:
    assert nets.LIGHT_DENOISE.parameter_count() < nets.PAPER_DENOISE.parameter_count() / 2
    assert nets.LIGHT_INPAINT.upsample_mode == nets.PAPER_INPAINT.upsample_mode == "nearest"


# ---------------------------------------------------------------------------------------------
# Denoising acceptance criterion


def test_denoise_300_iterations_gains_3_db_on_f16(f16: np.ndarray) -> None:
    clean = f16[224:288, 224:288]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    started = time.perf_counter()
    restored = tasks.denoise(noisy, iterations=300, seed=0, device="cpu")
    elapsed = time.perf_counter() - started
    gain = _psnr(restored, clean) - _psnr(noisy, clean)
    print(f"denoise 64² × 300 its: gain {gain:.2f} dB in {elapsed:.1f} s")
    assert restored.dtype == np.float32 and restored.shape == clean.shape
    assert gain >= 3.0


# ---------------------------------------------------------------------------------------------
# Inpainting


def _hole_errors(result: np.ndarray, clean: np.ndarray, hole: np.ndarray) -> tuple[float, float, float]:
    """MSE inside the hole of: the result, a mean-colour fill, a zero fill."""
    known_mean = clean[~hole].mean(axis=0)
    dip = float(np.mean((result[hole] - clean[hole]) ** 2))
    mean_fill = float(np.mean((known_mean - clean[hole]) ** 2))
    zero_fill = float(np.mean(clean[hole] ** 2))
    return dip, mean_fill, zero_fill


def test_inpaint_block_hole(kate: np.ndarray) -> None:
    clean = np.ascontiguousarray(kate[150:230, 200:296])  # face and hair, 80×96
    hole = np.zeros(clean.shape[:2], dtype=bool)
    hole[34:46, 42:54] = True
    damaged = clean.copy()
    damaged[hole] = 0.0
    result = tasks.inpaint(damaged, hole, iterations=300, seed=0, device="cpu")
    assert result.dtype == np.float32 and result.shape == clean.shape
    # Known pixels come back bit for bit.
    assert np.array_equal(result[~hole], damaged[~hole])
    dip, mean_fill, zero_fill = _hole_errors(result, clean, hole)
    print(f"block hole MSE: dip {dip:.5f}, mean colour {mean_fill:.5f}, zeros {zero_fill:.5f}")
    assert dip < mean_fill and dip < zero_fill


def test_inpaint_text_mask_from_the_paper(kate: np.ndarray, kate_text_hole: np.ndarray) -> None:
    clean = np.ascontiguousarray(kate[56:120, 180:244])
    hole = kate_text_hole[56:120, 180:244]
    assert 0.05 < hole.mean() < 0.5
    damaged = np.where(hole[:, :, None], 1.0, clean).astype(np.float32)  # white text
    result = tasks.inpaint(damaged, hole, iterations=300, seed=1, device="cpu")
    assert np.array_equal(result[~hole], damaged[~hole])
    dip, mean_fill, zero_fill = _hole_errors(result, clean, hole)
    print(f"text mask MSE: dip {dip:.5f}, mean colour {mean_fill:.5f}, zeros {zero_fill:.5f}")
    assert dip < mean_fill and dip < zero_fill


def test_inpaint_optimises_only_a_window_around_the_hole() -> None:
    config = nets.LIGHT_INPAINT
    hole = np.zeros((512, 700), dtype=bool)
    hole[300:310, 400:420] = True
    window = tasks._inpaint_window(hole, config)
    height, width = window.y1 - window.y0, window.x1 - window.x0
    assert (height, width) == (64, 64) and window.pad_y == window.pad_x == (0, 0)
    assert window.y0 <= 300 - 16 and window.y1 >= 310 + 16
    assert window.x0 <= 400 - 16 and window.x1 >= 420 + 16
    # Near a border the window shifts inwards instead of padding.
    corner = np.zeros((512, 700), dtype=bool)
    corner[0:5, 695:700] = True
    window = tasks._inpaint_window(corner, config)
    assert (window.y0, window.y1, window.x0, window.x1) == (0, 64, 636, 700)
    # An image smaller than the net's minimum is reflect-padded.
    small = np.zeros((40, 70), dtype=bool)
    small[10:20, 10:20] = True
    window = tasks._inpaint_window(small, config)
    assert (window.y0, window.y1) == (0, 40) and sum(window.pad_y) == 24
    assert window.x1 - window.x0 == 64 and window.pad_x == (0, 0)


def test_inpaint_in_a_large_image_touches_only_the_hole(kate: np.ndarray) -> None:
    hole = np.zeros(kate.shape[:2], dtype=bool)
    hole[200:206, 300:310] = True
    started = time.perf_counter()
    result = tasks.inpaint(kate, hole, iterations=5, device="cpu")
    assert time.perf_counter() - started < 20  # a 64² window, not the 512² image
    assert np.array_equal(result[~hole], kate[~hole])
    assert not np.array_equal(result[hole], kate[hole])


# ---------------------------------------------------------------------------------------------
# Grayscale, padding, determinism


def test_grayscale_and_odd_sizes(f16: np.ndarray) -> None:
    grey = f16[100:140, 100:150].mean(axis=2, keepdims=True).astype(np.float32)  # 40×50×1
    denoised = tasks.denoise(grey, iterations=20, device="cpu")
    assert denoised.shape == (40, 50, 1) and denoised.dtype == np.float32
    assert 0.0 <= denoised.min() and denoised.max() <= 1.0
    hole = np.zeros((40, 50), dtype=bool)
    hole[15:25, 20:30] = True
    filled = tasks.inpaint(grey, hole, iterations=20, device="cpu")
    assert filled.shape == (40, 50, 1)
    assert np.array_equal(filled[~hole], grey[~hole])


def test_same_seed_same_result_other_seed_differs(f16: np.ndarray) -> None:
    image = np.ascontiguousarray(f16[:48, :48])
    first = tasks.denoise(image, iterations=15, seed=3, device="cpu")
    again = tasks.denoise(image, iterations=15, seed=3, device="cpu")
    other = tasks.denoise(image, iterations=15, seed=4, device="cpu")
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_fit_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    loop.fit(lambda out: out.mean(), nets.LIGHT_DENOISE, (64, 64, 3), iterations=2,
             device=torch.device("cpu"), seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_cpu_runs_leave_a_core_free_and_restore_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for usable, expected in ((1, 1), (2, 1)):
        monkeypatch.setattr(loop, "available_cpu_threads", lambda usable=usable: usable)
        assert loop.cpu_threads_for_fit() == min(expected, torch.get_num_threads())
    before = torch.get_num_threads()
    loop.fit(lambda out: out.mean(), nets.LIGHT_DENOISE, (64, 64, 1), iterations=1, device="cpu")
    assert torch.get_num_threads() == before


def test_fit_rejects_sizes_outside_the_size_rule() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        loop.fit(lambda out: out.mean(), nets.LIGHT_DENOISE, (64, 80, 3), iterations=1,
                 device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Progress and cancellation


def test_progress_increases_and_ends_at_one(f16: np.ndarray) -> None:
    calls: list[tuple[float, str]] = []
    tasks.denoise(np.ascontiguousarray(f16[:64, :64]), iterations=30, device="cpu", fits=1,
                  progress=lambda fraction, text: calls.append((fraction, text)))
    fractions = [fraction for fraction, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    assert all(isinstance(text, str) and text for _, text in calls)


def test_progress_is_rate_limited_and_monotonic() -> None:
    calls: list[float] = []
    loop.fit(lambda out: out.mean(), nets.LIGHT_DENOISE, (64, 64, 1), iterations=40,
             device=torch.device("cpu"), report_interval_s=0.0,
             progress=lambda fraction, _: calls.append(fraction))
    # Every iteration may report when the interval is 0; fractions still strictly rise.
    assert calls == [0.0] + [i / 40 for i in range(1, 40)] + [1.0]
    calls.clear()
    loop.fit(lambda out: out.mean(), nets.LIGHT_DENOISE, (64, 64, 1), iterations=40,
             device=torch.device("cpu"), report_interval_s=3600.0,
             progress=lambda fraction, _: calls.append(fraction))
    assert calls == [0.0, 1.0]


def test_cancel_before_start_raises_at_once(f16: np.ndarray) -> None:
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        tasks.denoise(np.ascontiguousarray(f16[:64, :64]), iterations=100_000, device="cpu",
                      cancel_requested=lambda: True)
    assert time.perf_counter() - started < 2.0


def test_cancel_mid_run_stops_quickly(f16: np.ndarray) -> None:
    started = time.perf_counter()
    iterations_seen: list[float] = []

    def cancel_after_half_a_second() -> bool:
        return time.perf_counter() - started > 0.5

    with pytest.raises(Cancelled):
        tasks.inpaint(np.ascontiguousarray(f16[:64, :64]), np.eye(64, dtype=bool),
                      iterations=100_000, device="cpu",
                      progress=lambda fraction, _: iterations_seen.append(fraction),
                      cancel_requested=cancel_after_half_a_second)
    assert time.perf_counter() - started < 5.0
    assert iterations_seen[-1] < 0.01


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((7, 20, 3), np.float32), "at least 8"),
        (np.zeros((20, 20), np.float32), "H×W×C"),
        (np.zeros((20, 20, 4), np.float32), "H×W×C"),
        (np.zeros((20, 20, 3), np.uint8), "floats"),
        (np.full((20, 20, 3), np.nan, np.float32), "NaN"),
        ([[0.0] * 20] * 20, "numpy array"),
    ],
)
def test_bad_images(image, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        tasks.denoise(image, iterations=1, device="cpu")
    with pytest.raises(BadInput, match=message):
        tasks.inpaint(image, np.ones((20, 20), bool), iterations=1, device="cpu")


def test_bad_holes() -> None:
    image = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(BadInput, match="empty"):
        tasks.inpaint(image, np.zeros((32, 32), bool), device="cpu")
    with pytest.raises(BadInput, match="whole image"):
        tasks.inpaint(image, np.ones((32, 32), bool), device="cpu")
    with pytest.raises(BadInput, match="does not match"):
        tasks.inpaint(image, np.ones((32, 31), bool), device="cpu")
    with pytest.raises(BadInput, match="boolean"):
        tasks.inpaint(image, np.full((32, 32), 0.5), device="cpu")


def test_bad_settings() -> None:
    image = np.zeros((32, 32, 3), np.float32)
    for iterations in (0, -5, 2.5, True):
        with pytest.raises(BadInput, match="iterations"):
            tasks.denoise(image, iterations=iterations, device="cpu")
    with pytest.raises(BadInput, match="seed"):
        tasks.denoise(image, iterations=1, seed=-1, device="cpu")
    with pytest.raises(BadInput, match="unknown device"):
        tasks.denoise(image, iterations=1, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_bad_input() -> None:
    with pytest.raises(BadInput, match="CUDA is not available"):
        tasks.resolve_device("cuda")
    with pytest.raises(BadInput, match="CUDA is not available"):
        tasks.denoise(np.zeros((32, 32, 3), np.float32), iterations=1, device="cuda")
    assert tasks.resolve_device("auto") == torch.device("cpu")
    assert tasks.resolve_device(" CPU ") == torch.device("cpu")


def test_preset_iteration_rules() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # paper: the reference code's fixed counts on every device and size, no automatic stop.
    assert {task: presets.PAPER[task].iterations(64 * 64, cpu) for task in presets.TASKS} == {
        "denoise": 3000, "inpaint": 6000, "super_resolve": 2000, "dejpeg": 2400}
    assert all(p.stop is None and p.lr == 0.01 and p.net.input_channels == 32 and p.ema == 0.99
               for p in presets.PAPER.values())
    assert presets.PAPER["inpaint"].net == nets.PAPER_INPAINT
    # ours stop automatically; the count is a maximum that grows with the side and is capped
    # on the CPU by the pixel budget.
    fast = presets.FAST["denoise"]
    assert fast.stop is not None
    counts = [fast.iterations(s * s, cpu) for s in (64, 128, 256, 512, 1024)]
    assert counts[:3] == sorted(counts[:3]) and counts[4] == presets.MIN_ITERATIONS
    assert fast.iterations(1024 * 1024, cuda) == fast.max_iterations
    # auto: fast on the CPU, quality on a GPU unless the input is huge.
    assert presets.choose_preset("auto", cpu, 256 * 256) == "fast"
    assert presets.choose_preset("auto", cuda, 512 * 512) == "quality"
    assert presets.choose_preset("auto", cuda, 4096 * 4096) == "fast"
    assert presets.choose_preset("paper", cpu, 64) == "paper"
    # Inpainting (no noise floor) also stops once the average has settled below a threshold,
    # which shrinks with size faster than JPEG's (measured at 256²).
    inpaint = presets.FAST["inpaint"]
    assert inpaint.stop is presets.INPAINT_STOP and presets.QUALITY["inpaint"].stop is presets.INPAINT_STOP
    # ... and only then: no plateau test (a pause of the hole's change is not its peak).
    assert presets.INPAINT_STOP.patience is None
    at_64, at_256 = inpaint.stopping_rule(64 * 64), inpaint.stopping_rule(256 * 256)
    assert at_64.settled_below == pytest.approx(2.3e-3) and at_256.settled_below == pytest.approx(0.89e-3, rel=0.01)
    # Denoise-like thresholds keep the 1/sqrt(side) scaling.
    dejpeg = presets.task_preset("fast", "dejpeg", torch.device("cpu"), 256 * 256)
    assert dejpeg.stopping_rule(256 * 256).settled_below == pytest.approx(1.25e-3)
    # Denoising stops by the discrepancy test, whose factor nears 1 on larger inputs (a net
    # fits less of a larger image's noise by its peak), capped; the plateau test is the fallback.
    for preset in (presets.FAST, presets.QUALITY):
        denoise = preset["denoise"]
        assert denoise.stop is presets.DENOISE_STOP and denoise.stop.patience == 12
        factors = [denoise.stopping_rule(side * side).discrepancy_factor for side in (64, 128, 256, 512, 4096)]
        assert factors == pytest.approx([0.95, 0.9646, 0.975, 0.98, 0.98], abs=1e-4)
        assert denoise.stopping_rule(256 * 256).settled_below is None


def test_noise_estimate_follows_the_added_noise(f16: np.ndarray) -> None:
    crop = f16[192:320, 192:320]
    rng = np.random.default_rng(1)
    own = noise_level.estimate_noise_sigma(crop)
    assert own < 3 / 255  # the scanned photo's own grain
    for sigma in (5 / 255, 10 / 255, 25 / 255, 50 / 255):
        noisy = np.clip(crop + rng.normal(0, sigma, crop.shape), 0, 1).astype(np.float32)
        added = float(np.sqrt(np.mean((noisy - crop) ** 2)))  # after clipping
        # Independent noises add in quadrature. The discrepancy stop needs a few per cent,
        # weak noise included (the Haar estimate it replaced read σ=5 up to 2× too high on
        # detailed photos).
        assert noise_level.estimate_noise_sigma(noisy) == pytest.approx(np.hypot(added, own), rel=0.04)
    grey = np.clip(crop[..., :1] + rng.normal(0, 0.1, crop[..., :1].shape), 0, 1).astype(np.float32)
    assert noise_level.estimate_noise_sigma(grey) == pytest.approx(0.1, rel=0.06)
    # A grey image stored as RGB is one channel, not three perfectly correlated ones.
    assert noise_level.estimate_noise_sigma(np.repeat(grey, 3, axis=2)) == pytest.approx(
        noise_level.estimate_noise_sigma(grey))
    # Large images use a grid of patches (bounded memory); tiny ones the Haar estimate.
    big = np.clip(np.tile(crop, (5, 5, 1)) + rng.normal(0, 10 / 255, (640, 640, 3)), 0, 1).astype(np.float32)
    assert noise_level.estimate_noise_sigma(big) == pytest.approx(10 / 255, rel=0.05)
    tiny = np.clip(crop[:12, :12] + rng.normal(0, 0.1, (12, 12, 3)), 0, 1).astype(np.float32)
    assert noise_level.estimate_noise_sigma(tiny) == noise_level.haar_noise_sigma(tiny)


def test_total_variation_term_and_its_weight_by_noise_level() -> None:
    output = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    target = torch.zeros_like(output)
    mse = tasks._weighted_mse(target, torch.ones_like(output))
    # down: |1-0|, |1-1| → mean 0.5; across: |1-0|, |1-1| → 0.5
    assert float(tasks._plus_total_variation(mse, 0.1)(output)) == pytest.approx(0.75 + 0.1 * 1.0)
    # Off in every preset (measured: no gain beyond the spread between runs; presets.FAST).
    assert all(settings.tv_weight == 0 for table in presets.PRESETS.values() for settings in table.values())
    denoise = dataclasses.replace(presets.FAST["denoise"], tv_weight=0.005)
    reference = presets.TV_REFERENCE_SIGMA
    assert denoise.total_variation_weight(reference) == denoise.tv_weight
    assert denoise.total_variation_weight(2 * reference) == denoise.tv_weight  # not above the measured
    assert denoise.total_variation_weight(reference / 2) == pytest.approx(
        denoise.tv_weight / 2 ** presets.TV_FALLOFF_EXPONENT)
    assert denoise.total_variation_weight(0.0) == 0.0


def test_total_variation_weight_follows_the_noise_when_a_preset_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(presets.FAST, "denoise", dataclasses.replace(presets.FAST["denoise"], tv_weight=0.005))
    used: list[float] = []
    real = tasks._plus_total_variation
    monkeypatch.setattr(tasks, "_plus_total_variation", lambda objective, weight: used.append(weight) or real(objective, weight))
    rng = np.random.default_rng(3)
    flat = np.full((32, 32, 3), 0.5, np.float32)
    noisy = np.clip(flat + rng.normal(0, 25 / 255, flat.shape), 0, 1).astype(np.float32)
    tasks.denoise(noisy, iterations=2, preset="fast", fits=1)
    assert used == [pytest.approx(presets.FAST["denoise"].total_variation_weight(noise_level.estimate_noise_sigma(noisy)))]
    assert used[0] == pytest.approx(presets.FAST["denoise"].tv_weight, rel=0.3)  # σ̂ ≈ 25/255
    used.clear()
    tasks.denoise(noisy, iterations=2, preset="fast", fits=2)  # the same weight for every fit
    assert used == [used[0]] * 2 and used[0] == pytest.approx(presets.FAST["denoise"].tv_weight, rel=0.3)
    used.clear()
    tasks.denoise(np.clip(flat + rng.normal(0, 5 / 255, flat.shape), 0, 1).astype(np.float32), iterations=2,
                  preset="fast", fits=1)
    assert used[0] < presets.FAST["denoise"].tv_weight / 300  # light noise: practically none
    used.clear()
    tasks.denoise(noisy, iterations=2, preset="fast", fits=1, strength=0.5)  # the strength scales the level
    assert used == [pytest.approx(presets.FAST["denoise"].total_variation_weight(
        0.5 * noise_level.estimate_noise_sigma(noisy)))]
    used.clear()
    tasks.denoise(noisy, iterations=2, preset="paper")
    tasks.dejpeg(noisy, iterations=2, preset="fast", fits=1)
    assert used == []


# ---------------------------------------------------------------------------------------------
# Automatic stopping on a real task


@pytest.mark.slow
def test_automatic_stop_lands_near_the_psnr_peak(f16: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = f16[224:288, 224:288]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    seen: list[float] = []
    monkeypatch.setitem(loop.fit_generators.__kwdefaults__, "preview_interval_s", 0.0)
    stats = loop.FitStats()
    restored = tasks.denoise(noisy, device="cpu", preset="fast", stats=stats,
                             preview=lambda so_far: seen.append(_psnr(so_far, clean)))
    result = _psnr(restored, clean)
    print(f"auto stop at {stats.iterations_run} (result from {stats.result_iteration}): "
          f"{result:.2f} dB, best average seen {max(seen):.2f} dB at {int(np.argmax(seen)) + 1}")
    assert stats.stopped_early
    # The discrepancy test ends it (the average as close to the input as the noise level):
    # 0.01-0.02 dB below the best average for seeds 0/1/2 on a 2-core AVX-512 EPYC
    # (2026-12-02). The plateau test alone, whose landing depends on the run's path (which
    # differs between CPUs), was 0.3-1.8 dB short on an AVX2 one.
    assert result >= max(seen) - 0.5
    assert result >= _psnr(noisy, clean) + 8.0


def test_denoise_strength_moves_the_automatic_stop(f16: np.ndarray) -> None:
    """The discrepancy stop fits down to strength × the measured noise level: a higher
    strength stops sooner, further from the noisy input (smoother); a lower one later."""
    clean = f16[232:280, 232:280]
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    runs = {}
    for strength in (1.0, 2.0):
        stats = loop.FitStats()
        restored = tasks.denoise(noisy, device="cpu", preset="fast", fits=1, stats=stats, strength=strength)
        runs[strength] = (stats.iterations_run, float(np.sqrt(np.mean((restored - noisy) ** 2))))
    assert runs[2.0][0] < runs[1.0][0]
    assert runs[2.0][1] > 1.15 * runs[1.0][1]
    with pytest.raises(ValueError, match="strength"):
        tasks.denoise(noisy, iterations=1, strength=0.0)


@pytest.mark.slow
def test_inpaint_stops_by_itself_near_the_hole_psnr_peak(kate: np.ndarray, kate_text_hole: np.ndarray,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clean = np.ascontiguousarray(kate[56:120, 180:244])
    hole = kate_text_hole[56:120, 180:244]
    damaged = np.where(hole[:, :, None], 0.0, clean).astype(np.float32)
    seen: list[float] = []
    monkeypatch.setitem(loop.fit_generators.__kwdefaults__, "preview_interval_s", 0.0)
    stats = loop.FitStats()
    filled = tasks.inpaint(damaged, hole, device="cpu", preset="fast", stats=stats,
                           preview=lambda so_far: seen.append(_psnr(so_far[hole], clean[hole])))
    result = _psnr(filled[hole], clean[hole])
    print(f"inpaint auto stop at {stats.iterations_run}: {result:.2f} dB in the hole, best average seen "
          f"{max(seen):.2f} dB at {int(np.argmax(seen)) + 1}")
    assert stats.stopped_early and stats.iterations_run < presets.FAST["inpaint"].iterations(64 * 64, torch.device("cpu"))
    assert result >= max(seen) - 0.3


# ---------------------------------------------------------------------------------------------
# Super-resolution


def test_lanczos_downsampler_keeps_flat_areas_and_removes_aliasing() -> None:
    for scale in tasks.SR_SCALES:
        taps = tasks.lanczos2_kernel(scale)
        assert taps.shape == (4 * scale,) and abs(taps.sum() - 1) < 1e-6
        np.testing.assert_allclose(taps, taps[::-1])
        down = tasks.Lanczos2Downsampler(scale, 3)
        flat = torch.full((1, 3, 16 * scale, 8 * scale), 0.7)
        out = down(flat)
        assert out.shape == (1, 3, 16, 8)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))
        # A pixel-level checkerboard is far above the new Nyquist frequency: filtered out.
        checker = torch.from_numpy((np.indices((16 * scale, 16 * scale)).sum(0) % 2).astype(np.float32))
        assert float(down(checker.expand(1, 3, -1, -1))[..., 2:-2, 2:-2].std()) < 0.02


def test_super_resolve_shapes_determinism_and_bad_scales(f16: np.ndarray) -> None:
    low = np.ascontiguousarray(f16[100:120, 100:124].mean(axis=2, keepdims=True)).astype(np.float32)
    first = tasks.super_resolve(low, 4, iterations=5, seed=2, device="cpu")
    assert first.shape == (80, 96, 1) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, tasks.super_resolve(low, 4, iterations=5, seed=2, device="cpu"))
    assert tasks.super_resolve(low, 8, iterations=1, device="cpu").shape == (160, 192, 1)
    for scale in (3, 1, 16, 2.0, True):
        with pytest.raises(BadInput, match="scale"):
            tasks.super_resolve(low, scale, iterations=1, device="cpu")
    with pytest.raises(BadInput, match="preset"):
        tasks.super_resolve(low, 2, iterations=1, device="cpu", preset="slow")


def _zebra_pair(size: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """High-resolution truth, its Lanczos downsampling (as the paper makes its inputs) and
    that input upscaled by bicubic interpolation."""
    path = DATA / "sr/zebra_GT.png"
    if not path.exists():
        pytest.fail(f"test data missing: {path}")
    truth_image = Image.open(path).convert("RGB")
    left, top = (truth_image.width - size) // 2, (truth_image.height - size) // 2
    truth_image = truth_image.crop((left, top, left + size, top + size))
    low_image = truth_image.resize((size // scale,) * 2, Image.LANCZOS)
    bicubic = low_image.resize((size,) * 2, Image.BICUBIC)
    return tuple(np.asarray(i, dtype=np.float32) / 255.0 for i in (truth_image, low_image, bicubic))


def test_super_resolve_beats_bicubic() -> None:
    truth, low, bicubic = _zebra_pair(64, 2)
    started = time.perf_counter()
    # 1200 of the 2048 iterations automatic mode runs here (+1.36 dB there). At 800 the gain
    # was +0.01 to +0.27 dB over seeds 0-3 on a 2-core AVX2 EPYC (the path differs between
    # CPUs), at 1200 +0.53 for seed 0: a margin that holds.
    result = tasks.super_resolve(low, 2, iterations=1200, seed=0, device="cpu", preset="fast")
    gain = _psnr(result, truth) - _psnr(bicubic, truth)
    print(f"SR ×2 32²→64², 1200 its: {gain:+.2f} dB over bicubic in {time.perf_counter() - started:.0f} s")
    assert gain >= 0.3


# ---------------------------------------------------------------------------------------------
# Blind JPEG artefact removal


def test_dejpeg_beats_the_jpeg_input(f16: np.ndarray) -> None:
    clean = (f16[40:104, 40:104] * 255).round().astype(np.uint8)  # sky and a wing edge
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, "JPEG", quality=10)
    jpeg = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    truth = clean.astype(np.float32) / 255.0
    stats = loop.FitStats()
    restored = tasks.dejpeg(jpeg, seed=0, device="cpu", preset="fast", stats=stats)
    gain = _psnr(restored, truth) - _psnr(jpeg, truth)
    print(f"dejpeg q10 64²: {gain:+.2f} dB over the JPEG, stopped after {stats.iterations_run} its")
    assert restored.shape == jpeg.shape and gain >= 0.8
    assert stats.stopped_early  # the run found its own end (≈ 425 of at most 1408 its)


def test_explicit_iterations_override_automatic_stopping(f16: np.ndarray) -> None:
    image = np.ascontiguousarray(f16[:40, :40])
    for task in (tasks.denoise, tasks.dejpeg):
        stats = loop.FitStats()
        task(image, iterations=30, device="cpu", preset="fast", stats=stats)
        assert (stats.iterations_run, stats.result_iteration, stats.stopped_early) == (30, 30, False)
