"""Host-neutral filter logic (gimp_plugin/neural_restore/filters.py) against a recording host.

The host here is an in-memory editor: it serves pixels and a selection and records the layers
a filter adds. The engine is real (a subprocess of this interpreter).
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neural_restore import filters
from neural_restore.client import EngineFailure, EngineProcess
from neural_restore.filters import FilterError, SourceInfo

FAKE_ENGINE = Path(__file__).with_name("gimp2") / "fake_engine.py"


class MemoryHost(object):
    def __init__(self, pixels, x=0, y=0, selection=None, canvas=(64, 64)):
        self.pixels = pixels
        self.x, self.y = x, y
        self.selection = selection  # u8 array in image coordinates (canvas size), or None
        self.canvas = canvas
        self.added = []
        self.progress_calls = []

    def source(self):
        h, w, c = self.pixels.shape
        return SourceInfo(w, h, self.x, self.y, c, "u8", "Background")

    def read_pixels(self, source):
        return self.pixels.tobytes()

    def selection_bounds(self):
        if self.selection is None or not self.selection.any():
            return None
        ys, xs = np.nonzero(self.selection)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def read_selection(self, x, y, width, height):
        out = np.zeros((height, width), np.uint8)
        ch, cw = self.selection.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, cw), min(y + height, ch)
        if x0 < x1 and y0 < y1:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self.selection[y0:y1, x0:x1]
        return out.tobytes()

    def progress(self, fraction, text):
        self.progress_calls.append((fraction, text))
        return False

    def add_layers(self, source, layer_name, buffers):
        self.added.append((layer_name, buffers))


@pytest.fixture(autouse=True)
def engine_here(monkeypatch, engine_python):
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", engine_python)


def _spec(key):
    return next(s for s in filters.FILTERS if s.key == key)


def _pixels(h=24, w=28, c=4):
    return np.random.default_rng(3).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_procedures_are_named_and_unique():
    names = [s.procedure_name for s in filters.FILTERS]
    assert names[:3] == ["plug-in-neural-restore-denoise", "plug-in-neural-restore-inpaint-selection",
                         "plug-in-neural-restore-remove-jpeg-artifacts"]
    assert {"plug-in-neural-restore-upscale", "plug-in-neural-restore-sharpen",
            "plug-in-neural-restore-decompose"} <= set(names)
    assert len(set(names)) == len(names)
    assert filters.filter_by_procedure(names[1]).op == "inpaint"


def test_denoise_adds_one_layer_with_the_source_geometry(tmp_path):
    pixels = _pixels()
    host = MemoryHost(pixels.copy(), x=7, y=3)
    filters.run_filter(host, _spec("denoise"), {"iterations": 5, "seed": 0, "device": "cpu"}, str(tmp_path))
    ((name, (layer,)),) = host.added
    assert name == "Denoise"
    assert (layer.width, layer.height, layer.channels, layer.x, layer.y) == (28, 24, 4, 7, 3)
    np.testing.assert_array_equal(host.pixels, pixels)  # the source is never written
    assert host.progress_calls[-1][0] == 1.0


def test_inpaint_uses_the_selection_in_layer_coordinates(tmp_path):
    pixels = _pixels(c=3)
    selection = np.zeros((64, 64), np.uint8)
    selection[10:16, 12:20] = 255  # image coordinates; the layer sits at (5, 4)
    host = MemoryHost(pixels.copy(), x=5, y=4, selection=selection)
    filters.run_filter(host, _spec("inpaint-selection"), {"iterations": 5}, str(tmp_path))
    ((_, (layer,)),) = host.added
    out = np.frombuffer(layer.data, np.uint8).reshape(pixels.shape)
    hole = np.zeros(pixels.shape[:2], bool)
    hole[6:12, 7:15] = True
    np.testing.assert_array_equal(out[~hole], pixels[~hole])
    assert not np.array_equal(out[hole], pixels[hole])


@pytest.mark.parametrize("selection, message", [
    (None, "needs a selection"),
    ("outside", "does not touch the active layer"),
])
def test_inpaint_refuses_without_a_usable_selection(tmp_path, selection, message):
    mask = None
    if selection == "outside":
        mask = np.zeros((64, 64), np.uint8)
        mask[50:60, 50:60] = 255
    host = MemoryHost(_pixels(), selection=mask)
    with pytest.raises(FilterError, match=message) as error:
        filters.run_filter(host, _spec("inpaint-selection"), {}, str(tmp_path))
    assert error.value.kind == "bad-input"
    assert host.added == []


def test_missing_engine_says_run_install(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURAL_RESTORE_ENGINE_PYTHON")
    host = MemoryHost(_pixels())
    with pytest.raises(FilterError, match="install.py") as error:
        filters.run_filter(host, _spec("denoise"), {}, str(tmp_path))
    assert error.value.kind == "setup" and host.added == []


def test_engine_bad_input_reaches_the_user_unchanged(tmp_path):
    host = MemoryHost(_pixels(3, 3))
    with pytest.raises(FilterError, match="at least") as error:
        filters.run_filter(host, _spec("denoise"), {"iterations": 2}, str(tmp_path))
    assert error.value.kind == "bad-input" and host.added == []


# --- progress text, engine time-outs and lifetime (no GIMP needed) ---------------------

class FakeClock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_text_shows_the_step_elapsed_and_time_left():
    host = MemoryHost(_pixels())
    clock = FakeClock()
    progress = filters.ProgressClock(host, clock)
    clock.now += 5  # engine start-up: counts as elapsed, not in the rate
    progress.first = None
    progress(0.1, "iteration 10/100")
    clock.now += 10
    progress(0.2, "iteration 20/100")
    assert host.progress_calls[-1] == (0.2, "iteration 20/100 (0:15 elapsed, about 1:20 left)")
    clock.now += 2
    progress.tick()  # the engine is silent: same step, fresher clock
    assert host.progress_calls[-1][1].startswith("iteration 20/100 (0:17 elapsed")


def test_progress_text_has_no_estimate_until_the_rate_is_known():
    host = MemoryHost(_pixels())
    clock = FakeClock()
    progress = filters.ProgressClock(host, clock)
    progress(0.0, "iteration 0/3000")
    clock.now += 1
    progress(0.001, "iteration 3/3000")
    assert host.progress_calls[-1][1] == "iteration 3/3000 (0:01 elapsed)"


def test_too_small_layer_is_refused_before_the_engine_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", str(tmp_path / "no-such-python"))
    host = MemoryHost(_pixels(7, 30))
    with pytest.raises(FilterError, match="30x7 pixels.*at least 8x8") as error:
        filters.run_filter(host, _spec("denoise"), {}, str(tmp_path))
    assert error.value.kind == "bad-input" and host.added == [] and host.progress_calls == []


def _fake_engine(tmp_path, mode):
    """A fake engine 'python' (tests/gimp2/fake_engine.py behind a shell wrapper) in ``mode``."""
    shutil.copy(str(FAKE_ENGINE), str(tmp_path / "fake_engine.py"))
    (tmp_path / "fake-mode").write_text(mode)
    wrapper = tmp_path / "engine-python"
    wrapper.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, tmp_path / "fake_engine.py"))
    wrapper.chmod(0o755)
    return {"engine_python": str(wrapper)}


def _image():
    from neural_restore.protocol import WireBuffer
    return WireBuffer("image", 16, 16, 3, "u8", bytes(16 * 16 * 3))


def test_closing_ticks_while_the_engine_takes_its_time_to_exit(tmp_path):
    engine = EngineProcess(_fake_engine(tmp_path, "slow-exit"))
    engine.start()
    ticks = []
    started = time.monotonic()
    engine.close(on_idle=lambda: ticks.append(time.monotonic()))
    assert engine.process is None and time.monotonic() - started >= 1.5
    assert len(ticks) >= 2 and max(b - a for a, b in zip([started] + ticks, ticks)) < 1.0


@pytest.mark.parametrize("mode, what", [("hang-before-hello", "while starting"),
                                        ("hang-mid-run", "while running denoise")])
def test_a_silent_engine_times_out_is_killed_and_ticks_meanwhile(tmp_path, monkeypatch, mode, what):
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_TIMEOUT", "2.5")
    ticks = []
    engine = EngineProcess(_fake_engine(tmp_path, mode))
    started = time.monotonic()
    with pytest.raises(EngineFailure, match="no word from it for 2.5 s %s" % what) as failure:
        try:
            engine.start(on_idle=lambda: ticks.append(time.monotonic()))
            engine.run("denoise", {}, [_image()], on_idle=lambda: ticks.append(time.monotonic()))
        finally:
            process = engine.process
            engine.close()
    assert failure.value.kind == "engine"
    assert 2.5 <= time.monotonic() - started < 8
    assert len(ticks) >= 2  # the host hears from the plug-in about once a second
    assert process.returncode is not None  # killed and reaped


def test_timeout_setting_falls_back_to_the_default_on_nonsense(monkeypatch):
    from neural_restore.client import DEFAULT_TIMEOUT_S, engine_timeout
    for value, expected in (("7", 7.0), ("soon", DEFAULT_TIMEOUT_S), ("-1", DEFAULT_TIMEOUT_S)):
        monkeypatch.setenv("NEURAL_RESTORE_ENGINE_TIMEOUT", value)
        assert engine_timeout() == expected


def test_the_engine_dies_with_the_plugin(tmp_path):
    """GIMP kills a plug-in whose progress the user cancels: its engine must not run on.

    A stand-in plug-in process (the real client, the real engine) starts a long denoise;
    it is SIGKILLed like GIMP does, and its engine must then exit by itself.
    """
    script = tmp_path / "plugin.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "from neural_restore.client import EngineProcess\n"
        "from neural_restore.protocol import WireBuffer\n"
        "engine = EngineProcess({'engine_python': sys.executable})\n"
        "engine.start()\n"
        "print(engine.process.pid, flush=True)\n"
        "image = WireBuffer('image', 32, 32, 3, 'u8', bytes(32 * 32 * 3))\n"
        "engine.run('denoise', {'iterations': 100000, 'device': 'cpu'}, [image],\n"
        "           lambda fraction, text: print('progress', flush=True))\n"
        % str(Path(filters.__file__).resolve().parents[1]))
    plugin = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(plugin.stdout.readline())
        assert plugin.stdout.readline().strip() == "progress"  # the engine is working
        os.kill(plugin.pid, signal.SIGKILL)
        plugin.wait()
        deadline = time.monotonic() + 30
        while _running(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(engine_pid), "the engine outlived its plug-in"
    finally:
        plugin.kill()
        plugin.wait()


def _running(pid):
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie holds nothing; its new parent reaps it


# --- live preview, partial result on cancel, params an engine does not know ----------------

class PreviewHost(MemoryHost):
    """A host that shows previews; ``events`` records their order against the result."""

    def __init__(self, pixels, cancel=False, **kwargs):
        MemoryHost.__init__(self, pixels, **kwargs)
        self.preview_interval_s = 1.0
        self.events = []
        self.cancel = cancel

    def show_preview(self, source, layer_name, buffers, mask_with_selection=False):
        self.events.append(("preview", layer_name, buffers[0].data) + (("masked",) if mask_with_selection else ()))
        self.preview_boxes = getattr(self, "preview_boxes", []) + [
            (buffers[0].x, buffers[0].y, buffers[0].width, buffers[0].height)]

    def remove_preview(self):
        self.events.append(("remove",))

    def add_layers(self, source, layer_name, buffers, mask_with_selection=False):
        MemoryHost.add_layers(self, source, layer_name, buffers)
        self.events.append(("add", layer_name) + (("masked",) if mask_with_selection else ()))

    def progress(self, fraction, text):
        MemoryHost.progress(self, fraction, text)
        return self.cancel


def _fake_config(tmp_path, monkeypatch, mode):
    config = _fake_engine(tmp_path, mode)
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", config["engine_python"])
    return config


def _requests(tmp_path):
    import json
    return [json.loads(line) for line in (tmp_path / "fake-requests").read_text().splitlines()]


def test_previews_are_shown_then_removed_before_the_result_is_added(tmp_path, monkeypatch):
    _fake_config(tmp_path, monkeypatch, "preview-result")
    pixels = _pixels(16, 16, 3)
    host = PreviewHost(pixels)
    filters.run_filter(host, _spec("denoise"), {"preset": "fast", "iterations": 3, "seed": 0, "device": "cpu"},
                       str(tmp_path))
    inverted = (255 - pixels).tobytes()
    assert host.events == [("preview", "Denoise (preview)", inverted)] * 2 + [("remove",), ("add", "Denoise")]
    (request,) = _requests(tmp_path)
    assert request["preview_interval_s"] == 1.0
    # This engine's hello lists no "preset": the plug-in leaves it out instead of failing.
    assert request["params"] == {"iterations": 3, "seed": 0, "device": "cpu"}


@pytest.mark.parametrize("key", ["denoise", "remove-jpeg-artifacts"])
def test_a_selection_limits_denoise_to_its_bounds_with_previews_and_result_masked(tmp_path, monkeypatch, key):
    """Denoise (and JPEG) with a selection: the engine gets the selection's bounds plus
    DIP_CONTEXT px (inside the layer); previews and the result cover the bounds only and are
    masked to the selection, as Sharpen's result is."""
    _fake_config(tmp_path, monkeypatch, "preview-result")
    pixels = _pixels(48, 56, 3)
    selection = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    selection[(yy - 20) ** 2 + (xx - 14) ** 2 <= 64] = 255  # a disc near the layer's left edge
    host = PreviewHost(pixels, x=3, y=2, selection=selection)
    spec = _spec(key)
    filters.run_filter(host, spec, {"iterations": 3}, str(tmp_path))
    x1, y1, x2, y2 = host.selection_bounds()
    ctx = filters.DIP_CONTEXT
    ox1, oy1, ox2, oy2 = max(x1 - ctx, 3), max(y1 - ctx, 2), min(x2 + ctx, 3 + 56), min(y2 + ctx, 2 + 48)
    # The fake engine inverts what it is sent: the cut-back result shows what was sent where.
    want = (255 - pixels[y1 - 2:y2 - 2, x1 - 3:x2 - 3]).tobytes()
    name = spec.layer_name
    assert host.events == [("preview", name + " (preview)", want, "masked")] * 2 + [
        ("remove",), ("add", name, "masked")]
    assert host.preview_boxes == [(x1, y1, x2 - x1, y2 - y1)] * 2
    ((_, (layer,)),) = host.added
    assert (layer.x, layer.y, layer.width, layer.height, layer.data) == (x1, y1, x2 - x1, y2 - y1, want)
    assert (ox1, oy1) == (3, 2) and ox2 - ox1 < 56  # clipped to the layer on one side only
    assert filters.work_size(spec, host, host.source()) == (ox2 - ox1, oy2 - oy1)
    # A rectangle needs no mask, and without a selection the whole layer is processed.
    for rectangle, box in ((True, (10, 12, 20, 16)), (False, (3, 2, 56, 48))):
        host.events, host.added = [], []
        host.selection = None
        if rectangle:
            host.selection = np.zeros((64, 64), np.uint8)
            host.selection[12:28, 10:30] = 255
        filters.run_filter(host, spec, {"iterations": 3}, str(tmp_path))
        assert host.events[-1] == ("add", name)
        ((_, (layer,)),) = host.added
        assert (layer.x, layer.y, layer.width, layer.height) == box


