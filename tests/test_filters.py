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
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

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
def engine_here(monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_ENGINE_PYTHON", sys.executable)


def _spec(key):
    return next(s for s in filters.FILTERS if s.key == key)


def _pixels(h=24, w=28, c=4):
    return np.random.default_rng(3).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_procedures_are_named_and_unique():
    names = [s.procedure_name for s in filters.FILTERS]
    assert names == ["plug-in-neural-restore-denoise", "plug-in-neural-restore-inpaint-selection",
                     "plug-in-neural-restore-remove-jpeg-artifacts"]
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
