"""The GIMP 2.10 plug-in (gimp_plugin/gimp2 + hosts/gimp2.py) under a real Python 2.7.

A GIMP 2.10 with Python-Fu cannot be installed on Debian 12, so this runs the plug-in's own
files, unchanged, in Debian 11's CPython 2.7 (a debootstrap root cached by
tests/gimp2/provision_py27.sh) against tests/gimp2/gimpfu.py, an in-memory fake of the
gimpfu API (its docstring lists the real calls it mirrors). The engine is real: the
plug-in starts this interpreter's ``python -m engine serve`` as its subprocess.

Python 2.7 runs on the host (PYTHONHOME pointing into the cached root), not chrooted: the
engine's interpreter is built against a newer glibc than Debian 11's, and the plug-in
must start it as its own child.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import GIMP2_TESTS, PY27_ROOT, REPO

def _run27(python27: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python27), *args], capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONHOME": str(PY27_ROOT / "usr"), **(env or {})})


def test_plugin_package_is_python27_syntax(python27: Path) -> None:
    files = sorted(str(p) for p in (REPO / "gimp_plugin").rglob("*.py") if p.name != "gimp3.py"
                   and p.parent.name != "neural-restore")
    code = "import sys, py_compile\nfor f in sys.argv[1:]: py_compile.compile(f, doraise=True, cfile='/dev/null')"
    result = _run27(python27, "-c", code, *files)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def facts(python27: Path, tmp_path_factory: pytest.TempPathFactory, engine_python: str) -> dict[str, Any]:
    # Lay the plug-in out as a GIMP 2.10 plug-ins folder: loose script + package beside it.
    plugins = tmp_path_factory.mktemp("plug-ins")
    shutil.copy(REPO / "gimp_plugin" / "gimp2" / "neural_restore_gimp2.py", plugins)
    shutil.copytree(REPO / "gimp_plugin" / "neural_restore", plugins / "neural_restore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("out")
    result = _run27(python27, str(GIMP2_TESTS / "drive_adapter.py"), str(plugins), str(out),
                    env={"NEURAL_RESTORE_ENGINE_PYTHON": engine_python})  # this checkout's engine
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads((out / "facts.json").read_text())
    found["out"] = str(out)
    return found


def _pixels(facts: dict[str, Any], case: str, which: str, shape: tuple[int, ...], dtype: str = "u1") -> np.ndarray:
    return np.frombuffer((Path(facts["out"]) / f"{case}-{which}.raw").read_bytes(), dtype).reshape(shape)


def test_runs_under_python_2_7_and_registers_both_filters(facts: dict[str, Any]) -> None:
    assert facts["python"].startswith("2.7.")
    registered = {p["name"]: p for p in facts["registered"]}
    dip = {"plug-in-neural-restore-denoise", "plug-in-neural-restore-inpaint-selection",
           "plug-in-neural-restore-decompose", "plug-in-neural-restore-remove-jpeg-artifacts"}
    assert dip | {"plug-in-neural-restore-upscale", "plug-in-neural-restore-sharpen"} <= set(registered)
    for name, proc in registered.items():
        assert proc["menu"] == "<Image>/Filters/Enhance/Neural"
        if name in dip:
            own = ["mode"] if name.endswith("decompose") else []
            # After the DIP settings, for positional callers from before the trained nets.
            newer = (["method", "passes", "strength"] if name.endswith("denoise")
                     else ["method", "passes"] if name.endswith(("inpaint-selection", "jpeg-artifacts"))
                     else ["working_side"])
            assert proc["params"] == ["image", "drawable"] + own + ["iterations", "seed", "device", "preset"] + newer
        assert proc["imagetypes"] == "RGB*, GRAY*"


def test_decompose_adds_a_group_of_layers_with_a_mask(facts: dict[str, Any]) -> None:
    case = facts["decompose-segment"]
    _check_success(case, ["Segment", "Source"])
    ((_, offsets, _, _, _, children), _) = case["layers"]
    assert [c[0] for c in children] == ["Foreground", "Background"]
    assert all(c[1] == [5, 3] and c[2:4] == [24, 20] for c in children)
    perceptual = 2  # LAYER_COLOR_SPACE_RGB_PERCEPTUAL
    assert case["children"] == [["Foreground", True, 100.0, perceptual, True],
                                ["Background", True, 100.0, perceptual, False]]
    mask = _pixels(facts, "decompose-segment", "mask", (20, 24))
    assert mask.min() < 128 < mask.max()  # a real mask, not the white default
    # The selection (image 10..22 × 8..18, layer offsets 5, 3) was the foreground hint.
    hinted = np.zeros((20, 24), bool)
    hinted[5:15, 5:17] = True
    assert mask[hinted].mean() > mask[~hinted].mean() + 20


def _check_success(case: dict[str, Any], names: list[str]) -> None:
    assert case["error"] is None, case["error"]
    assert case["source_same"]
    assert case["undo"] == ["undo_group_start", "undo_group_end"]  # one undo step, inserts inside it
    assert case["last_fraction"] == [1.0]
    assert any("elapsed" in text for text in case["texts"])
    assert case["max_progress_gap"] < 1.6, case["max_progress_gap_at"]  # progress about once a second
    assert [layer[0] for layer in case["layers"]] == names


def test_denoise_adds_a_layer_above_with_the_source_geometry(facts: dict[str, Any]) -> None:
    case = facts["denoise-rgba"]
    _check_success(case, ["Denoise", "Source"])
    result, source = case["layers"]
    assert result[1:5] == source[1:5] == [[5, 3], 24, 20, 1]  # offsets, size, RGBA_IMAGE
    out = _pixels(facts, "denoise-rgba", "result", (20, 24, 4))
    src = _pixels(facts, "denoise-rgba", "source", (20, 24, 4))
    np.testing.assert_array_equal(out[..., 3], src[..., 3])
    assert not np.array_equal(out[..., :3], src[..., :3])


@pytest.mark.parametrize("case, shape, dtype, offsets, selection", [
    ("inpaint-gray", (20, 20, 1), "u1", (-4, 6), (2, 10, 10, 8)),
    ("inpaint-u16", (24, 24, 4), "<u2", (0, 0), (6, 6, 10, 9)),
])
def test_inpaint_changes_only_the_selection(facts: dict[str, Any], case: str, shape: tuple[int, ...],
                                            dtype: str, offsets: tuple[int, int],
                                            selection: tuple[int, int, int, int]) -> None:
    _check_success(facts[case], ["Inpaint", "Source"])
    out, src = (_pixels(facts, case, which, shape, dtype) for which in ("result", "source"))
    x, y, w, h = selection
    hole = np.zeros(shape[:2], bool)
    hole[y - offsets[1]:y - offsets[1] + h, x - offsets[0]:x - offsets[0] + w] = True
    assert out[~hole].tobytes() == src[~hole].tobytes()
    assert not np.array_equal(out[hole], src[hole])


def test_result_goes_into_the_source_layers_group(facts: dict[str, Any]) -> None:
    case = facts["denoise-in-group"]
    assert case["error"] is None, case["error"]
    ((name, _, _, _, _, children),) = case["layers"]
    assert name == "Group" and [c[0] for c in children] == ["Denoise", "Source", "Below"]


@pytest.mark.parametrize("case, words", [
    ("bad-group", "'Group' is a layer group"),
    ("bad-mask", "is a layer mask (Source mask)"),
    ("bad-channel", "the channel 'Saved selection'"),
    ("bad-indexed", "Indexed (palette) images are not supported"),
    ("bad-tiny", "4x4 pixels"),
    ("bad-inpaint-no-selection", "needs a selection"),
    ("bad-watermark-no-selection", "needs a selection around the watermark"),
])
def test_bad_inputs_get_the_gimp3_messages_and_change_nothing(facts: dict[str, Any], case: str, words: str) -> None:
    found = facts[case]
    assert found["error"] is not None and words in found["error"], found["error"]
    assert found["source_same"] and found["undo"] == []
    assert not any(layer[0] in ("Denoise", "Inpaint") for layer in found["layers"])