def test_no_preview_is_asked_for_when_the_host_shows_none(tmp_path, monkeypatch):
    _fake_config(tmp_path, monkeypatch, "preview-result")
    host = MemoryHost(_pixels(16, 16, 3))
    filters.run_filter(host, _spec("denoise"), {"iterations": 3}, str(tmp_path))
    (request,) = _requests(tmp_path)
    assert "preview_interval_s" not in request and [n for n, _ in host.added] == ["Denoise"]


def test_the_preview_is_removed_when_the_engine_dies(tmp_path, monkeypatch):
    _fake_config(tmp_path, monkeypatch, "preview-die")
    host = PreviewHost(_pixels(16, 16, 3))
    with pytest.raises(FilterError, match="stopped unexpectedly"):
        filters.run_filter(host, _spec("denoise"), {}, str(tmp_path))
    assert [e[0] for e in host.events] == ["preview", "remove"] and host.added == []


def test_a_cancel_with_a_partial_result_keeps_it_as_result_so_far(tmp_path, monkeypatch):
    _fake_config(tmp_path, monkeypatch, "partial")
    pixels = _pixels(16, 16, 3)
    host = PreviewHost(pixels, cancel=True)
    info = filters.run_filter(host, _spec("denoise"), {}, str(tmp_path))
    assert info["partial"] is True
    ((name, (layer,)),) = host.added
    assert name == "Denoise (result so far)" and layer.data == (255 - pixels).tobytes()


