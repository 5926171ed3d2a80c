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
from tests.test_gimp_plugin import EXCHANGE, PROLOGUE, SIZE

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
    os.makedirs({fake!r}, exist_ok=True)
    with open({fake!r} + "/fake-mode", "w") as handle:
        handle.write(mode)
    image.clean_all()  # so "dirty" afterwards means: the run changed the image
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
        "dirty": image.is_dirty(),
        "undo_enabled": image.undo_is_enabled(),
        "top_digest": digest(image.get_layers()[0], fmt),
        "inverted_digest": hashlib.sha256(bytes(255 - b for b in bytes(source.get_buffer().get(
            Gegl.Rectangle.new(0, 0, source.get_width(), source.get_height()), 1.0, fmt,
            Gegl.AbyssPolicy.CLAMP)))).hexdigest(),
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
def bad_input_facts(gimp: Gimp3Chroot) -> dict[str, Any]:
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
def broken_config_facts(gimp: Gimp3Chroot) -> dict[str, Any]:
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


# --- formats and geometry, end to end with the real engine (plumbing, so 5 iterations) --

FORMATS = {
    # case -> (base type, precision, layer type, babl format, numpy dtype, channels)
    "rgb-u8": ("RGB", "U8_NON_LINEAR", "RGB_IMAGE", "R'G'B' u8", "u1", 3),
    "rgba-u8": ("RGB", "U8_NON_LINEAR", "RGBA_IMAGE", "R'G'B'A u8", "u1", 4),
    "gray-u8": ("GRAY", "U8_NON_LINEAR", "GRAY_IMAGE", "Y' u8", "u1", 1),
    "graya-u8": ("GRAY", "U8_NON_LINEAR", "GRAYA_IMAGE", "Y'A u8", "u1", 2),
    "rgb-u16": ("RGB", "U16_NON_LINEAR", "RGB_IMAGE", "R'G'B' u16", "<u2", 3),
    "rgba-u16": ("RGB", "U16_NON_LINEAR", "RGBA_IMAGE", "R'G'B'A u16", "<u2", 4),
    "graya-u16": ("GRAY", "U16_NON_LINEAR", "GRAYA_IMAGE", "Y'A u16", "<u2", 2),
    "rgba-f32": ("RGB", "FLOAT_NON_LINEAR", "RGBA_IMAGE", "R'G'B'A float", "<f4", 4),
    "gray-f32": ("GRAY", "FLOAT_NON_LINEAR", "GRAY_IMAGE", "Y' float", "<f4", 1),
    # Linear light: the plug-in sends these as perceptual f32 (see hosts/gimp3.py).
    "rgba-u16-linear": ("RGB", "U16_LINEAR", "RGBA_IMAGE", "RGBA u16", "<u2", 4),
    "rgb-f32-linear": ("RGB", "FLOAT_LINEAR", "RGB_IMAGE", "RGB float", "<f4", 3),
}
# Float linear -> perceptual -> linear in float32 is exact only to a few ulps.
NEAR_EXACT = {"rgb-f32-linear"}
GEOMETRIES = {
    # case -> (canvas, layer offsets, selection rectangle in image coordinates); layer SIZE²
    "offset": ((80, 70), (10, 7), (30, 20, 12, 10)),
    "larger-than-canvas": ((32, 30), (-8, -6), (4, 4, 14, 12)),
    "partly-outside": ((48, 48), (20, -10), (24, 0, 16, 12)),
}
FORMAT_SELECTION = (14, 16, 12, 10)  # image coordinates; format cases sit at (0, 0) on a SIZE² canvas
# Denoise cases whose alpha channel must come back bit-identical at full precision.
ALPHA_CASES = ("rgba-u16", "graya-u16", "rgba-f32", "graya-u8", "rgba-u16-linear")


def _source_pixels(case: str) -> np.ndarray:
    _, _, _, _, dtype, channels = FORMATS[case] if case in FORMATS else FORMATS["rgb-u8"]
    rng = np.random.default_rng(sum(map(ord, case)))
    if dtype == "u1":
        return rng.integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)
    if dtype == "<u2":
        data = rng.integers(0, 65536, (SIZE, SIZE, channels), dtype=np.uint16)
        data[data % 257 == 0] += 1  # nothing that 8 bits could hold exactly
        return data.astype("<u2")
    return rng.random((SIZE, SIZE, channels), dtype=np.float32).astype("<f4")


