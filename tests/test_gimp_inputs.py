"""Bad inputs and formats through the installed plug-in in a real headless GIMP 3.

Each GIMP start costs seconds, so one batch run tries many cases and records facts per
case; the tests then assert case by case. Bad inputs must end in ``execution-error`` with
our message and leave the image exactly as it was (layers, channels, source pixels).
Engine failures are played by tests/gimp2/fake_engine.py, posing as the engine's Python
through NEURAL_RESTORE_ENGINE_PYTHON (GIMP passes its environment on to plug-ins).
"""
from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gimp_harness import Gimp3Chroot
from tests.test_gimp_plugin import EXCHANGE, PROLOGUE, SIZE, gimp  # noqa: F401 - the fixture

pytestmark = pytest.mark.gimp

FAKE_ENGINE = Path(__file__).with_name("gimp2") / "fake_engine.py"
FAKE_DIR = f"{EXCHANGE}/fake"
HANG_TIMEOUT_S = 3

# Helpers for the batch code: attempt() runs one filter call and records everything the
# tests compare (status, message, layer tree, channels, a digest of the source pixels).
HELPERS = """\
import hashlib, os, time

def tree(image):
    def walk(items):
        return [[i.get_name(), list(i.get_offsets()[-2:]), i.get_width(), i.get_height(),
                 walk(i.get_children()) if i.is_group() else None] for i in items]
    return walk(image.get_layers())

def digest(item, fmt):
    rect = Gegl.Rectangle.new(0, 0, item.get_width(), item.get_height())
    return hashlib.sha256(bytes(item.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))).hexdigest()

def starts():
    path = {fake!r} + "/fake-starts"
    return open(path).read().split("\\n")[:-1] if os.path.exists(path) else []

def attempt(case, proc_name, image, drawables, source, fmt, mode="none", **params):
    with open({fake!r} + "/fake-mode", "w") as handle:
        handle.write(mode)
    before = (tree(image), [c.get_name() for c in image.get_channels()], digest(source, fmt))
    started = len(starts())
    procedure = Gimp.get_pdb().lookup_procedure(proc_name)
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for key, value in params.items():
        config.set_property(key, value)
    t0 = time.monotonic()
    result = procedure.run(config)
    after = (tree(image), [c.get_name() for c in image.get_channels()], digest(source, fmt))
    facts[case] = {{
        "status": result.index(0).value_nick,
        "message": result.index(1) if result.length() > 1 else Gimp.get_pdb().get_last_error(),
        "seconds": time.monotonic() - t0,
        "layers_same": before[0] == after[0], "channels_same": before[1] == after[1],
        "pixels_same": before[2] == after[2], "layers": after[0],
        "engine_starts": starts()[started:],
    }}

def rgb_image(width, height, layer_size=None, base=Gimp.ImageBaseType.RGB, layer_type=Gimp.ImageType.RGB_IMAGE):
    image = Gimp.Image.new(width, height, base)
    w, h = layer_size or (width, height)
    layer = Gimp.Layer.new(image, "Source", w, h, layer_type, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    # A gradient, so an accidental write shows up in the digest.
    data = bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(h) for x in range(w) for c in range(3))
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' u8", data)
    buffer.flush()
    return image, layer
"""

BAD_INPUTS = """
D, I = "plug-in-neural-restore-denoise", "plug-in-neural-restore-inpaint-selection"
RGB = "R'G'B' u8"

image, layer = rgb_image(16, 16, (1, 1))
attempt("tiny-1x1", D, image, [layer], layer, RGB, iterations=5)
image, layer = rgb_image(16, 16, (2, 2))
image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 16, 16)
attempt("tiny-2x2-inpaint", I, image, [layer], layer, RGB, iterations=5)

image, layer = rgb_image(24, 24)
image.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, "")
attempt("indexed", D, image, [image.get_layers()[0]], image.get_layers()[0], "R'G'B'A u8", iterations=5)

image, layer = rgb_image(24, 24)
group = Gimp.GroupLayer.new(image, "Group")
image.insert_layer(group, None, 0)
inner = Gimp.Layer.new(image, "Inner", 24, 24, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(inner, group, 0)
attempt("layer-group", D, image, [group], layer, RGB, iterations=5)

image, layer = rgb_image(24, 24)
channel = Gimp.Channel.new(image, "Saved selection", 24, 24, 50.0, Gegl.Color.new("red"))
image.insert_channel(channel, None, 0)
attempt("channel", D, image, [channel], channel, "Y u8", iterations=5)

image, layer = rgb_image(24, 24)
layer.add_alpha()
mask = layer.create_mask(Gimp.AddMaskType.WHITE)
layer.add_mask(mask)
attempt("layer-mask", D, image, [mask], mask, "Y u8", iterations=5)

image, layer = rgb_image(24, 24)
second = Gimp.Layer.new(image, "Second", 24, 24, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(second, None, 0)
attempt("two-drawables", D, image, [layer, second], layer, RGB, iterations=5)

image, layer = rgb_image(64, 64, (24, 24))
image.select_rectangle(Gimp.ChannelOps.REPLACE, 40, 40, 10, 10)
attempt("selection-outside-layer", I, image, [layer], layer, RGB, iterations=5)

for mode in ("die-mid-run", "hang-mid-run", "hang-before-hello", "garbage", "old-protocol"):
    image, layer = rgb_image(24, 24)
    attempt("engine-" + mode, D, image, [layer], layer, RGB, mode=mode, iterations=5)
"""


