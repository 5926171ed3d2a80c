"""DIP on large images: tiles from a memory budget, seamless blending, per-tile fits by the
one loop, cancel/partial, inpaint and super-resolution tiles, the CLI. Tiny images with a
forced tiny tile (64 px) and a few iterations: these check the mechanics, not the quality."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import budget
from engine.dip import nets, tasks, tiles
from engine.dip.loop import FitStats
from engine.errors import BadInput, Cancelled
from engine.imageio import read_image

REPO = Path(__file__).resolve().parents[1]


def _image(height: int = 100, width: int = 150, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def _blend_by_hand(image: np.ndarray, grid: tiles.TileGrid, restored: dict, scale: int = 1) -> np.ndarray:
    rows, columns = tiles.blend_weights(grid, scale)
    out = np.zeros((image.shape[0] * scale, image.shape[1] * scale, image.shape[2]), np.float64)
    for iy, y in enumerate(grid.ys):
        for ix, x in enumerate(grid.xs):
            weight = rows[iy][:, None, None] * columns[ix][None, :, None]
            h, w = grid.tile_height * scale, grid.tile_width * scale
            out[y * scale:y * scale + h, x * scale:x * scale + w] += weight * restored[(y, x)]
    return out


@pytest.mark.parametrize("scale", [1, 2])
def test_blend_weights_are_a_partition_of_unity(scale: int) -> None:
    grid = tiles.plan(100, 150, 64)
    assert grid.count == len(grid.ys) * len(grid.xs) > 1
    ones = {box: np.ones((grid.tile_height * scale, grid.tile_width * scale, 1)) for box in grid.boxes()}
    np.testing.assert_allclose(_blend_by_hand(np.zeros((100, 150, 1)), grid, ones, scale), 1.0, atol=1e-6)
    # Tiles cover the image and have the planned size.
    assert grid.ys[0] == grid.xs[0] == 0
    assert grid.ys[-1] + grid.tile_height == 100 and grid.xs[-1] + grid.tile_width == 150


def test_blending_has_no_seam_and_keeps_flat_output_flat() -> None:
    image = _image()
    grid = tiles.plan(100, 150, 64)
    levels = {box: 0.2 + 0.1 * k for k, box in enumerate(grid.boxes())}

    def constant_per_tile(crop, origin, progress, cancel, preview, stats):
        return np.full_like(crop, levels[origin])

    out = tiles.fit_tiles(image, constant_per_tile, grid)
    # A seam is a jump between neighbouring pixels; cross-fading tiles that differ by Δ over a
    # sin² band of `overlap` px changes at most Δ·π/(2·overlap) per pixel.
    step = max(levels.values()) - min(levels.values())
    bound = step * math.pi / (2 * grid.overlap) + 1e-6
    assert np.abs(np.diff(out, axis=0)).max() <= bound
    assert np.abs(np.diff(out, axis=1)).max() <= bound
    identity = tiles.fit_tiles(image, lambda crop, *rest: crop, grid)
    np.testing.assert_allclose(identity, image, atol=1e-6)


def test_tiled_denoise_is_the_blend_of_per_tile_fits_and_deterministic() -> None:
    image = _image()
    stats = FitStats()
    tiled = tasks.denoise(image, iterations=3, seed=5, device="cpu", tile=64, stats=stats)
    grid = tiles.plan(100, 150, 64)
    assert stats.tiles == grid.count and stats.iterations_run == 3 * grid.count
    # Each tile is the untiled task (the one loop) on that tile, same seed, one fit (``auto``
    # fits a tiled image once; an untiled one on a 2-core CPU twice, side by side).
    per_tile = {(y, x): tasks.denoise(np.ascontiguousarray(image[y:y + 64, x:x + 64]), iterations=3, seed=5,
                                      device="cpu", fits=1) for y, x in grid.boxes()}
    np.testing.assert_allclose(tiled, _blend_by_hand(image, grid, per_tile), atol=2e-6)
    again = tasks.denoise(image, iterations=3, seed=5, device="cpu", tile=64)
    assert np.array_equal(tiled, again)


def test_progress_spans_the_tiles_and_cancel_returns_the_finished_tiles() -> None:
    image = _image()
    seen: list[tuple[float, str]] = []
    reached_second_tile = []

    def progress(fraction: float, text: str) -> None:
        seen.append((fraction, text))
        if "tile 2/" in text:
            reached_second_tile.append(True)

    with pytest.raises(Cancelled) as cancelled:
        tasks.denoise(image, iterations=200, device="cpu", tile=64, progress=progress,
                      cancel_requested=lambda: bool(reached_second_tile))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and f"tile 1/{tiles.plan(100, 150, 64).count}" in seen[0][1]
    partial = cancelled.value.partial
    assert isinstance(partial, np.ndarray) and partial.shape == image.shape
    # Tile 1 (top left) is restored; the last tile's own corner is still the input.
    assert not np.allclose(partial[:20, :20], image[:20, :20])
    np.testing.assert_array_equal(partial[-20:, -20:], image[-20:, -20:])


def test_tiled_inpaint_fits_only_tiles_with_holes_and_keeps_known_pixels() -> None:
    image = _image(seed=1)
    hole = np.zeros(image.shape[:2], dtype=bool)
    hole[5:9, 5:140:9] = True  # a scattered row of dots across the top: its window is the image
    stats = FitStats()
    out = tasks.inpaint(image, hole, iterations=2, device="cpu", tile=64, stats=stats)
    grid = tiles.plan(100, 150, 64)
    assert stats.tiles == len(grid.xs) < grid.count  # only the top row of tiles
    assert np.array_equal(out[~hole], image[~hole])
    assert not np.array_equal(out[hole], image[hole])
    solid = np.zeros(image.shape[:2], dtype=bool)
    solid[10:90, 10:140] = True
    with pytest.raises(BadInput, match="too large to fill"):
        tasks.inpaint(image, solid, iterations=2, device="cpu", tile=64)


def test_tiled_super_resolution_shape_and_size_rule() -> None:
    small = _image(40, 50)
    stats = FitStats()
    big = tasks.super_resolve(small, 2, iterations=2, device="cpu", tile=24, stats=stats)
    assert big.shape == (80, 100, 3) and stats.tiles > 1
    assert 0.0 <= big.min() and big.max() <= 1.0


def test_tile_side_follows_the_memory_budget_and_the_size_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    config = nets.LIGHT_DENOISE
    monkeypatch.setenv(budget.BUDGET_ENV, str(64 * 1024))  # 64 GB: the cap, 1024
    assert tiles.tile_side_for(config, cpu, 8000 * 8000) == budget.DIP_MAX_TILE
    monkeypatch.setenv(budget.BUDGET_ENV, "600")  # ~200 MB left for the net: a smaller tile
    side = tiles.tile_side_for(config, cpu, 256 * 256)
    assert config.min_side <= side < budget.DIP_MAX_TILE and side % config.size_multiple == 0
    assert side**2 * budget.DIP_BYTES_PER_PIXEL <= 200 << 20
    monkeypatch.setenv(budget.BUDGET_ENV, "1")  # nothing left: the smallest valid tile
    assert tiles.tile_side_for(config, cpu, 64) == config.min_side
    # A paper-sized net keeps more activations per pixel: smaller tiles for the same memory.
    monkeypatch.setenv(budget.BUDGET_ENV, "2000")
    assert tiles.tile_side_for(nets.PAPER_DENOISE, cpu, 64) < tiles.tile_side_for(config, cpu, 64)
    # Super-resolution: the ×scale tile meets the size rule.
    assert tiles.tile_side_for(config, cpu, 64, scale=4, requested=30) * 4 % config.size_multiple == 0


def test_budget_counts_one_tile_and_refuses_only_what_no_tile_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(budget.BUDGET_ENV, str(24 * 1024))  # the 24 GB machine
    need = budget.working_bytes("denoise", {"preset": "auto"}, 8000, 8000)
    assert need is not None and need <= 24 << 30
    budget.check("denoise", {"preset": "auto"}, (8000, 8000, 3), None)  # no refusal
    monkeypatch.setenv(budget.BUDGET_ENV, "2000")
    with pytest.raises(BadInput, match="needs about 4.2 GB"):
        budget.check("denoise", {"preset": "auto"}, (8000, 8000, 3), None)  # the image copies alone
    # Upscale with DIP fits the enlarged image (scale² per input pixel).
    monkeypatch.setenv(budget.BUDGET_ENV, str(24 * 1024))
    for op in ("denoise", "inpaint", "dejpeg"):
        assert budget.working_bytes(op, {"method": "dip", "preset": "auto"}, 8000, 8000) > 4 << 30
    upscale = budget.working_bytes("upscale", {"method": "dip", "scale": 4, "preset": "auto"}, 2000, 2000)
    assert upscale > budget.working_bytes("denoise", {"preset": "auto"}, 2000, 2000)
    monkeypatch.setenv(budget.BUDGET_ENV, "2000")
    with pytest.raises(BadInput, match="enlarged image"):
        budget.check("upscale", {"method": "dip", "scale": 4, "preset": "auto"}, (2000, 2000, 3), None)
    # The paper nets' memory factor in the (torch-free) budget matches the nets' activation counts.
    for op, net in (("denoise", nets.PAPER_DENOISE), ("inpaint", nets.PAPER_INPAINT)):
        ratio = net.activation_floats_per_pixel() / nets.LIGHT_DENOISE.activation_floats_per_pixel()
        assert budget._PAPER_NET_FACTOR[op] == pytest.approx(ratio, rel=0.05)


def test_cli_denoise_with_a_forced_tile(tmp_path: Path) -> None:
    pixels = (_image(96, 140, seed=2) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "engine", "denoise", str(tmp_path / "in.png"), "-o",
                             str(tmp_path / "out.png"), "--method", "dip", "--iterations", "2", "--tile", "64"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    count = tiles.plan(96, 140, 64).count
    assert count > 1 and f"tile {count}/{count}" in result.stderr
    out = read_image(tmp_path / "out.png").pixels
    assert out.shape == (96, 140, 3) and not np.array_equal(out, pixels / 255.0)


def test_time_estimate_counts_one_run_per_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.dip import presets

    monkeypatch.setenv(budget.BUDGET_ENV, str(64 * 1024))  # tiles of the maximum side, 1024
    one_tile = presets.estimate_seconds("denoise", "fast", "cpu", 100, 1024, 1024)
    grid = tiles.plan(3000, 2000, budget.DIP_MAX_TILE)
    assert presets.estimate_seconds("denoise", "fast", "cpu", 100, 3000, 2000) == pytest.approx(
        grid.count * one_tile, rel=0.01)


def test_trained_nets_count_their_image_copies_and_refuse_what_even_small_tiles_cannot_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX ops keep the whole image (and Upscale's enlarged one) in memory and tile the
    net: their need is the copies plus the tiles' activations, which shrink to what is free."""
    monkeypatch.setenv(budget.BUDGET_ENV, str(24 * 1024))
    denoise = budget.working_bytes("denoise", {"method": "net"}, 3000, 4000)
    sharpen = budget.working_bytes("sharpen", {}, 3000, 4000)
    x2 = budget.working_bytes("upscale", {"method": "rdn", "scale": 2}, 3000, 4000)
    x4 = budget.working_bytes("upscale", {"method": "rdn", "scale": 4}, 3000, 4000)
    x8 = budget.working_bytes("upscale", {"method": "rdn", "scale": 8}, 3000, 4000)
    assert denoise == sharpen and denoise < x2 < x4 < x8
    assert x4 > 12e6 * 16 * budget.NET_IMAGE_BYTES_PER_PIXEL  # the ×4 result's copies alone
    # With less memory free the activations get less (smaller tiles), down to the minimum.
    monkeypatch.setenv(budget.BUDGET_ENV, "1400")
    short = budget.working_bytes("denoise", {"method": "net"}, 3000, 4000)
    assert short < denoise and short <= 1400 << 20
    budget.check("denoise", {"method": "net"}, (3000, 4000, 3), None)  # fits with small tiles
    with pytest.raises(BadInput, match=r"upscale on the enlarged image .* needs about 7.2 GB .* 1.4 GB free"):
        budget.check("upscale", {"method": "rdn", "scale": 4}, (3000, 4000, 3), None)
    # A DIP method is counted by its own rule; the net's rule does not apply to it.
    assert budget.working_bytes("denoise", {"method": "dip", "preset": "auto"}, 3000, 4000) != short


def test_onnx_runner_tiles_shrink_when_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.onnx import runner

    rgb = np.zeros((2000, 2000, 3), np.float32)
    monkeypatch.setenv(budget.BUDGET_ENV, str(24 * 1024))
    roomy = runner.cpu_activation_budget(2000 * 2000, 3, 1)
    assert roomy == runner.CPU_BUDGET_BYTES - rgb.size * 4 * 2  # the runner's own cap
    monkeypatch.setenv(budget.BUDGET_ENV, "700")
    tight = runner.cpu_activation_budget(2000 * 2000, 3, 1)
    assert budget.NET_MIN_ACTIVATION_BYTES <= tight < roomy
    assert tight + budget.net_image_bytes(2000 * 2000) <= 700 << 20 or tight == budget.NET_MIN_ACTIVATION_BYTES
    monkeypatch.setenv(budget.BUDGET_ENV, "1")
    assert runner.cpu_activation_budget(2000 * 2000, 3, 1) == budget.NET_MIN_ACTIVATION_BYTES
