"""Drives the GIMP 2.10 plug-in under a real Python 2.7 against the fake gimpfu (this folder).

Usage: python2.7 drive_adapter.py PLUGIN_DIR OUT_DIR
PLUGIN_DIR holds neural_restore_gimp2.py and the neural_restore package, as a GIMP 2.10
plug-ins folder would. Writes OUT_DIR/facts.json and raw pixel dumps (<case>-*.raw) that
tests/test_gimp2_adapter.py checks with numpy. The engine is real: the plug-in starts it
through NEURAL_RESTORE_ENGINE_PYTHON.
"""
import imp
import json
import os
import random
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the fake gimpfu

import gimpfu  # noqa: E402
from gimpfu import gimp, pdb  # noqa: E402

PLUGIN_DIR, OUT = sys.argv[1], sys.argv[2]
facts = {"python": sys.version.split()[0]}
plugin = imp.load_source("neural_restore_gimp2", os.path.join(PLUGIN_DIR, "neural_restore_gimp2.py"))
procedures = dict((p["name"], p) for p in gimpfu.REGISTERED)
facts["registered"] = [dict((k, v) for k, v in p.items() if k != "function") for p in gimpfu.REGISTERED]
for p in facts["registered"]:
    p["params"] = [param[1] for param in p["params"]]
DENOISE = procedures["plug-in-neural-restore-denoise"]["function"]
INPAINT = procedures["plug-in-neural-restore-inpaint-selection"]["function"]
DECOMPOSE = procedures["plug-in-neural-restore-decompose"]["function"]
CPU = 1  # index of "cpu" in the device option menu


def fill(item, seed):
    rng = random.Random(seed)
    item.data[:] = bytearray(rng.randrange(256) for _ in range(len(item.data)))
    return bytes(item.data)


def select(image, x, y, w, h):
    for row in range(y, y + h):
        for col in range(x, x + w):
            image.selection.data[row * image.width + col] = 255


def tree(layers):
    return [[l.name, list(l.offsets), l.width, l.height, l.type,
             tree(l.layers) if isinstance(l, gimp.GroupLayer) else None] for l in layers]


def attempt(case, function, image, drawable, source, iterations=5, mode=None):
    before = bytes(source.data)
    del gimpfu.CALLS[:]
    try:
        if mode is None:
            function(image, drawable, iterations, 0, CPU)
        else:  # decompose: its mode option menu comes first
            function(image, drawable, mode, iterations, 0, CPU)
        error = None
    except RuntimeError as exc:
        error = str(exc)
    except Exception:  # noqa: BLE001 - recorded for the test to show
        error = "UNEXPECTED " + traceback.format_exc()
    calls = list(gimpfu.CALLS)
    updates = [t for t, what, _ in calls if what == "progress_update"]
    facts[case] = {
        "error": error,
        "layers": tree(image.layers),
        "source_same": bytes(source.data) == before,
        "undo": [what for _, what, _ in calls if what.startswith("undo") or what.startswith("insert outside")],
        "texts": [args[0] for _, what, args in calls if what == "gimp_progress_set_text"],
        "last_fraction": [args[0] for _, what, args in calls if what == "progress_update"][-1:],
        "max_progress_gap": max([b - a for a, b in zip(updates, updates[1:])] or [0]),
        "max_progress_gap_at": _gap_context(calls, updates),
    }
    with open(os.path.join(OUT, case + "-source.raw"), "wb") as handle:
        handle.write(before)
    added = [l for l in (drawable.parent.layers if drawable.parent else image.layers) if l is not source]
    if error is None and added:
        with open(os.path.join(OUT, case + "-result.raw"), "wb") as handle:
            handle.write(bytes(added[0].data))


def _gap_context(calls, updates):
    """The texts shown just before and just after the longest pause in progress updates."""
    if len(updates) < 2:
        return None
    gaps = [b - a for a, b in zip(updates, updates[1:])]
    start = updates[gaps.index(max(gaps))]
    texts = [(t, args[0]) for t, what, args in calls if what == "gimp_progress_set_text"]
    before = [text for t, text in texts if t <= start][-1:]
    after = [text for t, text in texts if t > start][:1]
    return {"before": before, "after": after}