def test_a_partial_layer_stack_goes_into_a_group_named_result_so_far(tmp_path, monkeypatch):
    _fake_config(tmp_path, monkeypatch, "partial")
    pixels = _pixels(16, 16, 3)
    host = PreviewHost(pixels, cancel=True)
    groups = []
    host.add_layer_group = lambda source, name, stack: groups.append((name, stack))
    info = filters.run_filter(host, _spec("decompose"), {"mode": "segment"}, str(tmp_path))
    assert info["partial"] is True and host.added == []
    ((name, ((layer, mask),)),) = groups
    assert name == "Segment (result so far)" and mask is None and layer.data == (255 - pixels).tobytes()


def test_no_preview_is_asked_for_results_that_cannot_be_shown_over_the_source(tmp_path, monkeypatch):
    """Upscale's results are larger than the source: a preview layer could not cover it."""
    _fake_config(tmp_path, monkeypatch, "preview-result")
    host = PreviewHost(_pixels(16, 16, 3))
    with pytest.raises(FilterError, match="wrong size"):  # the fake answers at the source's size
        filters.run_filter(host, _spec("upscale"), {"scale": "2", "method": "dip"}, str(tmp_path))
    (request,) = _requests(tmp_path)
    assert "preview_interval_s" not in request and request["params"]["scale"] == 2
    assert [e[0] for e in host.events] == []


