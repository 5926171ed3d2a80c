"""Averaged fits (`tasks._averaged_fits`): several independent DIP runs, one mean (CPU only)."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import ops
from engine.dip import loop, presets, tasks
from engine.dip.loop import FitStats
from engine.symmetry import grid_symmetry
from engine.errors import BadInput, Cancelled

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dip"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10.0 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def _smooth_image(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    return np.stack([0.5 + 0.3 * np.sin(6 * x), 0.4 + 0.3 * np.cos(5 * y), 0.3 + 0.4 * x * y],
                    axis=2).astype(np.float32)


def test_grid_symmetries_invert_and_are_eight_distinct_maps() -> None:
    image = np.arange(5 * 7 * 2, dtype=np.float32).reshape(5, 7, 2)
    seen = set()
    for index in range(8):
        turned = grid_symmetry(image, index)
        assert np.array_equal(grid_symmetry(turned, index, inverse=True), image)
        assert turned.shape[:2] == ((7, 5) if index & 4 else (5, 7))
        seen.add(turned.tobytes() + bytes(turned.shape))
    assert len(seen) == 8
    hole = np.zeros((5, 7), bool)
    hole[1, 2] = True
    assert grid_symmetry(hole, 5)[2, 3]  # transposed, then columns flipped


def test_fits_average_single_runs_on_turned_images_with_successive_seeds() -> None:
    image = np.random.default_rng(1).random((24, 40, 3)).astype(np.float32)
    stats = FitStats(fit_results=[])
    averaged = tasks.denoise(image, iterations=15, seed=7, fits=3, device="cpu", stats=stats)
    singles = []
    for index in range(3):
        turned = np.ascontiguousarray(grid_symmetry(image, index))
        single = tasks.denoise(turned, iterations=15, seed=7 + index, fits=1, device="cpu")
        singles.append(grid_symmetry(single, index, inverse=True))
    np.testing.assert_allclose(averaged, np.mean(singles, axis=0), rtol=0, atol=1e-6)
    # The first fit is the single-fit run itself; the stats add the three runs up.
    assert np.array_equal(stats.fit_results[0][0], tasks.denoise(image, iterations=15, seed=7, device="cpu",
                                                                 preset="fast"))
    assert (stats.fits, stats.iterations_run, len(stats.fit_results)) == (3, 45, 3)


def test_two_fits_denoise_better_than_one() -> None:
    f16 = np.asarray(Image.open(DATA / "denoising" / "F16_GT.png").convert("RGB"), dtype=np.float32) / 255
    clean = f16[232:280, 232:280]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    stats = FitStats(fit_results=[])
    averaged = tasks.denoise(noisy, iterations=400, fits=2, device="cpu", stats=stats)
    singles = [_psnr(result, clean) for result, _ in stats.fit_results]
    two = _psnr(averaged, clean)
    print(f"F16 48² σ=25, 400 its: single fits {singles[0]:.2f} / {singles[1]:.2f} dB, their mean {two:.2f} dB")
    # Measured 29.29 / 29.93 → 30.01: the fits' errors are far from identical.
    assert two > np.mean(singles) + 0.2


def test_inpaint_and_super_resolve_with_fits() -> None:
    image = _smooth_image(32, 40)
    hole = np.zeros((32, 40), bool)
    hole[10:18, 12:30] = True
    filled = tasks.inpaint(image, hole, iterations=10, fits=2, device="cpu")
    assert np.array_equal(filled[~hole], image[~hole])  # bit for bit, even through a mean
    texts: list[str] = []
    with pytest.raises(Cancelled) as raised:
        tasks.inpaint(image, hole, iterations=300, fits=3, device="cpu",
                      progress=lambda fraction, text: texts.append(text),
                      cancel_requested=lambda: any("3/3" in text for text in texts))
    assert np.array_equal(raised.value.partial[~hole], image[~hole])
    big = tasks.super_resolve(image[:16, :20], 2, iterations=5, fits=2, device="cpu")
    assert big.shape == (32, 40, 3) and big.dtype == np.float32


def _one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "cpu_fit_plan", lambda fits: (1, 1))


def _side_by_side(monkeypatch: pytest.MonkeyPatch, count: int = 2) -> None:
    monkeypatch.setattr(loop, "cpu_fit_plan", lambda fits: (min(count, fits), 1))


def test_progress_covers_all_fits_and_cancel_returns_the_finished_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _one_at_a_time(monkeypatch)
    image = _smooth_image(32, 32)
    messages: list[tuple[float, str]] = []
    first = tasks.denoise(image, iterations=12, seed=3, device="cpu")

    def cancel_in_second_fit() -> bool:
        return any("fit 2/3" in text for _, text in messages)

    with pytest.raises(Cancelled) as raised:
        tasks.denoise(image, iterations=12, seed=3, fits=3, device="cpu",
                      progress=lambda fraction, text: messages.append((fraction, text)),
                      cancel_requested=cancel_in_second_fit)
    assert np.array_equal(raised.value.partial, first)
    fractions = [fraction for fraction, _ in messages]
    assert fractions == sorted(fractions) and 0.3 < fractions[-1] <= 1 / 3 + 0.01
    assert messages[0][1].startswith("DIP denoise: fit 1/3")


def test_fits_side_by_side_give_the_same_mean_as_one_after_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _smooth_image(32, 32)
    noisy = np.clip(image + np.random.default_rng(1).normal(0, 0.1, image.shape), 0, 1).astype(np.float32)
    hole = np.zeros((32, 32), bool)
    hole[8:20, 10:22] = True
    runs = {}
    for mode, arrange in (("one at a time", _one_at_a_time), ("side by side", _side_by_side)):
        arrange(monkeypatch)
        threads_before = torch.get_num_threads()
        messages: list[tuple[float, str]] = []
        stats = FitStats()
        runs[mode] = (tasks.denoise(noisy, iterations=15, seed=2, fits=3, device="cpu", stats=stats,
                                    progress=lambda fraction, text: messages.append((fraction, text))),
                      tasks.inpaint(image, hole, iterations=8, fits=2, device="cpu"))
        assert torch.get_num_threads() == threads_before  # the run's thread count is undone
        fractions = [fraction for fraction, _ in messages]
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        assert stats.fits == 3 and stats.iterations_run == 45
        assert stats.side_by_side == (2 if mode == "side by side" else 1)
    for one, other in zip(runs["one at a time"], runs["side by side"]):
        assert np.array_equal(one, other)


def test_progress_names_the_fits_running_side_by_side() -> None:
    both_halfway = threading.Barrier(2)
    texts: list[str] = []

    def fit_one(inputs, seed, progress, cancel_requested, preview, stats):
        progress(0.5, "t: halfway")
        both_halfway.wait(timeout=30)
        progress(0.75, "t: later")
        both_halfway.wait(timeout=30)
        return np.full_like(inputs[0], float(seed))

    image = np.zeros((4, 4, 3), np.float32)
    mean = tasks._averaged_fits(fit_one, (image,), 2, 0, label="t", progress=lambda f, text: texts.append(text),
                                cancel_requested=None, preview=None, stats=None, side_by_side=2)
    assert np.array_equal(mean, np.full_like(image, 0.5))
    assert "t: fit 1+2/2, later" in texts


def test_a_fits_last_message_names_that_fit_while_another_runs() -> None:
    # Fit 2 stops first: its "stopped" line must not be labelled with fit 1, which runs on.
    second_done = threading.Event()
    texts: list[str] = []

    def fit_one(inputs, seed, progress, cancel_requested, preview, stats):
        if seed == 1:
            progress(0.4, "t: iteration 10")
            progress(1.0, "t: settled, stopped after 20 iterations")
            second_done.set()
        else:
            progress(0.4, "t: iteration 10")
            assert second_done.wait(timeout=30)
            progress(0.8, "t: iteration 30")
            progress(1.0, "t: settled, stopped after 40 iterations")
        return np.full_like(inputs[0], float(seed))

    image = np.zeros((4, 4, 3), np.float32)
    tasks._averaged_fits(fit_one, (image,), 2, 0, label="t", progress=lambda f, text: texts.append(text),
                         cancel_requested=None, preview=None, stats=None, side_by_side=2)
    assert "t: fit 2/2, settled, stopped after 20 iterations" in texts
    assert "t: fit 1/2, iteration 30" in texts
    assert "t: fit 1/2, settled, stopped after 40 iterations" in texts
    assert not any("fit 1/2, settled, stopped after 20" in text for text in texts)


def test_fits_side_by_side_cancel_and_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    _side_by_side(monkeypatch)
    image = _smooth_image(32, 32)
    first = tasks.denoise(image, iterations=12, seed=3, device="cpu")
    # Fits 1 and 2 finish, the cancel comes while fits 3 and 4 run: the mean of 1 and 2.
    done: list[int] = []

    def fit_then_wait(inputs, seed, progress, cancel_requested, preview, stats):
        if seed < 2:
            done.append(seed)
            return np.full_like(inputs[0], seed + 1.0)
        while not cancel_requested():
            pass
        raise Cancelled("cancelled by the user", np.zeros_like(inputs[0]))

    with pytest.raises(Cancelled) as raised:
        tasks._averaged_fits(fit_then_wait, (image,), 4, 0, label="t", progress=None,
                             cancel_requested=lambda: len(done) == 2, preview=None, stats=None, side_by_side=2)
    assert np.array_equal(raised.value.partial, np.full_like(image, 1.5))
    # A cancel before any fit finished: the lowest running fit's partial result, upright.
    with pytest.raises(Cancelled) as raised:
        tasks.denoise(image, iterations=12, seed=3, fits=2, device="cpu", cancel_requested=lambda: True)
    assert raised.value.partial is None or raised.value.partial.shape == first.shape

    # One fit failing stops the other and its error reaches the caller.
    started: list[int] = []

    def fit_one(inputs, seed, progress, cancel_requested, preview, stats):
        started.append(seed)
        if seed == 0:
            raise RuntimeError("boom")
        while not cancel_requested():
            pass
        raise Cancelled("stopped", None)

    with pytest.raises(RuntimeError, match="boom"):
        tasks._averaged_fits(fit_one, (image,), 4, 0, label="t", progress=None, cancel_requested=None,
                             preview=None, stats=None, side_by_side=2)
    # Fit 2 stopped (else this would hang); fits 3 and 4 never started.
    assert 0 in started and set(started) <= {0, 1}


def test_fits_run_one_at_a_time_on_tiles_gpus_and_short_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    _side_by_side(monkeypatch, 4)
    cpu, net = torch.device("cpu"), presets.FAST["denoise"].net
    assert tasks._fits_side_by_side(4, net, cpu, 64 * 64, tiled=False) == 4
    assert tasks._fits_side_by_side(1, net, cpu, 64 * 64, tiled=False) == 1
    assert tasks._fits_side_by_side(4, net, cpu, 64 * 64, tiled=True) == 1
    assert tasks._fits_side_by_side(4, net, torch.device("cuda"), 64 * 64, tiled=False) == 1
    # Memory for two 512² fits besides torch itself, not for four.
    per_fit = tasks.tiles.net_bytes_per_pixel(net) * 512 * 512
    monkeypatch.setattr(tasks.tiles, "free_bytes", lambda device: int(tasks.budget.TORCH_BASE_BYTES + 2.5 * per_fit))
    assert tasks._fits_side_by_side(4, net, cpu, 512 * 512, tiled=False) == 2


def test_cpu_fit_plan_shares_the_cores_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, fits, plan in ((2, 4, (2, 1)), (8, 4, (4, 2)), (16, 3, (3, 5)), (1, 4, None)):
        monkeypatch.setattr(loop, "available_cpu_threads", lambda cores=cores: cores)
        assert loop.cpu_fit_plan(fits) == (plan or (1, loop.cpu_threads_for_fit()))
    monkeypatch.setattr(loop, "available_cpu_threads", lambda: 8)
    assert loop.cpu_fit_plan(1) == (1, loop.cpu_threads_for_fit())


def test_auto_on_a_cpu_adds_a_fit_on_the_core_one_fit_leaves_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, single_fit_threads, expected in ((2, 1, 2), (4, 3, 1), (8, 7, 1), (1, 1, 1), (8, 4, 2)):
        monkeypatch.setattr(loop, "available_cpu_threads", lambda cores=cores: cores)
        monkeypatch.setattr(loop, "cpu_threads_for_fit", lambda threads=single_fit_threads: threads)
        assert loop.spare_core_fits() == expected, (cores, single_fit_threads)
    # A 2-core machine: auto = fast with two fits side by side (if memory allows, untiled).
    monkeypatch.setattr(loop, "spare_core_fits", lambda: 2)
    _side_by_side(monkeypatch, 2)
    cpu, fast = torch.device("cpu"), presets.FAST["denoise"]
    assert tasks._fit_count(None, "auto", fast, cpu, 64 * 64, tiled=False) == 2
    assert tasks._fit_count(None, "fast", fast, cpu, 64 * 64, tiled=False) == 1
    assert tasks._fit_count(3, "auto", fast, cpu, 64 * 64, tiled=False) == 3  # asked for
    assert tasks._fit_count(None, "auto", fast, cpu, 64 * 64, tiled=True) == 1
    assert tasks._fit_count(None, "auto", presets.QUALITY["denoise"], torch.device("cuda"), 64 * 64, False) == 1
    stats = FitStats()
    image = _smooth_image(24, 24)
    auto = tasks.denoise(image, iterations=6, seed=1, device="cpu", stats=stats)
    assert stats.fits == 2 and stats.side_by_side == 2
    assert np.array_equal(auto, tasks.denoise(image, iterations=6, seed=1, device="cpu", preset="fast", fits=2))
    # Its estimate: one round of two one-thread fits, i.e. one (one-thread) fit's time.
    monkeypatch.setattr(loop, "cpu_threads_for_fit", lambda: 1)
    assert presets.estimate_seconds("denoise", "auto", "cpu", 300, 256, 256) == pytest.approx(
        presets.estimate_seconds("denoise", "fast", "cpu", 300, 256, 256), rel=0.01)


def test_quality_on_a_cpu_is_fast_with_four_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for task in presets.TASKS:
        quality = presets.task_preset("quality", task, cpu, 256 * 256)
        assert quality.fits == presets.CPU_QUALITY_FITS == 4
        assert quality.net == presets.FAST[task].net and quality.stop == presets.FAST[task].stop
        # On a GPU quality keeps the paper-sized nets, one fit; fast and paper fit once.
        assert presets.task_preset("quality", task, cuda, 256 * 256) is presets.QUALITY[task]
        assert presets.FAST[task].fits == presets.PAPER[task].fits == presets.QUALITY[task].fits == 1
    _one_at_a_time(monkeypatch)
    fast = presets.estimate_seconds("denoise", "fast", "cpu", None, 256, 256)
    assert presets.estimate_seconds("denoise", "quality", "cpu", None, 256, 256) == pytest.approx(4 * fast, rel=0.01)
    assert presets.estimate_seconds("denoise", "fast", "cpu", None, 256, 256, fits=2) == pytest.approx(2 * fast, rel=0.01)
    # Side by side on one thread each: rounds of fits, each round as long as a 1-thread fit.
    _side_by_side(monkeypatch, 2)
    one_thread = fast * presets.cpu_thread_factor(1) / presets.cpu_thread_factor()
    assert presets.estimate_seconds("denoise", "quality", "cpu", None, 256, 256) == pytest.approx(2 * one_thread, rel=0.01)
    assert presets.estimate_seconds("denoise", "fast", "cpu", None, 256, 256, fits=3) == pytest.approx(2 * one_thread, rel=0.01)


def test_dip_estimates_follow_the_speed_of_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished CPU fit records how its time per iteration compared with the table; CPU
    estimates then scale by the mean of the last records; iteration budgets never do."""
    import json

    from engine import measured_speed
    from engine.dip import nets

    monkeypatch.setenv("NEURAL_RESTORE_LOG_DIR", str(tmp_path))
    before = presets.estimate_seconds("denoise", "fast", "cpu", 1000, 1024, 1024, fits=1)
    budget = presets.task_preset("fast", "denoise", torch.device("cpu"), 256 * 256).iterations(256 * 256, torch.device("cpu"))
    stats = FitStats()
    tasks.denoise(_smooth_image(32, 32), iterations=12, preset="fast", fits=1, device="cpu", stats=stats)
    assert not (tmp_path / measured_speed.FILE_NAME).exists()  # too short to say anything
    monkeypatch.setattr(presets, "MIN_RECORDED_SECONDS", 0.0)
    monkeypatch.setattr(presets, "MIN_RECORDED_ITERATIONS", 10)
    seen = []
    record = presets.record_cpu_fit
    monkeypatch.setattr(presets, "record_cpu_fit", lambda *args: seen.append(args) or record(*args))
    tasks.denoise(_smooth_image(32, 32), iterations=12, preset="fast", fits=1, device="cpu", stats=stats)
    ((net, pixels, seconds, iterations, threads),) = seen
    # the fit's own time (the op's, in stats, also counts what surrounds the fit) on its padded input
    assert net == nets.LIGHT_DENOISE and pixels >= 32 * 32 and iterations == 12 and 0 < seconds <= stats.seconds
    (ratio,) = json.loads((tmp_path / measured_speed.FILE_NAME).read_text())["dip:light_denoise"]
    tabled = presets.milliseconds_per_iteration(net, pixels, torch.device("cpu"), threads, measured=False)
    assert ratio == pytest.approx(seconds * 1000 / iterations / tabled, rel=1e-3)
    after = presets.estimate_seconds("denoise", "fast", "cpu", 1000, 1024, 1024, fits=1)
    assert after == pytest.approx(before * ratio, rel=0.01)
    # The mean of the last records; another net keeps its own; budgets stay as they were.
    for value in (2.0, 3.0, 4.0):
        measured_speed.record_value("dip:light_denoise", value)
    assert presets.machine_speed_factor(nets.LIGHT_DENOISE) == pytest.approx(3.0)
    assert presets.machine_speed_factor(nets.LIGHT_INPAINT) == 1.0
    assert presets.estimate_seconds("denoise", "fast", "cpu", 1000, 1024, 1024, fits=1) == pytest.approx(3 * before, rel=0.01)
    assert presets.task_preset("fast", "denoise", torch.device("cpu"), 256 * 256).iterations(
        256 * 256, torch.device("cpu")) == budget


