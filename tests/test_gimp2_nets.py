"""Upscale and Sharpen of the GIMP 2.10 plug-in under a real Python 2.7 and the fake gimpfu
(see tests/test_gimp2_adapter.py), with this checkout's engine and tiny known-output nets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_gimp2_adapter import GIMP2_TESTS, _run27
from tests.tiny_nets import bilinear, checkout_engine_python, export_tiny_nets



def _decoded_jpeg() -> np.ndarray:
    """A 48×40 photo crop as GIMP shows it after opening it from a quality-90 JPEG."""
    import io

    from PIL import Image

    photo = Image.open(REPO.parent / "shared" / "data" / "dip" / "restoration" / "kate.png").convert("RGB")
    buffer = io.BytesIO()
    photo.crop((100, 60, 148, 100)).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("RGB"), np.uint8)


@pytest.fixture(scope="module")
def facts(python27: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    plugins = tmp_path_factory.mktemp("plug-ins")
    shutil.copy(REPO / "gimp_plugin" / "gimp2" / "neural_restore_gimp2.py", plugins)
    shutil.copytree(REPO / "gimp_plugin" / "neural_restore", plugins / "neural_restore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    models = export_tiny_nets(tmp_path_factory.mktemp("models"))
    engine = checkout_engine_python(tmp_path_factory.mktemp("engine"), REPO)
    out = tmp_path_factory.mktemp("out")
    (out / "jpeg-source.raw").write_bytes(_decoded_jpeg().tobytes())
    result = _run27(python27, str(GIMP2_TESTS / "drive_nets.py"), str(plugins), str(out),
                    env={"NEURAL_RESTORE_ENGINE_PYTHON": str(engine), "NEURAL_RESTORE_MODELS": str(models)})
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads((out / "facts.json").read_text())
    found["out"] = out
    return found


def _raw(facts: dict[str, Any], name: str, shape: tuple[int, ...], dtype: str = "u1") -> np.ndarray:
    return np.frombuffer((facts["out"] / name).read_bytes(), dtype).reshape(shape)


def test_upscale_returns_a_new_displayed_image_of_the_same_precision(facts: dict[str, Any]) -> None:
    assert facts["results"]["plug-in-neural-restore-upscale"] == ["image"]
    assert facts["results"]["plug-in-neural-restore-sharpen"] == []
    case = facts["upscale"]
    assert case["error"] is None, case["error"]
    assert case["source_same"] and case["source_layers"] == ["Source"]
    assert case["size"] == [40, 32] and case["bytes_per_channel"] == 2
    assert case["layers"] == [["Upscaled (Source)", [0, 0], 40, 32, 1]]  # RGBA_IMAGE
    assert case["displayed"] == [True] and case["undo_enabled"] and case["same_profile"]
    assert case["same_metadata"] and case["same_resolution"]
    source = _raw(facts, "upscale-source.raw", (16, 20, 4), "<u2") / 65535.0
    out = _raw(facts, "upscale-result.raw", (32, 40, 4), "<u2") / 65535.0
    np.testing.assert_allclose(out[..., :3], np.clip(bilinear(source[..., :3], 2), 0, 1), atol=1.5 / 65535)


def test_upscale_in_batch_gimp_opens_no_display(facts: dict[str, Any]) -> None:
    case = facts["upscale-batch"]
    assert case["error"] is None, case["error"]
    assert case["size"] == [80, 64] and case["displays"] == 0


def test_sharpen_adds_a_layer_masked_to_the_selection(facts: dict[str, Any]) -> None:
    case = facts["sharpen"]
    assert case["error"] is None, case["error"]
    assert case["source_same"]
    assert case["layers"] == [["Sharpened", [10, 8], 16, 16], ["Source", [4, 2], 30, 30]]
    assert case["undo"] == ["undo_group_start", "undo_group_end"]
    assert case["mask"]
    source = _raw(facts, "sharpen-source.raw", (30, 30, 3))
    np.testing.assert_array_equal(_raw(facts, "sharpen-result.raw", (16, 16, 3)), source[6:22, 6:22])
    mask = _raw(facts, "sharpen-mask.raw", (16, 16))
    assert mask[8, 8] == 255 and mask[0, 0] == 0 and mask[0, 5] == 255


def test_remove_jpeg_artifacts_sends_an_opened_jpegs_tables(facts: dict[str, Any]) -> None:
    case = facts["dejpeg"]
    assert case["error"] is None, case["error"]
    assert case["layers"] == ["JPEG artifacts removed", "Source"]
    assert any("kept consistent with the JPEG's tables (quality ≈ 90)" in text for text in case["texts"]), case["texts"]