def test_an_engine_without_op_params_gets_the_params_unchanged():
    engine = EngineProcess({"engine_python": sys.executable})
    engine.hello = {"type": "hello", "protocol": 1, "ops": ["denoise"]}  # protocol-1 engine of session 1
    assert engine.supported_params("denoise", {"preset": "fast", "seed": 1}) == {"preset": "fast", "seed": 1}
    engine.hello["op_params"] = {"denoise": {"seed": {"default": 0}, "preset": {"choices": ["auto", "fast"]}}}
    assert engine.supported_params("denoise", {"preset": "paper", "seed": 1, "x": 2}) == {"seed": 1}
    assert engine.features() == set()


def test_preview_interval_defaults_to_interactive_runs_only():
    assert filters.preview_interval(True, {}) == 3.0
    assert filters.preview_interval(False, {}) is None
    assert filters.preview_interval(False, {"NEURAL_RESTORE_PREVIEW_S": "1.5"}) == 1.5
    assert filters.preview_interval(True, {"NEURAL_RESTORE_PREVIEW_S": "0"}) is None


# --- the dialog's time/memory estimate ------------------------------------------------------

def test_estimate_text_names_each_preset_and_the_device():
    reply = {"seconds": [40, 40, 185, None], "memory_bytes": [1 << 30] * 4, "memory_available": 8 << 30}
    text = filters.describe_estimate(_spec("denoise"), reply, "the CPU")
    assert text == "About 40 s with Automatic, 40 s with Fast, 3 min with Best quality on the CPU."