FORMAT_BODY = """
def make(case, base, precision, layer_type, fmt, canvas, offsets):
    image = Gimp.Image.new_with_precision(canvas[0], canvas[1], getattr(Gimp.ImageBaseType, base),
                                          getattr(Gimp.Precision, precision))
    layer = Gimp.Layer.new(image, "Source", {size}, {size}, getattr(Gimp.ImageType, layer_type), 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, {size}, {size}), fmt, read_raw(case + ".raw"))
    buffer.flush()
    return image, layer

def layer_facts(layer):
    return {{"type": layer.type().value_nick, "alpha": layer.has_alpha(), "bpp": layer.get_bpp(),
            "offsets": list(layer.get_offsets()[-2:]), "size": [layer.get_width(), layer.get_height()],
            "name": layer.get_name()}}

def try_case(key, proc_name, case, spec, canvas, offsets, selection):
    base, precision, layer_type, fmt = spec
    image, layer = make(case, base, precision, layer_type, fmt, canvas, offsets)
    if selection:
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *selection)
    status, message = run_filter(proc_name, image, layer, iterations=5, seed=0, device="cpu")
    layers = image.get_layers()
    facts[key] = {{"status": status, "message": message, "precision": image.get_precision().value_nick,
                  "layers": [layer_facts(l) for l in layers]}}
    dump_layer(layer, key + "-source-after.raw", fmt)
    if len(layers) == 2:
        dump_layer(layers[0], key + "-result.raw", fmt)
    image.delete()
"""


@pytest.fixture(scope="module")
def format_facts(gimp: Gimp3Chroot) -> dict[str, Any]:
    body = FORMAT_BODY.format(size=SIZE)
    inpaint, denoise = "plug-in-neural-restore-inpaint-selection", "plug-in-neural-restore-denoise"
    for case, spec in FORMATS.items():
        gimp.to_host(f"{EXCHANGE}/{case}.raw").write_bytes(_source_pixels(case).tobytes())
        body += (f"try_case('inpaint-{case}', {inpaint!r}, {case!r}, {spec[:4]!r}, ({SIZE}, {SIZE}), (0, 0), "
                 f"{FORMAT_SELECTION!r})\n")
        if case in ALPHA_CASES:
            body += f"try_case('denoise-{case}', {denoise!r}, {case!r}, {spec[:4]!r}, ({SIZE}, {SIZE}), (0, 0), None)\n"
    for case, (canvas, offsets, selection) in GEOMETRIES.items():
        gimp.to_host(f"{EXCHANGE}/{case}.raw").write_bytes(_source_pixels(case).tobytes())
        spec = FORMATS["rgb-u8"][:4]
        body += f"try_case('inpaint-{case}', {inpaint!r}, {case!r}, {spec!r}, {canvas!r}, {offsets!r}, {selection!r})\n"
        body += f"try_case('denoise-{case}', {denoise!r}, {case!r}, {spec!r}, {canvas!r}, {offsets!r}, None)\n"
    return _run(gimp, body, timeout=900)


def _dump(gimp: Gimp3Chroot, name: str, case: str) -> np.ndarray:
    _, _, _, _, dtype, channels = FORMATS.get(case, FORMATS["rgb-u8"])
    raw = gimp.to_host(f"{EXCHANGE}/{name}").read_bytes()
    return np.frombuffer(raw, np.dtype(dtype)).reshape(SIZE, SIZE, channels)