def _run(gimp: Gimp3Chroot, body: str, env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    out = gimp.to_host(f"{EXCHANGE}/facts.json")
    out.unlink(missing_ok=True)
    code = (PROLOGUE.format(exchange=EXCHANGE, size=SIZE) + HELPERS.format(fake=FAKE_DIR)
            + textwrap.dedent(body)
            + f"\nwith open({EXCHANGE!r} + '/facts.json', 'w') as h:\n    json.dump(facts, h)\n")
    result = gimp.run_batch(code, timeout=timeout, env=env)
    assert out.exists(), f"GIMP batch failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it no longer holds anything)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def bad_input_facts(gimp: Gimp3Chroot) -> dict[str, Any]:  # noqa: F811 - pytest fixture injection
    fake_dir = gimp.to_host(FAKE_DIR)
    shutil.rmtree(fake_dir, ignore_errors=True)
    fake_dir.mkdir(parents=True)
    fake = fake_dir / "fake_engine.py"
    shutil.copy(FAKE_ENGINE, fake)
    fake.chmod(0o755)
    env = {"NEURAL_RESTORE_ENGINE_PYTHON": f"{FAKE_DIR}/fake_engine.py",
           "NEURAL_RESTORE_ENGINE_TIMEOUT": str(HANG_TIMEOUT_S)}
    return _run(gimp, BAD_INPUTS, env=env)


# case -> words the user must see
BAD_INPUT_MESSAGES = {
    "tiny-1x1": ["1x1 pixels", "at least 8x8"],
    "tiny-2x2-inpaint": ["2x2 pixels", "at least 8x8"],
    "indexed": ["Indexed", "Image > Mode > RGB"],
    "layer-group": ["'Group' is a layer group", "select one of its layers"],
    "channel": ["channel 'Saved selection'", "select a layer"],
    "layer-mask": ["layer mask", "thumbnail"],
    "two-drawables": ["exactly one layer", "2 are selected"],
    "selection-outside-layer": ["does not touch the active layer"],
    "engine-die-mid-run": ["stopped unexpectedly", "while running denoise"],
    "engine-hang-mid-run": ["stopped responding", f"{HANG_TIMEOUT_S} s"],
    "engine-hang-before-hello": ["stopped responding", "while starting"],
    "engine-garbage": ["sent garbage"],
    "engine-old-protocol": ["another protocol version", "install.py"],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_MESSAGES))
def test_bad_input_gets_its_message_and_leaves_the_image_alone(bad_input_facts: dict[str, Any], case: str) -> None:
    facts = bad_input_facts[case]
    assert facts["status"] == "execution-error", facts
    for words in BAD_INPUT_MESSAGES[case]:
        assert words in facts["message"], facts["message"]
    assert facts["layers_same"] and facts["channels_same"], facts["layers"]
    assert facts["pixels_same"]
    if not case.startswith("engine-"):
        assert facts["engine_starts"] == [], "checked before starting the engine"


@pytest.mark.parametrize("case", sorted(c for c in BAD_INPUT_MESSAGES if c.startswith("engine-")))
def test_failed_engine_is_gone_and_the_plugin_did_not_wait_long(bad_input_facts: dict[str, Any], case: str) -> None:
    (start,) = bad_input_facts[case]["engine_starts"]
    pid = int(start.split()[0])
    assert not _alive(pid), f"engine {pid} outlived the plug-in"
    limit = HANG_TIMEOUT_S + 12 if "hang" in case else 10
    assert bad_input_facts[case]["seconds"] < limit


CONFIG = "/root/.config/GIMP/3.0/plug-ins/neural-restore/engine.json"
BROKEN_CONFIGS = {
    # case -> (engine.json text or None for a missing file, words the user must see)
    "config-missing": (None, ["not set up", "is missing", "install.py"]),
    "config-not-json": ('{"engine_python": "/opt/x/bin/py', ["damaged", "install.py"]),
    "config-not-an-object": ('["/usr/bin/python3"]', ["engine Python (None) is missing", "install.py"]),
    "config-python-gone": ('{"engine_python": "/opt/gone/bin/python"}', ["/opt/gone/bin/python", "install.py"]),
}


@pytest.fixture(scope="module")
def broken_config_facts(gimp: Gimp3Chroot) -> dict[str, Any]:  # noqa: F811 - pytest fixture injection
    config = gimp.to_host(CONFIG)
    saved = config.read_bytes()
    body = "import os\nimage, layer = rgb_image(24, 24)\n"
    for case, (text, _) in BROKEN_CONFIGS.items():
        body += (f"if os.path.exists({CONFIG!r}):\n    os.remove({CONFIG!r})\n" if text is None else
                 f"open({CONFIG!r}, 'w').write({text!r})\n")
        body += f"attempt({case!r}, 'plug-in-neural-restore-denoise', image, [layer], layer, \"R'G'B' u8\")\n"
    try:
        return _run(gimp, body)
    finally:
        config.write_bytes(saved)


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_broken_engine_config_says_how_to_fix_it(broken_config_facts: dict[str, Any], case: str) -> None:
    facts = broken_config_facts[case]
    assert facts["status"] == "execution-error", facts
    for words in BROKEN_CONFIGS[case][1]:
        assert words in facts["message"], facts["message"]
    assert facts["layers_same"] and facts["pixels_same"]