def test_estimate_text_is_one_figure_when_the_preset_does_not_matter():
    # Upscale with the trained net: the Quality setting (for method dip) changes nothing.
    reply = {"seconds": [1.4, 1.4, 1.4, 1.4], "memory_bytes": [None] * 4, "memory_available": None}
    assert filters.describe_estimate(_spec("upscale"), reply, "the CPU") == "About 1 s on the CPU."


def test_estimate_text_warns_when_memory_is_short_and_survives_no_estimate():
    reply = {"seconds": [None] * 4, "memory_bytes": [9 << 30] * 4, "memory_available": 4 << 30}
    text = filters.describe_estimate(_spec("denoise"), reply, "the CPU")
    assert text.startswith(filters.ESTIMATE_UNAVAILABLE)
    assert "Needs about 9.0 GB of memory, this machine has 4.0 GB free: select a smaller area." in text
    assert filters.describe_estimate(_spec("denoise"), None, "the CPU") == filters.ESTIMATE_UNAVAILABLE


def test_estimate_asks_the_real_engine_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_MEMORY_BUDGET_MB", "1")  # inherited by the engine
    host = MemoryHost(_pixels(64, 64, 3))
    text = filters.estimate_text(host, _spec("denoise"), {"device": "cpu", "method": "dip"}, str(tmp_path))
    assert "this machine has 1 MB free" in text
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", str(tmp_path / "no-such-python"))
    assert filters.estimate_text(host, _spec("denoise"), {}, str(tmp_path)) == filters.ESTIMATE_UNAVAILABLE


