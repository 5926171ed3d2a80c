"""Inpaint with the trained net: the smooth pre-fill (engine.fill), the training holes and
input (onnx_export.degrade), the op on a tiny known-output net (tests/tiny_nets.py: it returns
the pre-fill), the op and CLI with the shipped net, and the trainer's inpaint task."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ops
from engine.errors import BadInput
from engine.fill import smooth_fill
from engine.imageio import read_image, write_image
from engine.onnx import runner
from onnx_export import degrade

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _photo(size: int = 64, top: int = 200, left: int = 180) -> np.ndarray:
    from PIL import Image

    photo = np.asarray(Image.open(SHARED / "dip" / "inpainting" / "kate.png").convert("RGB"), np.float32) / 255.0
    return np.ascontiguousarray(photo[top:top + size, left:left + size])


# -- the pre-fill ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), channels=st.sampled_from([1, 3]),
       share=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_smooth_fill_keeps_known_pixels_and_fills_within_their_range(height: int, width: int, channels: int,
                                                                     share: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, channels), dtype=np.float32)
    hole = rng.random((height, width)) < share
    if hole.all():
        hole.flat[0] = False
    filled = smooth_fill(image, hole)
    assert filled.dtype == np.float32 and filled.shape == image.shape
    np.testing.assert_array_equal(filled[~hole], image[~hole])
    known = image[~hole]
    # Every filled value is a weighted mean of known ones: inside their range per channel.
    assert np.all(filled[hole] >= known.min(axis=0) - 1e-5) and np.all(filled[hole] <= known.max(axis=0) + 1e-5)


def test_smooth_fill_is_smooth_and_follows_the_surroundings() -> None:
    # Left half black, right half white, a hole across the edge: the fill ramps between them.
    image = np.zeros((64, 64, 1), np.float32)
    image[:, 32:] = 1.0
    hole = np.zeros((64, 64), bool)
    hole[16:48, 16:48] = True
    filled = smooth_fill(image, hole)[32, 16:48, 0]
    assert filled[0] < 0.3 and filled[-1] > 0.7
    assert np.all(np.diff(filled) >= -1e-6)  # monotone from the dark side to the bright one
    assert np.abs(np.diff(filled)).max() < 0.2  # no step: a ramp
    with pytest.raises(ValueError, match="whole image"):
        smooth_fill(image, np.ones((64, 64), bool))


# -- training holes and input -----------------------------------------------------------------

def test_training_holes_are_varied_never_empty_and_leave_enough_to_fill_from() -> None:
    rng = np.random.default_rng(0)
    holes = [degrade.inpaint_hole(96, 80, rng) for _ in range(60)]
    shares = np.array([h.mean() for h in holes])
    assert all(h.shape == (96, 80) and h.dtype == bool for h in holes)
    assert shares.min() > 0 and shares.max() <= degrade.MAX_HOLE_SHARE
    assert shares.min() < 0.05 and shares.max() > 0.4  # thin strokes and large areas both occur
    again = degrade.inpaint_hole(96, 80, np.random.default_rng(5))
    np.testing.assert_array_equal(again, degrade.inpaint_hole(96, 80, np.random.default_rng(5)))


def test_training_input_is_the_engines_fill_plus_the_hole() -> None:
    image = _photo(48)
    hole = degrade.inpaint_hole(48, 48, np.random.default_rng(1))
    net_input = degrade.inpaint_input(image, hole)
    assert net_input.shape == (48, 48, 4) and net_input.dtype == np.float32
    np.testing.assert_array_equal(net_input[..., :3], smooth_fill(image, hole))
    np.testing.assert_array_equal(net_input[..., 3], hole.astype(np.float32))


# -- the op with the tiny net (returns the pre-fill) ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_nets import export_tiny_nets

    return export_tiny_nets(tmp_path_factory.mktemp("models"))


def _hole(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[30:44, 50:70] = 1.0
    mask[80:83, 10:90] = 1.0  # a scratch far from the block: one window holds both
    return mask


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_net_inpaint_fills_only_the_hole_with_the_nets_output(tiny_models: Path, channels: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURAL_RESTORE_MODELS", str(tiny_models))
    image = np.random.default_rng(channels).random((120, 150, channels), dtype=np.float32)
    mask = _hole(120, 150)
    (layer,) = ops.run_op("inpaint", image, mask, {"method": "net"})
    out, hole = layer.pixels, mask > 0
    assert layer.title == "Inpainted" and out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~hole], image[~hole])
    colours = channels - 1 if channels in (2, 4) else channels
    # The window the op works on: the hole's box plus the net's reach (the card's radius).
    reach = runner.read_card(tiny_models / "inpaint.onnx")["architecture"]["receptive_radius"]
    window = ops.hole_window(hole, max(reach, 80 // 2))
    want = smooth_fill(image[window][..., :colours].repeat(3 if colours == 1 else 1, axis=2), hole[window])
    if colours == 1:
        want = want.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(out[window][hole[window]][:, :colours], want[hole[window]], atol=2e-5)
    if channels in (2, 4):
        assert np.all(out[hole][:, -1] == 1.0)  # a filled hole is opaque


def test_net_inpaint_blends_a_feathered_mask_and_refuses_bad_masks(tiny_models: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURAL_RESTORE_MODELS", str(tiny_models))
    image = _photo(64)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 20:40] = 1.0
    mask[20:40, 18:20] = 0.5  # a feathered edge
    (layer,) = ops.run_op("inpaint", image, mask, {"method": "net", "passes": 2})
    (full,) = ops.run_op("inpaint", image, (mask > 0).astype(np.float32), {"method": "net", "passes": 2})
    edge = (slice(20, 40), slice(18, 20))
    np.testing.assert_allclose(layer.pixels[edge], 0.5 * full.pixels[edge] + 0.5 * image[edge], atol=1e-6)
    with pytest.raises(BadInput, match="mask is empty"):
        ops.run_op("inpaint", image, np.zeros((64, 64), np.float32), {})
    with pytest.raises(BadInput, match="whole image"):
        ops.run_op("inpaint", image, np.ones((64, 64), np.float32), {})
    with pytest.raises(BadInput, match="reads 4 channels"):
        runner.run_model(runner.load_model(tiny_models / "inpaint.onnx", "cpu"), image)


def test_net_inpaint_estimate_needs_no_torch() -> None:
    code = ("import sys\nfrom engine.ops import estimate_seconds\n"
            "net = estimate_seconds('inpaint', {'device': 'cpu', 'method': 'net'}, 1000, 1000)\n"
            "patch = estimate_seconds('inpaint', {'device': 'cpu'}, 200, 200)\n"
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules and 0 < patch < 60\n"
            "dip = estimate_seconds('inpaint', {'device': 'cpu', 'method': 'dip'}, 256, 256)\n"
            "assert 0 < net < 10 < dip, (net, dip)\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- the shipped net --------------------------------------------------------------------------

def _hole_psnr(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(result[hole], 0, 1) - truth[hole]) ** 2)))


def test_the_shipped_net_fills_better_than_the_smooth_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    image = _photo(96, top=150, left=150)  # kate's hair and face: texture and edges
    mask = np.zeros((96, 96), np.float32)
    mask[:, 44:50] = 1.0  # a vertical scratch
    mask[20:30, 10:80] = 1.0  # a horizontal one
    hole = mask > 0
    damaged = np.where(hole[..., None], 0.0, image)  # what is in the hole must not matter
    (layer,) = ops.run_op("inpaint", damaged, mask, {"method": "net", "passes": 1})
    np.testing.assert_array_equal(layer.pixels[~hole], image[~hole])
    net, fill = _hole_psnr(layer.pixels, image, hole), _hole_psnr(smooth_fill(image, hole), image, hole)
    assert net > fill + 1.0, (net, fill)


def test_cli_inpaint_with_the_net_keeps_16_bit(tmp_path: Path) -> None:
    image = _photo(48)
    write_image(tmp_path / "in.png", image, "u16")
    mask = np.zeros((48, 48), np.float32)
    mask[10:20, 5:40] = 1.0
    write_image(tmp_path / "mask.png", mask[..., None], "u8")
    env = {k: v for k, v in os.environ.items() if k != "NEURAL_RESTORE_MODELS"}
    done = subprocess.run([sys.executable, "-m", "engine", "inpaint", str(tmp_path / "in.png"), "--mask",
                           str(tmp_path / "mask.png"), "-o", str(tmp_path / "out.png"), "--method", "net"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    out = read_image(tmp_path / "out.png")
    source = read_image(tmp_path / "in.png").pixels
    assert out.sample_type == "u16" and out.pixels.shape == (48, 48, 3)
    hole = mask > 0
    np.testing.assert_array_equal(out.pixels[~hole], source[~hole])
    assert _hole_psnr(out.pixels, image, hole) > 20.0
