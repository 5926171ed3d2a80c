"""Inpaint with method "patch": texture copied from the image (engine.patch_fill, OpenCV's
shift-map inpainting) — for removing objects, where the net's and DIP's fills are smooth."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import ops
from engine.fill import smooth_fill
from engine.imageio import read_image, write_image
from engine.patch_fill import blend_seams, context_for, copied_from, patch_fill, wide_part
from tests.test_inpaint_net import _hole_psnr

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _pattern(height: int, width: int, channels: int) -> np.ndarray:
    """A texture that repeats every 8 rows and 12 columns (cloth, tiles, a fence)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.5 + 0.2 * np.sin(2 * np.pi * y / 8) + 0.2 * np.cos(2 * np.pi * x / 12 + c) for c in range(channels)]
    return np.stack(planes, axis=2).astype(np.float32)


def _gradient_energy(image: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute horizontal + vertical difference at the pixels ``where`` (texture)."""
    dx = np.abs(np.diff(image, axis=1, append=image[:, -1:]))
    dy = np.abs(np.diff(image, axis=0, append=image[-1:]))
    return float((dx + dy)[where].mean())


@pytest.mark.parametrize("channels", [1, 3])
def test_patch_fill_continues_a_repeating_texture_and_keeps_every_other_pixel(channels: int) -> None:
    truth = _pattern(96, 120, channels)
    hole = np.zeros((96, 120), bool)
    hole[40:60, 50:72] = True
    damaged = np.where(hole[..., None], 0.0, truth).astype(np.float32)  # the hole's content must not matter
    out = patch_fill(damaged, hole)
    assert out.shape == truth.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~hole], truth[~hole])
    copied, smooth = _hole_psnr(out, truth, hole), _hole_psnr(smooth_fill(damaged, hole), truth, hole)
    assert copied > 35.0 and copied > smooth + 10.0, (copied, smooth)


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_patch_fill_takes_holes_at_the_image_edge(corner: str) -> None:
    truth = _pattern(64, 72, 3)
    hole = np.zeros((64, 72), bool)
    if corner == "top-left":
        hole[:14, :20] = True
    else:
        hole[50:, 52:] = True
    out = patch_fill(truth, hole)
    np.testing.assert_array_equal(out[~hole], truth[~hole])
    assert _hole_psnr(out, truth, hole) > 30.0


def test_patch_fill_copies_known_values_at_full_precision() -> None:
    # 16-bit values that 8 bits cannot hold: every copied value is one of the known ones.
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 65536, size=(64, 64, 3)).astype(np.float32) / 65535.0
    hole = np.zeros((64, 64), bool)
    hole[20:30, 24:40] = True
    out = patch_fill(levels, hole, seams=False)
    rows, cols = copied_from(out, levels, hole)
    assert (rows[hole] >= 0).mean() > 0.95  # each copy is found again by its value
    found = hole & (rows >= 0)
    np.testing.assert_array_equal(out[found], levels[rows[found], cols[found]])
    known = np.unique(np.round(levels[~hole] * 65535).astype(np.int64))
    filled = out[hole] * 65535
    np.testing.assert_allclose(filled, np.round(filled), atol=0.02)
    assert np.isin(np.round(filled).astype(np.int64), known).all()


def test_blending_removes_the_step_between_two_copies_and_keeps_their_texture() -> None:
    """A hole filled from two places whose brightness differs by 0.2: the bare copies step by
    0.2 where they meet and at the hole's edge; blended, every neighbour difference is the
    sources' own (the texture stays) and the steps are gone."""
    rng = np.random.default_rng(5)
    texture = rng.random((40, 80, 1)).astype(np.float32) * 0.3 + 0.2
    image = texture.copy()
    image[:, 55:] += 0.2  # the right source is brighter
    hole = np.zeros((40, 80), bool)
    hole[10:30, 20:40] = True
    rows, cols = np.mgrid[0:40, 0:80]
    src_cols = np.where(cols < 30, cols - 18, cols + 30)  # left half from cols 2–11, right from 60–69
    filled = image.copy()
    filled[hole] = image[rows[hole], src_cols[hole]]
    found_rows, found_cols = copied_from(filled, image, hole)
    np.testing.assert_array_equal(found_rows[hole], rows[hole])
    np.testing.assert_array_equal(found_cols[hole], src_cols[hole])
    out = blend_seams(filled, hole, found_rows, found_cols)
    np.testing.assert_array_equal(out[~hole], image[~hole])
    # Inside each copied region the differences are the source's (the texture), give or take
    # the smooth correction that takes the 0.2 away over the region.
    for inner in ((slice(11, 29), slice(21, 28)), (slice(11, 29), slice(31, 38))):
        solved, copied = np.diff(out[inner], axis=1).ravel(), np.diff(filled[inner], axis=1).ravel()
        assert np.corrcoef(solved, copied)[0, 1] > 0.97 and np.abs(solved - copied).max() < 0.05
    # Across the seam (cols 29 | 30) and the hole's right edge (39 | 40) the step is what the
    # sources have between neighbours, not the 0.2 of brightness between them.
    for left in (29, 39):
        step = out[10:30, left + 1, 0] - out[10:30, left, 0]
        bare = filled[10:30, left + 1, 0] - filled[10:30, left, 0]
        assert abs(float(bare.mean())) > 0.15 and abs(float(step.mean())) < 0.03, (left, step.mean(), bare.mean())
    assert abs(float(out[10:30, 30:40].mean() - texture[10:30, 60:70].mean())) < 0.05  # brightness of its surroundings


def test_patch_fill_keeps_a_photos_texture_where_the_net_smooths() -> None:
    """A block in barbara's striped tablecloth: the patch fill's detail (gradient energy) is
    that of the cloth round it; the smooth fill has a fraction of it."""
    from PIL import Image

    photo = np.asarray(Image.open(SHARED / "dip" / "restoration" / "barbara.png").convert("L"), np.float32)
    crop = np.ascontiguousarray(photo[330:458, 0:128, None] / 255.0)  # the tablecloth, bottom left
    hole = np.zeros((128, 128), bool)
    hole[48:80, 48:80] = True
    ring = np.zeros_like(hole)
    ring[36:92, 36:92] = True
    ring &= ~hole
    out = patch_fill(crop, hole)
    around = _gradient_energy(crop, ring)
    assert _gradient_energy(out, hole) > 0.7 * around
    assert _gradient_energy(smooth_fill(crop, hole), hole) < 0.5 * around


def test_inpaint_op_method_patch_copies_wide_parts_nets_thin_ones_blends_feathering(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)  # the shipped inpainting net
    image = np.concatenate([_pattern(64, 96, 3), np.full((64, 96, 1), 0.5, np.float32)], axis=2)
    mask = np.zeros((64, 96), np.float32)
    mask[20:36, 30:46] = 1.0  # a block: wide, copied
    mask[20:36, 28:30] = 0.5  # its feathered edge: half the fill, half the image
    mask[8:11, 60:90] = 1.0  # a 3 px scratch: thin, the net's
    hard = (mask > 0).astype(np.float32)
    block, scratch = (slice(20, 36), slice(30, 46)), (slice(8, 11), slice(60, 90))
    wide = wide_part(hard > 0)
    assert wide[block].all() and not wide[scratch].any()
    (layer,) = ops.run_op("inpaint", image, mask, {"method": "patch"})
    (full,) = ops.run_op("inpaint", image, hard, {"method": "patch"})
    (net,) = ops.run_op("inpaint", image, hard, {"method": "net"})
    out = layer.pixels
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert np.all(out[mask == 1.0][:, 3] == 1.0)  # filled pixels become opaque
    edge = mask == 0.5
    np.testing.assert_allclose(out[edge], 0.5 * full.pixels[edge] + 0.5 * image[edge], atol=1e-6)
    np.testing.assert_array_equal(full.pixels[scratch], net.pixels[scratch])
    assert _hole_psnr(full.pixels[..., :3], image[..., :3], np.pad(np.ones((16, 16), bool), ((20, 28), (30, 50)))) > 35.0
    small, large = (ops.estimate_seconds("inpaint", {"method": "patch"}, side, side) for side in (40, 400))
    assert 0 < small < large < 60


def test_inpaint_op_method_patch_leaves_scattered_pixels_to_the_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half the pixels missing at random: no patch fits, so the net fills them (copying there
    made noise); the result is the net's."""
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    image = _pattern(48, 48, 3)
    mask = (np.random.default_rng(0).random((48, 48)) < 0.5).astype(np.float32)
    assert not wide_part(mask > 0).any()
    (patch,) = ops.run_op("inpaint", image, mask, {"method": "patch"})
    (net,) = ops.run_op("inpaint", image, mask, {"method": "net"})
    np.testing.assert_array_equal(patch.pixels, net.pixels)


def test_a_missing_opencv_contrib_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from engine.errors import EngineError

    monkeypatch.delattr(cv2, "xphoto")  # as when a plain opencv-python shadows the contrib wheel
    hole = np.zeros((32, 32), bool)
    hole[8:24, 8:24] = True
    with pytest.raises(EngineError, match="opencv-contrib-python-headless"):
        patch_fill(_pattern(32, 32, 3), hole)


def test_a_long_fill_keeps_reporting_progress_and_stops_on_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV's fill cannot report progress: the op reports for it every HEARTBEAT_S (the
    plug-in stops an engine silent for 120 s), and a cancel asked for meanwhile ends the op
    as the fill returns."""
    import threading
    import time

    from engine.errors import Cancelled

    monkeypatch.setattr(ops, "HEARTBEAT_S", 0.05)
    reports: list[tuple[float, str]] = []
    ctx = ops.JobContext(lambda fraction, text: reports.append((fraction, text)))
    caller = threading.get_ident()
    ran_in: list[int] = []
    assert ops._with_heartbeat(lambda: ran_in.append(threading.get_ident()) or time.sleep(0.4) or "done",
                               ctx, 1.0, "copying") == "done"
    assert ran_in == [caller]  # the work itself stays in the caller's thread
    fractions = [f for f, _ in reports]
    assert len(reports) >= 4 and fractions == sorted(fractions) and max(fractions) <= 0.95
    assert all(text.startswith("copying, ") for _, text in reports)
    count = len(reports)
    time.sleep(0.15)
    assert len(reports) == count  # no report after it returned
    cancelled = ops.JobContext(lambda fraction, text: None, lambda: True)
    with pytest.raises(Cancelled):
        ops._with_heartbeat(lambda: time.sleep(0.1), cancelled, 1.0, "copying")
    with pytest.raises(ValueError, match="boom"):  # the work's error reaches the caller
        ops._with_heartbeat(lambda: (_ for _ in ()).throw(ValueError("boom")), ctx, 1.0, "copying")


def test_every_run_of_the_op_copies_the_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the op (heartbeat and all), run after run, the fill of a repeating pattern whose
    repeats are not bit-identical is near exact. Not bit for bit the same: OpenCV's shift-map
    fill can differ slightly from call to call in one process (0.008 at most here), and far
    more when called from a worker thread (the real-GIMP test's pattern: 32 or 70 dB), which is
    why it runs in the op's own thread."""
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    image = np.round(_pattern(48, 48, 3) * 255) / 255
    image = (image + np.random.default_rng(1).integers(0, 2, image.shape) / 255).astype(np.float32)
    mask = np.zeros((48, 48), np.float32)
    mask[24:38, 20:38] = 1.0
    for _ in range(4):
        assert _hole_psnr(ops.run_op("inpaint", image, mask, {})[0].pixels, image, mask > 0) > 35.0


