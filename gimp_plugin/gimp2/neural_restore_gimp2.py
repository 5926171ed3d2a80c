#!/usr/bin/env python2
"""Neural Restore for GIMP 2.10 (Python-Fu / gimpfu, Python 2.7): the same filters as GIMP 3.

Install: ``python3 install.py --gimp2`` (or ``--gimp2-dir DIR``) copies this file, the
``neural_restore`` package and ``engine.json`` flat into the GIMP 2.10 plug-ins folder
(e.g. ~/.config/GIMP/2.10/plug-ins/); install.py also does it by itself when it finds a
2.10 profile. By hand: copy the same three, make this file executable (or set
NEURAL_RESTORE_ENGINE_PYTHON instead of engine.json). GIMP -> this file -> hosts/gimp2.py -> filters.py -> engine.
"""
import os
import sys

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PLUGIN_DIR)

from gimpfu import PF_DRAWABLE, PF_IMAGE, PF_INT, PF_OPTION, main, register  # noqa: E402

from neural_restore import filters  # noqa: E402
from neural_restore.hosts.gimp2 import Gimp2Host  # noqa: E402


def _params(spec):
    params = [(PF_IMAGE, "image", "Input image", None), (PF_DRAWABLE, "drawable", "Input layer", None)]
    for param in spec.params:
        if param.kind == "int":
            params.append((PF_INT, param.name, param.label, param.default))
        else:  # a choice: an option menu whose value is the index into param.choices
            params.append((PF_OPTION, param.name, param.label,
                           param.choice_values().index(param.default),
                           [text for _, text in param.choices]))
    return params


def _values(spec, args):
    """gimpfu's positional values (after image, drawable) -> {name: value} as in GIMP 3."""
    values = {}
    for param, value in zip(spec.params, args):
        if param.kind == "int":
            values[param.name] = int(value)
        else:
            values[param.name] = param.choice_values()[value] if isinstance(value, int) else value
    return values


def _results(spec):
    if spec.output == "new-image":  # scripts get the new image back
        return [(PF_IMAGE, "image", "The new image holding the result")]
    return []


def _make_run(spec):
    def run(image, drawable, *args):
        host = Gimp2Host(image, drawable)
        try:
            filters.run_filter(host, spec, _values(spec, args), PLUGIN_DIR)
        except filters.FilterError as error:
            # gimpfu turns an exception into an execution error carrying this text
            # (shown in GIMP's error console / message box).
            raise RuntimeError(error.message)
        if spec.output == "new-image":
            return host.opened_image
    run.__name__ = str(spec.key.replace("-", "_"))
    return run


for _spec in filters.FILTERS:
    register(
        _spec.procedure_name,  # "plug-in-..." keeps gimpfu from adding a "python-fu-" prefix
        _spec.blurb, _spec.blurb,
        "Neural Restore contributors", "Neural Restore contributors", "2026",
        _spec.menu_label, "RGB*, GRAY*",
        _params(_spec), _results(_spec),
        _make_run(_spec),
        menu=filters.MENU_PATH,
    )

main()