def test_preset_is_appended_for_positional_callers_and_shown_first_in_the_dialog():
    # Remove JPEG Artifacts: DIP only until the trained net came, whose method and passes
    # follow the DIP settings; the dialog shows the method and the network's settings first.
    spec = _spec("remove-jpeg-artifacts")
    assert [p.name for p in spec.params] == ["iterations", "seed", "device", "preset", "method", "passes"]
    assert filters.dialog_order(spec) == ["method", "device", "passes", "preset", "iterations", "seed"]
    assert spec.param("method").default == "net"
    # Denoise: method, the network's passes and then its strength came after the DIP settings
    # (positional callers); the dialog shows the method, the network's settings, then DIP's.
    assert [p.name for p in _spec("denoise").params] == ["iterations", "seed", "device", "preset", "method",
                                                         "passes", "strength"]
    assert filters.dialog_order(_spec("denoise")) == ["method", "strength", "device", "passes", "preset",
                                                      "iterations", "seed"]
    assert "strength" not in [p.name for p in _spec("inpaint-selection").params]
    assert _spec("denoise").param("method").default == "net"
    # Inpaint's third method (texture from the image, the default) came last: gimpfu passes
    # a choice's index, so net and dip keep theirs.
    assert _spec("inpaint-selection").param("method").choice_values() == ["net", "dip", "patch"]
    assert _spec("inpaint-selection").param("method").default == "patch"
    # Decompose: which layers first, then quality; filters without either keep their order.
    assert filters.dialog_order(_spec("decompose")) == ["mode", "preset", "iterations", "seed", "device", "working_side"]
    # Upscale: the DIP settings (for method dip) follow the method choice.
    assert filters.dialog_order(_spec("upscale")) == ["scale", "method", "jpeg_artifacts", "device", "passes",
                                                      "preset", "iterations", "seed"]
    # newest last, for positional callers
    assert [p.name for p in _spec("upscale").params][-2:] == ["passes", "jpeg_artifacts"]
    # Sharpen: its amount first in the dialog, last for positional (GIMP 2.10) callers.
    assert [p.name for p in _spec("sharpen").params] == ["device", "passes", "amount"]
    assert filters.dialog_order(_spec("sharpen")) == ["amount", "device", "passes"]
    assert spec.param("preset").choice_values() == ["auto", "fast", "quality", "paper"]


def test_dialog_estimator_follows_setting_changes_on_one_engine(tmp_path):
    host = MemoryHost(_pixels(64, 64, 3))
    estimator = filters.DialogEstimator(host, _spec("denoise"), str(tmp_path))
    try:
        on_cpu = estimator.text({"iterations": 0, "seed": 0, "device": "cpu", "preset": "auto", "method": "dip"})
        engine = estimator.engine
        fixed = estimator.text({"iterations": 50, "seed": 0, "device": "cpu", "preset": "auto", "method": "dip"})
        on_gpu = estimator.text({"iterations": 0, "seed": 0, "device": "cuda", "preset": "auto", "method": "dip"})
        assert estimator.engine is engine  # one engine for the dialog's life, not one per change
    finally:
        estimator.close()
    assert on_cpu.startswith("About ") and on_cpu.endswith("on the CPU.")
    assert fixed != on_cpu  # a fixed iteration count changes the figures
    assert on_gpu != on_cpu
    assert estimator.engine is None