# Denoise an RGBA layer that sits at an offset on a larger canvas.
image = gimp.Image(40, 30)
layer = gimp.Layer(image, "Source", 24, 20, gimpfu.RGBA_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.set_offsets(5, 3)
fill(layer, 1)
attempt("denoise-rgba", DENOISE, image, layer, layer)

# Inpaint a greyscale layer partly off the canvas; the selection lives in image coordinates.
image = gimp.Image(30, 30, gimpfu.GRAY)
layer = gimp.Layer(image, "Source", 20, 20, gimpfu.GRAY_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.set_offsets(-4, 6)
fill(layer, 2)
select(image, 2, 10, 10, 8)
attempt("inpaint-gray", INPAINT, image, layer, layer)

# 16 bits per channel (a precision-enabled 2.10 plug-in sees bpp = 2 x channels).
image = gimp.Image(24, 24, gimpfu.RGB, bytes_per_channel=2)
layer = gimp.Layer(image, "Source", 24, 24, gimpfu.RGBA_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
fill(layer, 3)
select(image, 6, 6, 10, 9)
attempt("inpaint-u16", INPAINT, image, layer, layer)

# A layer inside a group: the result goes into the same group, right above it.
image = gimp.Image(24, 24)
group = gimp.GroupLayer(image, "Group")
pdb.gimp_image_insert_layer(image, group, None, 0)
below = gimp.Layer(image, "Below", 24, 24, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, below, group, 0)
layer = gimp.Layer(image, "Source", 24, 24, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, group, 0)
fill(layer, 4)
attempt("denoise-in-group", DENOISE, image, layer, layer)

# Decompose (segment, index 0) with a selection as the hint: a group of layers with a mask.
image = gimp.Image(40, 30)
layer = gimp.Layer(image, "Source", 24, 20, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.set_offsets(5, 3)
fill(layer, 5)
select(image, 10, 8, 12, 10)
# 120 iterations: at 60 the mask's inside-minus-outside contrast was 20-62 (of 255) on random
# images on a 2-core AVX2 machine (the fit's path differs between CPUs), at 120 72-84.
attempt("decompose-segment", DECOMPOSE, image, layer, layer, iterations=120, mode=0)
group = image.layers[0]
if isinstance(group, gimp.GroupLayer):
    facts["decompose-segment"]["children"] = [
        [c.name, c.visible, c.opacity, c.composite_space, c.mask is not None] for c in group.layers]
    with open(os.path.join(OUT, "decompose-segment-mask.raw"), "wb") as handle:
        handle.write(bytes(group.layers[0].mask.data))
# Watermark mode (index 3) needs a selection around the mark.
image = gimp.Image(24, 24)
layer = gimp.Layer(image, "Source", 24, 24, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
fill(layer, 6)
attempt("bad-watermark-no-selection", DECOMPOSE, image, layer, layer, mode=3)

# Bad inputs: refused with the same messages as in GIMP 3, nothing touched.
image = gimp.Image(24, 24)
group = gimp.GroupLayer(image, "Group")
pdb.gimp_image_insert_layer(image, group, None, 0)
attempt("bad-group", DENOISE, image, group, group)
image = gimp.Image(24, 24)
layer = gimp.Layer(image, "Source", 24, 24, gimpfu.RGBA_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.mask = gimp.LayerMask(image, "Source mask", 24, 24)
attempt("bad-mask", DENOISE, image, layer.mask, layer.mask)
channel = gimp.Channel(image, "Saved selection", 24, 24)
image.channels.append(channel)
attempt("bad-channel", DENOISE, image, channel, channel)
attempt("bad-inpaint-no-selection", INPAINT, image, layer, layer)
image = gimp.Image(24, 24, gimpfu.INDEXED)
layer = gimp.Layer(image, "Source", 24, 24, gimpfu.INDEXED_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
attempt("bad-indexed", DENOISE, image, layer, layer)
image = gimp.Image(24, 24)
layer = gimp.Layer(image, "Source", 4, 4, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
attempt("bad-tiny", DENOISE, image, layer, layer)

with open(os.path.join(OUT, "facts.json"), "w") as handle:
    json.dump(facts, handle)