def _check_result_layer(facts: dict[str, Any], offsets: tuple[int, int] | list[int]) -> None:
    assert facts["status"] == "success", facts["message"]
    result, source = facts["layers"]
    assert source["name"] == "Source"
    # Same type (RGB/GRAY, alpha or not), bytes per pixel (so precision), size and place.
    for key in ("type", "alpha", "bpp", "size"):
        assert result[key] == source[key], (key, result, source)
    assert result["offsets"] == source["offsets"] == list(offsets)


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_inpaint_keeps_format_and_untouched_pixels_bit_identical(gimp: Gimp3Chroot,
                                                                  format_facts: dict[str, Any], case: str) -> None:
    facts = format_facts[f"inpaint-{case}"]
    _check_result_layer(facts, (0, 0))
    assert facts["precision"] == FORMATS[case][1].lower().replace("_", "-")
    source = _source_pixels(case)
    np.testing.assert_array_equal(_dump(gimp, f"inpaint-{case}-source-after.raw", case), source)
    result = _dump(gimp, f"inpaint-{case}-result.raw", case)
    x, y, w, h = FORMAT_SELECTION
    hole = np.zeros((SIZE, SIZE), bool)
    hole[y:y + h, x:x + w] = True
    # Bit-identical at 16 bits / float outside the selection: no 8-bit round trip anywhere.
    if case in NEAR_EXACT:
        np.testing.assert_allclose(result[~hole], source[~hole], rtol=1e-5, atol=1e-6)
    else:
        assert result[~hole].tobytes() == source[~hole].tobytes()
    assert not np.array_equal(result[hole], source[hole])


@pytest.mark.parametrize("case", ALPHA_CASES)
def test_denoise_keeps_format_and_alpha_bit_identical(gimp: Gimp3Chroot,
                                                      format_facts: dict[str, Any], case: str) -> None:
    facts = format_facts[f"denoise-{case}"]
    _check_result_layer(facts, (0, 0))
    source = _source_pixels(case)
    result = _dump(gimp, f"denoise-{case}-result.raw", case)
    assert result[..., -1].tobytes() == source[..., -1].tobytes()
    assert not np.array_equal(result[..., :-1], source[..., :-1])


@pytest.mark.parametrize("case", sorted(GEOMETRIES))
def test_layer_offsets_and_canvas_overhang_are_respected(gimp: Gimp3Chroot,
                                                         format_facts: dict[str, Any], case: str) -> None:
    canvas, offsets, (sx, sy, sw, sh) = GEOMETRIES[case]
    source = _source_pixels(case)
    _check_result_layer(format_facts[f"denoise-{case}"], offsets)
    assert _dump(gimp, f"denoise-{case}-source-after.raw", case).tobytes() == source.tobytes()
    _check_result_layer(format_facts[f"inpaint-{case}"], offsets)
    result = _dump(gimp, f"inpaint-{case}-result.raw", case)
    # The selection (clipped to the canvas, where GIMP's selection lives) in layer coordinates.
    x1, y1 = max(sx, 0, offsets[0]), max(sy, 0, offsets[1])
    x2 = min(sx + sw, canvas[0], offsets[0] + SIZE)
    y2 = min(sy + sh, canvas[1], offsets[1] + SIZE)
    hole = np.zeros((SIZE, SIZE), bool)
    hole[y1 - offsets[1]:y2 - offsets[1], x1 - offsets[0]:x2 - offsets[0]] = True
    assert hole.any()
    np.testing.assert_array_equal(result[~hole], source[~hole])
    assert not np.array_equal(result[hole], source[hole])


# --- cancel: GIMP kills the plug-in; its engine must stop too ---------------------------

def _tagged(tag: str) -> dict[int, str]:
    """pid -> command line of the processes whose environment carries ``NR_TEST_TAG=tag``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"NR_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_cancel_kills_the_plugin_and_its_engine_stops(gimp: Gimp3Chroot) -> None:
    """What GIMP does when the user cancels the progress bar: SIGKILL the plug-in process."""
    import signal
    import threading
    import time
    import uuid

    tag = uuid.uuid4().hex
    body = """
image, layer = rgb_image(48, 48)
attempt("cancelled", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8",
        method="dip", iterations=100000, device="cpu")