def test_inpaint_estimate_counts_the_selected_pixels_not_the_selections_box(tmp_path):
    """Dust spots over a whole scan: the selection's box is the layer, but little of it is
    selected (and thin: the network's); the dialog sends the count, so the figure is that of
    the spots, not of a layer-sized hole to copy texture into."""
    spots = MemoryHost(_pixels(400, 400, 3))
    spots.selection = np.zeros((400, 400), np.uint8)
    for k in range(10):
        spots.selection[20 + 36 * k:24 + 36 * k, 30 + 30 * k:34 + 30 * k] = 255
    spots.selection[380:384, 10:14] = 128  # partly selected pixels are filled (blended) too
    block = MemoryHost(_pixels(400, 400, 3))
    block.selection = np.full((400, 400), 255, np.uint8)
    source = spots.source()
    assert filters.selected_pixel_count(_spec("inpaint-selection"), spots, source) == 11 * 16
    assert filters.selected_pixel_count(_spec("denoise"), spots, source) is None
    figures = {}
    for name, host in (("spots", spots), ("block", block)):
        estimator = filters.DialogEstimator(host, _spec("inpaint-selection"), str(tmp_path))
        try:
            figures[name] = estimator._reply({"device": "cpu"})["seconds"][0]
        finally:
            estimator.close()
    assert 0 < figures["spots"] < 0.5 * figures["block"], figures


def test_dialog_estimator_gives_up_once_when_the_engine_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", str(tmp_path / "no-such-python"))
    estimator = filters.DialogEstimator(MemoryHost(_pixels(32, 32, 3)), _spec("denoise"), str(tmp_path))
    assert estimator.text({"device": "cpu"}) == filters.ESTIMATE_UNAVAILABLE
    assert estimator.failed and estimator.engine is None
    monkeypatch.delenv("NEURAL_RESTORE_ENGINE_PYTHON")
    assert estimator.text({"device": "cpu"}) == filters.ESTIMATE_UNAVAILABLE  # no retry per click


class TwoLayerHost(MemoryHost):
    """A host with several selected layers (GIMP 3's drawables), the first on top."""

    def __init__(self, layers):
        MemoryHost.__init__(self, layers[0])
        self.layers = layers
        self.groups = []

    def source(self):
        if len(self.layers) != 1:
            filters.refuse_item("count", count=len(self.layers))
        return self.sources()[0]

    def sources(self):
        infos = []
        for index, pixels in enumerate(self.layers):
            h, w, c = pixels.shape
            info = SourceInfo(w, h, 0, 0, c, "u8", "Shot %d" % index)
            info.item = pixels
            infos.append(info)
        return infos

    def read_pixels(self, source):
        return source.item.tobytes()

    def add_layer_group(self, source, group_name, stack):
        self.groups.append((group_name, stack))


def _two_shots(size=32):
    yy, xx = np.mgrid[:size, :size] / size
    bands = 0.5 + 0.4 * np.sin(12 * (xx + yy))
    discs = np.where((yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.06, 0.9, 0.1)
    return [((w * bands + (1 - w) * discs)[..., None].repeat(3, 2) * 255).astype(np.uint8) for w in (0.5, 0.7)]


def test_transparency_with_two_layers_sends_the_second_as_a_second_mix(tmp_path, monkeypatch):
    sent = []
    real_run = EngineProcess.run

    def recording_run(self, op, params, buffers, *args, **kwargs):
        sent.append([b.name for b in buffers])
        return real_run(self, op, params, buffers, *args, **kwargs)

    monkeypatch.setattr(EngineProcess, "run", recording_run)
    host = TwoLayerHost(_two_shots())
    values = {"mode": "transparency", "iterations": 5, "seed": 0, "device": "cpu", "preset": "fast"}
    filters.run_filter(host, _spec("decompose"), values, str(tmp_path))
    assert sent == [["image", "second"]]
    (name, stack), = host.groups
    assert name == "Transparency"
    assert [layer.title for layer, _ in stack] == ["Reflection", "Transmission"]


@pytest.mark.parametrize("layers, mode, message", [
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 40, 3), np.uint8)], "transparency", "same size"),
    ([np.zeros((32, 32, 3), np.uint8)] * 3, "transparency", "3 are selected"),
    ([np.zeros((32, 32, 3), np.uint8)] * 2, "dehaze", "exactly one layer"),
])
def test_two_layers_are_refused_before_the_engine_starts_unless_they_fit(tmp_path, monkeypatch, layers, mode,
                                                                        message):
    monkeypatch.setattr(EngineProcess, "start", lambda *a, **k: pytest.fail("the engine was started"))
    host = TwoLayerHost(layers)
    values = {"mode": mode, "iterations": 5, "seed": 0, "device": "cpu", "preset": "fast"}
    with pytest.raises(FilterError, match=message):
        filters.run_filter(host, _spec("decompose"), values, str(tmp_path))
    assert not host.groups


