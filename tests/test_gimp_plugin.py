"""Our installed plug-in inside a real headless GIMP 3 (Debian 13 chroot; see tests/gimp_harness).

install.py installs the engine venv and the plug-in into the chroot user's GIMP profile,
exactly as a user runs it; GIMP then drives the filters through the PDB, NONINTERACTIVE.
Pixels go in and come out as raw files under the chroot's /tmp, compared here with numpy.
"""
from __future__ import annotations

import json
import textwrap
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXCHANGE, SHARED_DATA
from tests.gimp_harness import Gimp3Chroot

pytestmark = pytest.mark.gimp

DENOISE = "plug-in-neural-restore-denoise"
INPAINT = "plug-in-neural-restore-inpaint-selection"
SIZE = 48


def _crop(name: str, top: int = 190, left: int = 210) -> np.ndarray:
    rgb = np.asarray(Image.open(SHARED_DATA / name).convert("RGB"))
    return rgb[top:top + SIZE, left:left + SIZE].copy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


PROLOGUE = """\
import json
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp
X = {exchange!r}
facts = {{}}

def read_raw(name):
    with open(X + "/" + name, "rb") as handle:
        return handle.read()

def dump_layer(layer, name, fmt):
    rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
    with open(X + "/" + name, "wb") as handle:
        handle.write(bytes(layer.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)))

def describe(image):
    return [{{"name": l.get_name(), "offsets": list(l.get_offsets()[-2:]),
             "size": [l.get_width(), l.get_height()]}} for l in image.get_layers()]

def make_image(raw_name, fmt, layer_type, canvas, offsets):
    image = Gimp.Image.new(canvas[0], canvas[1], Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Source", {size}, {size}, layer_type, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, {size}, {size}), fmt, read_raw(raw_name))
    buffer.flush()
    return image, layer

def run_for_values(name, image, layer, **params):
    # A filter through the PDB (NONINTERACTIVE): its status and its return values.
    procedure = Gimp.get_pdb().lookup_procedure(name)
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    for key, value in params.items():
        config.set_property(key, value)
    result = procedure.run(config)
    return result.index(0).value_nick, [result.index(i) for i in range(1, result.length())]

def run_filter(name, image, layer, **params):
    status, values = run_for_values(name, image, layer, **params)
    return status, values[0] if values else Gimp.get_pdb().get_last_error()
"""


def run_in_gimp(gimp: Gimp3Chroot, body: str, timeout: float = 900) -> dict[str, Any]:
    out = gimp.to_host(f"{EXCHANGE}/facts.json")
    out.unlink(missing_ok=True)
    code = (PROLOGUE.format(exchange=EXCHANGE, size=SIZE) + textwrap.dedent(body)
            + f"\nwith open({EXCHANGE!r} + '/facts.json', 'w') as h:\n    json.dump(facts, h)\n")
    result = gimp.run_batch(code, timeout=timeout)
    assert out.exists(), f"GIMP batch failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def _write(gimp: Gimp3Chroot, name: str, data: bytes) -> None:
    gimp.to_host(f"{EXCHANGE}/{name}").write_bytes(data)


def _read(gimp: Gimp3Chroot, name: str, channels: int) -> np.ndarray:
    return np.frombuffer(gimp.to_host(f"{EXCHANGE}/{name}").read_bytes(), np.uint8).reshape(SIZE, SIZE, channels)


def test_procedures_are_registered_in_the_filters_menu(gimp: Gimp3Chroot) -> None:
    facts = run_in_gimp(gimp, f"""
        for name in ({DENOISE!r}, {INPAINT!r}):
            procedure = Gimp.get_pdb().lookup_procedure(name)
            facts[name] = {{"menu": list(procedure.get_menu_paths()), "label": procedure.get_menu_label(),
                           "args": [a.name for a in procedure.get_arguments()]}}
    """)
    for name in (DENOISE, INPAINT):
        assert facts[name]["menu"] == ["<Image>/Filters/Enhance/Neural"]
        assert {"iterations", "seed", "device"} <= set(facts[name]["args"])
    assert facts[DENOISE]["label"] == "_Denoise..."