def test_bad_fits_are_refused() -> None:
    image = np.zeros((32, 32, 3), np.float32)
    for fits in (-1, 17, 2.5, True, "2"):
        with pytest.raises(BadInput, match="fits"):
            tasks.denoise(image, iterations=1, fits=fits, device="cpu")
    for op in ("denoise", "inpaint", "dejpeg", "upscale"):
        assert ops.OPS[op].validate({"fits": 3})["fits"] == 3
        assert ops.OPS[op].validate({})["fits"] == 0
        with pytest.raises(BadInput, match="fits"):
            ops.OPS[op].validate({"fits": 17})
    assert "fits" not in {param.name for param in ops.OPS["decompose"].params}


def test_cli_averages_fits(tmp_path: Path) -> None:
    Image.fromarray((_smooth_image(32, 32) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    result = subprocess.run([sys.executable, "-m", "engine", "denoise", str(tmp_path / "in.png"), "-o",
                             str(tmp_path / "out.png"), "--method", "dip", "--iterations", "3", "--fits", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fit 2/2" in result.stderr
    assert Image.open(tmp_path / "out.png").size == (32, 32)
    refused = subprocess.run([sys.executable, "-m", "engine", "denoise", str(tmp_path / "in.png"), "-o",
                              str(tmp_path / "bad.png"), "--fits", "40"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "fits" in refused.stderr and "Traceback" not in refused.stderr