def test_two_layers_are_refused_by_an_engine_that_would_ignore_the_second(tmp_path, monkeypatch):
    real_start = EngineProcess.start

    def start_as_older_engine(self, *args, **kwargs):
        real_start(self, *args, **kwargs)
        self.hello["features"] = [f for f in self.hello["features"] if f != "second-image"]

    monkeypatch.setattr(EngineProcess, "start", start_as_older_engine)
    monkeypatch.setattr(EngineProcess, "run", lambda *a, **k: pytest.fail("a request was sent"))
    host = TwoLayerHost(_two_shots())
    values = {"mode": "transparency", "iterations": 5, "seed": 0, "device": "cpu", "preset": "fast"}
    with pytest.raises(FilterError, match="install.py"):
        filters.run_filter(host, _spec("decompose"), values, str(tmp_path))
    assert not host.groups


class JpegHost(MemoryHost):
    """An image opened from a JPEG: GIMP's loader left its settings in a parasite."""

    def __init__(self, pixels, parasite, **kwargs):
        MemoryHost.__init__(self, pixels, **kwargs)
        self.parasite = parasite

    def jpeg_settings(self):
        return self.parasite


@pytest.mark.parametrize("selected", [False, True])
def test_remove_jpeg_artifacts_sends_the_jpeg_tables_with_where_the_pixels_start(tmp_path, monkeypatch, selected):
    sent = []
    real_run = EngineProcess.run

    def recording_run(self, op, params, buffers, *args, **kwargs):
        sent.append((params, buffers[0].x, buffers[0].y))
        return real_run(self, op, params, buffers, *args, **kwargs)

    monkeypatch.setattr(EngineProcess, "run", recording_run)
    selection = None
    if selected:
        selection = np.zeros((64, 64), np.uint8)
        selection[40:60, 35:55] = 255  # image coordinates; the layer sits at (0, 0)
    parasite = bytes([3, 90, 3, 0, 2, 2, 1, 1, 1, 1])  # YCbCr, quality 90, 4:2:0, IJG tables
    host = JpegHost(_pixels(64, 64, 3), parasite, selection=selection)
    filters.run_filter(host, _spec("remove-jpeg-artifacts"), {"device": "cpu"}, str(tmp_path))
    (params, x, y), = sent
    assert params["jpeg_tables"] == "sampling=2x2,1x1,1x1 quality=90 origin=%d,%d" % (x, y)
    assert (x, y) == ((35 - filters.DIP_CONTEXT, 40 - filters.DIP_CONTEXT) if selected else (0, 0))
    assert len(host.added) == 1
    sent.clear()
    filters.run_filter(MemoryHost(_pixels(64, 64, 3)), _spec("remove-jpeg-artifacts"), {"device": "cpu"},
                       str(tmp_path))
    assert "jpeg_tables" not in sent[0][0]  # a host without the parasite sends none


def test_upscale_sends_an_opened_jpegs_tables_and_removes_its_artifacts_first_by_default(tmp_path, monkeypatch):
    sent = []
    real_run = EngineProcess.run

    def recording_run(self, op, params, buffers, *args, **kwargs):
        sent.append(params)
        return real_run(self, op, params, buffers, *args, **kwargs)

    monkeypatch.setattr(EngineProcess, "run", recording_run)
    parasite = bytes([3, 75, 3, 0, 2, 2, 1, 1, 1, 1])
    host = JpegHost(_pixels(24, 28, 3), parasite)
    host.open_image = lambda source, name, buffer: host.added.append((name, [buffer]))
    values = {"scale": "2", "method": "rdn", "device": "cpu", "passes": "1", "jpeg_artifacts": "auto"}
    filters.run_filter(host, _spec("upscale"), values, str(tmp_path))
    assert sent[0]["jpeg_artifacts"] == "auto"
    assert sent[0]["jpeg_tables"] == "sampling=2x2,1x1,1x1 quality=75 origin=0,0"
    (name, (image,)), = host.added
    assert (image.width, image.height) == (56, 48)