"""
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(_run(gimp, body, env={"NR_TEST_TAG": tag})))
    worker.start()
    try:
        plugin = engine = None
        deadline = time.monotonic() + 120
        while engine is None and time.monotonic() < deadline and worker.is_alive():
            processes = _tagged(tag)
            plugin = next((p for p, cmd in processes.items() if "neural-restore/neural-restore.py" in cmd), None)
            engine = next((p for p, cmd in processes.items() if " -m engine serve" in cmd
                           and plugin is not None and _parent(p) == plugin), None)
            time.sleep(0.2)
        assert engine is not None, f"the engine never started: {_tagged(tag)}"
        time.sleep(4)  # let it get into the optimisation loop
        assert _alive(engine)
        os.kill(plugin, signal.SIGKILL)
        killed = time.monotonic()
        while _alive(engine) and time.monotonic() - killed < 30:
            time.sleep(0.1)
        assert not _alive(engine), "the engine outlived its plug-in"
        stopped_after = time.monotonic() - killed
    finally:
        worker.join(300)
    facts = outcome["cancelled"]
    assert facts["status"] != "success"
    assert facts["layers_same"] and facts["pixels_same"]
    assert stopped_after < 30


# --- live preview, memory budget, progress text, cancel keeping the preview -----------------

def _fake_env(gimp: Gimp3Chroot, **extra: str) -> dict[str, str]:
    fake_dir = gimp.to_host(FAKE_DIR)
    shutil.rmtree(fake_dir, ignore_errors=True)
    fake_dir.mkdir(parents=True)
    fake = fake_dir / "fake_engine.py"
    shutil.copy(FAKE_ENGINE, fake)
    fake.chmod(0o755)
    return dict({"NEURAL_RESTORE_ENGINE_PYTHON": f"{FAKE_DIR}/fake_engine.py"}, **extra)


@pytest.fixture(scope="module")
def preview_facts(gimp: Gimp3Chroot) -> dict[str, Any]:
    body = """
image, layer = rgb_image(24, 24)
attempt("preview-result", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8",
        mode="preview-result", preset="fast", seed=5)