def test_the_texture_fill_is_refused_when_its_memory_is_not_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any work: a hole whose box would need more memory than is free is refused with
    the need, and the dialog's memory figure for the selection's box is the same model."""
    from engine import budget
    from engine.errors import BadInput

    image = _pattern(2000, 2000, 3)
    mask = np.zeros((2000, 2000), np.float32)
    mask[200:1800, 300:1700] = 1.0  # a 1600×1400 box
    need = budget.patch_need(2000 * 2000, 1600 * 1400)
    assert 1.2 * (1 << 30) < need < 1.8 * (1 << 30)
    monkeypatch.setenv(budget.BUDGET_ENV, "1000")
    with pytest.raises(BadInput, match=r"inpaint on the selected area \(1400×1600 pixels\) needs about 1\.\d GB"):
        ops.run_op("inpaint", image, mask, {})
    assert budget.working_bytes("inpaint", {"method": "patch"}, 1600, 1400) == budget.patch_need(1600 * 1400, 1600 * 1400)
    monkeypatch.setenv(budget.BUDGET_ENV, "4000")
    budget.check("inpaint", {"method": "patch"}, image.shape, mask)  # fits: no refusal


def test_window_is_the_hole_box_and_its_context() -> None:
    assert context_for(10) == 256 and context_for(100) == 300
    def window_shape(box_height: int, box_width: int, image_height: int, image_width: int) -> tuple[int, int]:
        """(height, width) of the window the fill copies from, for a centred hole of that box."""
        hole = np.zeros((image_height, image_width), bool)
        top, left = (image_height - box_height) // 2, (image_width - box_width) // 2
        hole[top:top + box_height, left:left + box_width] = True
        rows, cols = ops.hole_window(hole, context_for(max(box_height, box_width)))
        return rows.stop - rows.start, cols.stop - cols.start

    assert window_shape(100, 50, 2000, 2000) == (700, 650) and window_shape(40, 20, 2000, 2000) == (552, 532)
    assert window_shape(100, 50, 300, 400) == (300, 400)


def test_cli_inpaint_with_method_patch_keeps_16_bit(tmp_path: Path) -> None:
    image = _pattern(64, 64, 3)
    write_image(tmp_path / "in.png", image, "u16")
    mask = np.zeros((64, 64), np.float32)
    mask[24:40, 20:44] = 1.0
    write_image(tmp_path / "mask.png", mask[..., None], "u8")
    done = subprocess.run([sys.executable, "-m", "engine", "inpaint", str(tmp_path / "in.png"), "--mask",
                           str(tmp_path / "mask.png"), "-o", str(tmp_path / "out.png"), "--method", "patch"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert "patch-based fill" in done.stderr + done.stdout
    out = read_image(tmp_path / "out.png")
    source = read_image(tmp_path / "in.png").pixels
    assert out.sample_type == "u16" and out.pixels.shape == (64, 64, 3)
    hole = mask > 0
    np.testing.assert_array_equal(out.pixels[~hole], source[~hole])
    assert _hole_psnr(out.pixels, image, hole) > 35.0
