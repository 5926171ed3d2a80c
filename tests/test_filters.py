"""Host-neutral filter logic (gimp_plugin/neural_restore/filters.py) against a recording host.

The host here is an in-memory editor: it serves pixels and a selection and records the layers
a filter adds. The engine is real (a subprocess of this interpreter).
"""
import sys

import numpy as np
import pytest

from neural_restore import filters
from neural_restore.filters import FilterError, SourceInfo


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
    assert names == ["plug-in-neural-restore-denoise", "plug-in-neural-restore-inpaint-selection"]
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