image, layer = rgb_image(24, 24)
attempt("preview-die", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8", mode="preview-die")
image, layer = rgb_image(64, 64)
image.select_ellipse(Gimp.ChannelOps.REPLACE, 20, 14, 17, 12)
attempt("preview-selection", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8",
        mode="preview-result")
facts["preview-selection"]["top_has_mask"] = image.get_layers()[0].get_mask() is not None
"""
    facts = _run(gimp, body, env=_fake_env(gimp, NEURAL_RESTORE_PREVIEW_S="1"))
    requests = gimp.to_host(f"{FAKE_DIR}/fake-requests").read_text().splitlines()
    facts["requests"] = [json.loads(line) for line in requests]
    return facts


def test_preview_layer_is_replaced_by_the_result(preview_facts: dict[str, Any]) -> None:
    facts = preview_facts["preview-result"]
    assert facts["status"] == "success", facts["message"]
    assert [layer[0] for layer in facts["layers"]] == ["Denoise", "Source"]  # no preview left behind
    assert facts["top_digest"] == facts["inverted_digest"] and facts["pixels_same"]
    request = preview_facts["requests"][0]
    assert request["preview_interval_s"] == 1.0
    # The fake engine does not list "preset": the plug-in must not send it (the real engine would refuse).
    assert request["params"] == {"iterations": 0, "seed": 5, "device": "auto"}


def test_a_selection_limits_denoise_and_its_preview_to_the_selection(preview_facts: dict[str, Any]) -> None:
    """Denoise with an elliptic selection: previews (a masked layer over the selection's
    bounds) come and go, and the result covers the bounds, masked to the selection."""
    facts = preview_facts["preview-selection"]
    assert facts["status"] == "success", facts["message"]
    assert facts["layers"] == [["Denoise", [20, 14], 17, 12, None], ["Source", [0, 0], 64, 64, None]]
    assert facts["top_has_mask"] and facts["pixels_same"]
    # The engine was sent the bounds plus 32 px of context, clipped to the layer.
    request = preview_facts["requests"][-1]
    assert request["buffer_sizes"] == [[64, 26 + 32]] and request["preview_interval_s"] == 1.0


def test_preview_is_removed_and_undo_left_enabled_when_the_engine_dies(preview_facts: dict[str, Any]) -> None:
    facts = preview_facts["preview-die"]
    assert facts["status"] == "execution-error" and "stopped unexpectedly" in facts["message"]
    assert facts["layers_same"] and facts["pixels_same"] and facts["channels_same"]
    # Its edits ran with the undo stack frozen (no undo steps), and it is thawed again. GIMP still
    # marks the image dirty when a layer is inserted while frozen, so "dirty" proves nothing here.
    assert facts["undo_enabled"] is True


def test_memory_budget_refusal_names_the_need(gimp: Gimp3Chroot) -> None:
    body = """
image, layer = rgb_image(48, 48)
attempt("denoise", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8", iterations=5, method="dip")
image.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 10, 8, 8)
attempt("inpaint", "plug-in-neural-restore-inpaint-selection", image, [layer], layer, "R'G'B' u8", iterations=5,
        method="dip")
"""
    facts = _run(gimp, body, env={"NEURAL_RESTORE_MEMORY_BUDGET_MB": "1"})
    for case in ("denoise", "inpaint"):
        assert facts[case]["status"] == "execution-error", facts[case]
        message = facts[case]["message"]
        assert "needs about" in message and "this machine has 1 MB free" in message and "smaller area" in message
        assert facts[case]["layers_same"] and facts[case]["pixels_same"] and not facts[case]["dirty"]


def test_progress_text_reaches_gimp_every_second_with_step_and_time_left(gimp: Gimp3Chroot) -> None:
    import re

    log = f"{EXCHANGE}/progress.log"
    gimp.to_host(log).unlink(missing_ok=True)
    body = """
image, layer = rgb_image(48, 48)
attempt("run", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8", iterations=400, device="cpu", method="dip")
"""
    facts = _run(gimp, body, env={"NEURAL_RESTORE_PROGRESS_LOG": log})
    assert facts["run"]["status"] == "success", facts["run"]["message"]
    records = [line.split("\t", 2) for line in gimp.to_host(log).read_text().splitlines()]
    times = [float(r[0]) for r in records]
    texts = [r[2] for r in records]
    assert times[-1] - times[0] >= 3, "the run was too short to say anything"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 1.5, f"GIMP heard nothing for {max(gaps):.2f} s"
    assert all("elapsed" in t for t in texts if t != "Adding the result layer...")
    assert any(re.search(r"iteration \d+/400", t) for t in texts)
    assert any("left" in t and re.search(r"iteration \d+/400", t) for t in texts)


def test_cancel_keeps_the_last_preview_as_the_result_so_far(gimp: Gimp3Chroot) -> None:
    """GIMP kills the plug-in on cancel; what the user saw last stays as a layer."""
    import signal
    import threading
    import time
    import uuid

    tag = uuid.uuid4().hex
    env = _fake_env(gimp, NEURAL_RESTORE_PREVIEW_S="1", NR_TEST_TAG=tag)
    marker = gimp.to_host(f"{FAKE_DIR}/fake-preview-sent")
    body = """
image, layer = rgb_image(24, 24)
attempt("cancelled", "plug-in-neural-restore-denoise", image, [layer], layer, "R'G'B' u8", mode="preview-hang")
"""
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(_run(gimp, body, env=env)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.2)
        assert marker.exists(), "the fake engine never sent its preview"
        time.sleep(2)  # the plug-in draws the preview
        plugin = next(p for p, cmd in _tagged(tag).items() if "neural-restore/neural-restore.py" in cmd)
        os.kill(plugin, signal.SIGKILL)  # what GIMP does on cancel
    finally:
        # The fake ignores its closed stdin (the real engine stops: see the test above) and
        # holds GIMP's stderr, which the harness reads to the end: stop it before waiting.
        time.sleep(1)
        for line in gimp.to_host(f"{FAKE_DIR}/fake-starts").read_text().splitlines():
            pid = int(line.split()[0])
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        worker.join(300)
    facts = outcome["cancelled"]
    assert facts["status"] != "success"
    assert [layer[0] for layer in facts["layers"]] == ["Denoise (preview)", "Source"]
    assert facts["top_digest"] == facts["inverted_digest"] and facts["pixels_same"]
