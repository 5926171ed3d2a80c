"""Drives Upscale and Sharpen of the GIMP 2.10 plug-in under Python 2.7 and the fake gimpfu.

Usage: python2.7 drive_nets.py PLUGIN_DIR OUT_DIR
Writes OUT_DIR/facts.json and raw dumps (<case>-*.raw) for tests/test_gimp2_nets.py. The
engine is real (NEURAL_RESTORE_ENGINE_PYTHON) and runs the tiny known-output nets given in
NEURAL_RESTORE_MODELS.
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
facts = {}
imp.load_source("neural_restore_gimp2", os.path.join(PLUGIN_DIR, "neural_restore_gimp2.py"))
procedures = dict((p["name"], p) for p in gimpfu.REGISTERED)
facts["results"] = dict((name, [r[1] for r in p.get("results", [])]) for name, p in procedures.items())
UPSCALE = procedures["plug-in-neural-restore-upscale"]["function"]
SHARPEN = procedures["plug-in-neural-restore-sharpen"]["function"]
CPU = 1  # index of "cpu" in the device option menu


def fill(item, seed):
    rng = random.Random(seed)
    item.data[:] = bytearray(rng.randrange(256) for _ in range(len(item.data)))
    return bytes(item.data)


def dump(name, data):
    with open(os.path.join(OUT, name), "wb") as handle:
        handle.write(bytes(data))


def attempt(function, *args):
    try:
        return None, function(*args)
    except RuntimeError as exc:
        return str(exc), None
    except Exception:  # noqa: BLE001 - recorded for the test to show
        return "UNEXPECTED " + traceback.format_exc(), None


# Upscale x2 (scale option index 0) of a 16-bit RGBA layer at an offset: a new image comes back.
image = gimp.Image(40, 30, gimpfu.RGB, bytes_per_channel=2)
layer = gimp.Layer(image, "Source", 20, 16, gimpfu.RGBA_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.set_offsets(5, 3)
before = fill(layer, 1)
dump("upscale-source.raw", before)
image.color_profile = tuple(range(1, 129))  # stands for an ICC profile the user assigned
image.metadata = '<?xml version="1.0"?><metadata><tag name="Exif.Image.Make">PhoneMaker</tag></metadata>'
image.resolution = (240.0, 240.0)
error, new = attempt(UPSCALE, image, layer, 0, 0, CPU)
facts["upscale"] = {"error": error, "source_same": bytes(layer.data) == before,
                    "source_layers": [l.name for l in image.layers]}
if new is not None:
    facts["upscale"].update({
        "size": [new.width, new.height], "bytes_per_channel": new.bytes_per_channel,
        "layers": [[l.name, list(l.offsets), l.width, l.height, l.type] for l in new.layers],
        "displayed": [d.image is new for d in gimpfu.DISPLAYS], "undo_enabled": new.undo_enabled,
        "same_profile": new.color_profile == image.color_profile,
        "same_metadata": new.metadata == image.metadata, "same_resolution": new.resolution == image.resolution,
    })
    dump("upscale-result.raw", new.layers[0].data)

# Upscale in batch GIMP (no user interface): still a new image, no display, no error.
gimpfu.UI = False
del gimpfu.DISPLAYS[:]
error, new = attempt(UPSCALE, image, layer, 1, 0, CPU)
facts["upscale-batch"] = {"error": error, "size": [new.width, new.height] if new else None,
                          "displays": len(gimpfu.DISPLAYS)}

# Sharpen an 8-bit RGB layer with a non-rectangular selection: a masked layer of its bounds.
image = gimp.Image(40, 40)
layer = gimp.Layer(image, "Source", 30, 30, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
layer.set_offsets(4, 2)
before = fill(layer, 2)
dump("sharpen-source.raw", before)
for y in range(8, 24):  # a plus sign in image coordinates: bounds x 10..26, y 8..24
    for x in range(10, 26):
        if 14 <= x < 22 or 12 <= y < 20:
            image.selection.data[y * image.width + x] = 255
del gimpfu.CALLS[:]
error, _ = attempt(SHARPEN, image, layer, CPU)
top = image.layers[0]
facts["sharpen"] = {
    "error": error, "source_same": bytes(layer.data) == before,
    "layers": [[l.name, list(l.offsets), l.width, l.height] for l in image.layers],
    "undo": [what for _, what, _ in gimpfu.CALLS if what.startswith("undo") or what.startswith("insert outside")],
    "mask": top.mask is not None and top is not layer,
}
if top.mask is not None:
    dump("sharpen-result.raw", top.data)
    dump("sharpen-mask.raw", top.mask.data)

# Remove JPEG Artifacts on an opened JPEG (48x40, RGB): the loader's jpeg-settings parasite
# (YCbCr, quality 90, 4:2:0) goes to the engine, which says it kept to the tables.
DEJPEG = procedures["plug-in-neural-restore-remove-jpeg-artifacts"]["function"]
image = gimp.Image(48, 40)
layer = gimp.Layer(image, "Source", 48, 40, gimpfu.RGB_IMAGE)
pdb.gimp_image_insert_layer(image, layer, None, 0)
with open(os.path.join(OUT, "jpeg-source.raw"), "rb") as handle:
    layer.data[:] = bytearray(handle.read())
image.parasites["jpeg-settings"] = gimp.Parasite("jpeg-settings", 1, "".join(map(chr, [3, 90, 3, 0, 2, 2, 1, 1, 1, 1])))
del gimpfu.CALLS[:]
# iterations, seed, device, preset, method (0 = net), passes
error, _ = attempt(DEJPEG, image, layer, 0, 0, CPU, 0, 0, 1)
facts["dejpeg"] = {"error": error, "layers": [l.name for l in image.layers],
                   "texts": [args[0] for _, what, args in gimpfu.CALLS if what == "gimp_progress_set_text"]}

with open(os.path.join(OUT, "facts.json"), "w") as handle:
    json.dump(facts, handle)
