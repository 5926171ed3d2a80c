#!/usr/bin/env python2
"""Neural Restore for GIMP 2.10 (Python-Fu / gimpfu, Python 2.7): the same filters as GIMP 3.

Install: copy this file and the ``neural_restore`` package (gimp_plugin/neural_restore)
into a GIMP 2.10 plug-ins folder (e.g. ~/.config/GIMP/2.10/plug-ins/), make this file
executable, and put the ``engine.json`` that install.py writes next to it (or set
NEURAL_RESTORE_ENGINE_PYTHON). GIMP -> this file -> hosts/gimp2.py -> filters.py -> engine.
"""
import os
import sys

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PLUGIN_DIR)

from gimpfu import PF_DRAWABLE, PF_IMAGE, PF_INT, PF_OPTION, main, register  # noqa: E402

from neural_restore import filters  # noqa: E402
from neural_restore.hosts.gimp2 import Gimp2Host  # noqa: E402

DEVICES = [value for value, _ in filters.DEVICE_CHOICES]


def _params():
    params = [(PF_IMAGE, "image", "Input image", None), (PF_DRAWABLE, "drawable", "Input layer", None)]
    for name, kind, default, minimum, maximum, label, _ in filters.DIP_PARAMS:
        if kind == "int":
            params.append((PF_INT, name, label, default))
        else:  # device: an option menu; its value is the index into DEVICE_CHOICES
            params.append((PF_OPTION, name, label, DEVICES.index(default),
                           [text for _, text in filters.DEVICE_CHOICES]))
    return params


def _make_run(spec):
    def run(image, drawable, iterations, seed, device):
        values = {"iterations": int(iterations), "seed": int(seed),
                  "device": DEVICES[device] if isinstance(device, int) else device}
        try:
            filters.run_filter(Gimp2Host(image, drawable), spec, values, PLUGIN_DIR)
        except filters.FilterError as error:
            # gimpfu turns an exception into an execution error carrying this text
            # (shown in GIMP's error console / message box).
            raise RuntimeError(error.message)
    run.__name__ = str(spec.key.replace("-", "_"))
    return run


for _spec in filters.FILTERS:
    register(
        _spec.procedure_name,  # "plug-in-..." keeps gimpfu from adding a "python-fu-" prefix
        _spec.blurb, _spec.blurb,
        "Neural Restore contributors", "Neural Restore contributors", "2026",
        _spec.menu_label, "RGB*, GRAY*",
        _params(), [],
        _make_run(_spec),
        menu=filters.MENU_PATH,
    )

main()
