"""DIP ops as front ends call them: presets, dejpeg, previews and cancel-with-partial as result
layers, and time estimates. Tiny images and iteration counts: these check the op contract."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine import ops
from engine.cli import build_parser
from engine.errors import BadInput, Cancelled
from engine.imageio import read_image


def _rgba(size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.random((size, size, 4), dtype=np.float32)
    image[:, :, 3] = np.linspace(0.2, 1.0, size, dtype=np.float32)[None, :]
    return image


def test_every_dip_op_takes_a_preset_and_the_cli_offers_it() -> None:
    for name in ("denoise", "inpaint", "dejpeg"):
        spec = ops.get_op(name)
        preset = next(p for p in spec.params if p.name == "preset")
        assert preset.default == "auto" and preset.choices == ("auto", "fast", "quality", "paper")
        with pytest.raises(BadInput, match="preset"):
            spec.validate({"preset": "slow"})
    args = build_parser().parse_args(["dejpeg", "in.jpg", "-o", "out.png", "--preset", "paper"])
    assert args.preset == "paper" and args.op_spec.name == "dejpeg"


def test_denoise_strength_reaches_dip_and_the_cli_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.dip import tasks

    seen = []

    def fake_denoise(image, **kwargs):
        seen.append(kwargs.get("strength"))
        return image

    monkeypatch.setattr(tasks, "denoise", fake_denoise)
    image = _rgba(16)
    for params, want in (({"method": "dip"}, 1.0), ({"method": "dip", "strength": 250}, 2.5)):
        (layer,) = ops.run_op("denoise", image, None, params)
        np.testing.assert_array_equal(layer.pixels, image)
    assert seen == [1.0, 2.5]
    assert "strength" not in {p.name for p in ops.get_op("inpaint").params}
    args = build_parser().parse_args(["denoise", "in.png", "-o", "out.png", "--strength", "60"])
    assert args.strength == 60


def test_previews_are_full_size_result_layers_with_alpha(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.dip import loop

    image = _rgba()
    previews: list[list[ops.ResultLayer]] = []
    ctx = ops.JobContext(preview=previews.append)
    # The loop previews at most every few seconds; make every iteration eligible.
    monkeypatch.setitem(loop.fit_generators.__kwdefaults__, "preview_interval_s", 0.0)
    (layer,) = ops.run_op("denoise", image, None, {"iterations": 4, "method": "dip"}, ctx)
    assert previews and all(len(p) == 1 for p in previews)
    preview = previews[-1][0]
    assert preview.role == layer.role == "image" and preview.title == layer.title
    assert preview.pixels.shape == image.shape == layer.pixels.shape
    np.testing.assert_array_equal(preview.pixels[:, :, 3], image[:, :, 3])  # alpha re-joined


def test_cancel_carries_the_inpainted_result_so_far_as_layers() -> None:
    image = _rgba()
    mask = np.zeros(image.shape[:2], np.float32)
    mask[10:20, 12:22] = 1.0
    polls = {"n": 0}

    def cancel_after_some_iterations() -> bool:
        polls["n"] += 1
        return polls["n"] > 3

    with pytest.raises(Cancelled) as caught:
        ops.run_op("inpaint", image, mask, {"iterations": 100000, "method": "dip"},
                   ops.JobContext(cancel_requested=cancel_after_some_iterations))
    (layer,) = caught.value.partial
    assert isinstance(layer, ops.ResultLayer) and layer.pixels.shape == image.shape
    hole = mask > 0
    np.testing.assert_array_equal(layer.pixels[~hole], image[~hole])  # known pixels untouched
    assert np.all(layer.pixels[hole][:, 3] == 1.0)  # filled pixels opaque, as in the result


def test_cancel_before_any_iteration_has_no_partial() -> None:
    with pytest.raises(Cancelled) as caught:
        ops.run_op("dejpeg", _rgba(), None, {"method": "dip", "iterations": 10}, ops.JobContext(cancel_requested=lambda: True))
    assert caught.value.partial is None


def test_estimates_grow_with_size_and_preset_cost() -> None:
    small = ops.estimate_seconds("denoise", {"device": "cpu", "method": "dip"}, 64, 64)
    large = ops.estimate_seconds("denoise", {"device": "cpu", "method": "dip"}, 256, 256)
    paper = ops.estimate_seconds("denoise", {"device": "cpu", "method": "dip", "preset": "paper"}, 256, 256)
    fixed = ops.estimate_seconds("dejpeg", {"device": "cpu", "method": "dip", "iterations": 100}, 64, 64)
    assert 0 < small < large < paper
    assert 0 < fixed < small
    assert ops.estimate_seconds("inpaint", {"device": "cpu", "method": "dip"}, 128, 128) > small


def test_dejpeg_cli(tmp_path, shared_data) -> None:
    clean = np.asarray(Image.open(shared_data / "dip/denoising/F16_GT.png").convert("RGB"))[200:240, 200:240]
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, "JPEG", quality=10)
    (tmp_path / "in.jpg").write_bytes(buffer.getvalue())
    result = subprocess.run([sys.executable, "-m", "engine", "dejpeg", str(tmp_path / "in.jpg"), "-o",
                             str(tmp_path / "out.png"), "--method", "dip", "--iterations", "20", "--preset", "fast"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = read_image(tmp_path / "out.png").pixels
    assert out.shape == (40, 40, 3) and not np.array_equal(out, clean / 255.0)