def test_denoise_adds_a_layer_and_raises_psnr(gimp: Gimp3Chroot) -> None:
    clean = _crop("dip/denoising/F16_GT.png")
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    rgba = np.dstack([noisy, np.full(noisy.shape[:2], 255, np.uint8)])
    _write(gimp, "noisy.raw", rgba.tobytes())
    facts = run_in_gimp(gimp, """
        image, layer = make_image("noisy.raw", "R'G'B'A u8", Gimp.ImageType.RGBA_IMAGE, (80, 70), (10, 12))
        facts["status"], facts["message"] = run_filter("plug-in-neural-restore-denoise", image, layer,
                                                       method="dip", iterations=300, seed=1, device="cpu")
        facts["layers"] = describe(image)
        dump_layer(layer, "source-after.raw", "R'G'B'A u8")
        dump_layer(image.get_layers()[0], "denoised.raw", "R'G'B'A u8")
        image.delete()
    """)
    assert facts["status"] == "success", facts["message"]
    assert facts["layers"] == [
        {"name": "Denoise", "offsets": [10, 12], "size": [SIZE, SIZE]},
        {"name": "Source", "offsets": [10, 12], "size": [SIZE, SIZE]},
    ]
    assert gimp.to_host(f"{EXCHANGE}/source-after.raw").read_bytes() == rgba.tobytes()
    denoised = _read(gimp, "denoised.raw", 4)
    assert (denoised[..., 3] == 255).all()
    gain = _psnr(denoised[..., :3], clean) - _psnr(noisy, clean)
    assert gain >= 2.0, f"denoise gained only {gain:.2f} dB"


def test_inpaint_fills_only_the_selection(gimp: Gimp3Chroot) -> None:
    truth = _crop("dip/denoising/F16_GT.png", 300, 60)  # textured rock with a bright ridge
    _write(gimp, "photo.raw", truth.tobytes())
    # Layer at (6, 5) on the canvas; the selection rectangle is in image coordinates.
    facts = run_in_gimp(gimp, """
        image, layer = make_image("photo.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (6, 5))
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 6 + 26, 5 + 14, 14, 12)
        facts["status"], facts["message"] = run_filter("plug-in-neural-restore-inpaint-selection", image, layer,
                                                       method="dip", iterations=300, seed=2)
        facts["layers"] = describe(image)
        dump_layer(layer, "photo-after.raw", "R'G'B' u8")
        dump_layer(image.get_layers()[0], "inpainted.raw", "R'G'B' u8")
        image.delete()
    """)
    assert facts["status"] == "success", facts["message"]
    assert [layer["name"] for layer in facts["layers"]] == ["Inpaint", "Source"]
    assert gimp.to_host(f"{EXCHANGE}/photo-after.raw").read_bytes() == truth.tobytes()
    out = _read(gimp, "inpainted.raw", 3)
    hole = np.zeros((SIZE, SIZE), bool)
    hole[14:26, 26:40] = True
    np.testing.assert_array_equal(out[~hole], truth[~hole])
    # Plausible fill: closer to the truth than the surroundings' mean colour.
    ring = np.zeros_like(hole)
    ring[10:30, 22:44] = True
    ring &= ~hole
    mean_fill = np.broadcast_to(truth[ring].mean(axis=0), truth[hole].shape)
    assert _psnr(out[hole], truth[hole]) > _psnr(mean_fill, truth[hole]) + 1.5


def test_inpaint_without_selection_is_refused_and_changes_nothing(gimp: Gimp3Chroot) -> None:
    truth = _crop("dip/denoising/F16_GT.png")
    _write(gimp, "photo.raw", truth.tobytes())
    facts = run_in_gimp(gimp, """
        image, layer = make_image("photo.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (0, 0))
        Gimp.Selection.none(image)
        facts["status"], facts["message"] = run_filter("plug-in-neural-restore-inpaint-selection", image, layer)
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 55, 55, 5, 5)  # outside the 48×48 layer
        facts["status2"], facts["message2"] = run_filter("plug-in-neural-restore-inpaint-selection", image, layer)
        facts["layers"] = describe(image)
        dump_layer(layer, "photo-after.raw", "R'G'B' u8")
        image.delete()
    """)
    assert facts["status"] == "execution-error"
    assert "needs a selection" in facts["message"]
    assert facts["status2"] == "execution-error"
    assert "does not touch the active layer" in facts["message2"]
    assert [layer["name"] for layer in facts["layers"]] == ["Source"]
    assert gimp.to_host(f"{EXCHANGE}/photo-after.raw").read_bytes() == truth.tobytes()


def test_missing_engine_config_says_run_install(gimp: Gimp3Chroot) -> None:
    config = gimp.plugin_dir / "neural-restore" / "engine.json"
    hidden = config.with_suffix(".hidden")
    config.rename(hidden)
    try:
        _write(gimp, "photo.raw", _crop("dip/denoising/F16_GT.png").tobytes())
        facts = run_in_gimp(gimp, """
            image, layer = make_image("photo.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (48, 48), (0, 0))
            facts["status"], facts["message"] = run_filter("plug-in-neural-restore-denoise", image, layer)
            facts["layers"] = describe(image)
            image.delete()
        """)
    finally:
        hidden.rename(config)
    assert facts["status"] == "execution-error"
    assert "install.py" in facts["message"]
    assert [layer["name"] for layer in facts["layers"]] == ["Source"]
