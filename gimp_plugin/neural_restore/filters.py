"""Host-neutral filter logic: what each filter sends to the engine and where results go.

A *host* adapter (hosts/gimp3.py for GIMP 3, hosts/gimp2.py for GIMP 2.10's gimpfu) does
the editor calls; this module decides everything else (checks, messages, what is sent,
progress text), so both GIMP versions behave the same. Stdlib only, Python 2.7 and 3 syntax.

Host adapter interface (duck-typed):
  host.source()                      -> SourceInfo of the active drawable; raises FilterError
                                        through refuse_item(kind, ...) when it is not one
                                        pixel layer of an RGB/grey image
  host.read_pixels(source)           -> bytes, in source.dtype / source.channels
  host.selection_bounds()            -> None, or (x1, y1, x2, y2) in image coordinates, x2/y2 exclusive
  host.read_selection(x, y, w, h)    -> bytes, one u8 per pixel (255 = fully selected)
  host.progress(fraction, text)      -> True if the user asked to cancel; called at least once
                                        a second while the engine works (text carries the
                                        step and the elapsed / remaining time)
  host.add_layers(source, layer_name, buffers)
                                     -> inserts result layers (same type, precision, offsets)
                                        above the source, in its group, in one undo step
"""
import os
import time

from .client import EngineFailure, EngineProcess, load_config
from .protocol import WireBuffer

PROCEDURE_PREFIX = "plug-in-neural-restore-"
MENU_PATH = "<Image>/Filters/Enhance/Neural"


class FilterError(Exception):
    """A message for the user; the image has not been touched."""

    def __init__(self, message, kind="bad-input"):
        Exception.__init__(self, message)
        self.message = message
        self.kind = kind


class SourceInfo(object):
    """The drawable a filter reads: its geometry and the pixel format it is read in."""

    def __init__(self, width, height, x, y, channels, dtype, name=""):
        self.width = width
        self.height = height
        self.x = x
        self.y = y
        self.channels = channels
        self.dtype = dtype
        self.name = name


class FilterParam(object):
    """One filter setting: a dialog widget in GIMP 3 / 2.10 and a PDB argument.

    kind is "int" (minimum..maximum) or "choice" (choices: (value, label) pairs; GIMP 3
    passes the value string, gimpfu an index into choices). Hosts build their widgets from
    these, so a new setting is declared once, here.
    """

    def __init__(self, name, kind, default, label, help, minimum=None, maximum=None, choices=None):
        self.name = name
        self.kind = kind
        self.default = default
        self.label = label
        self.help = help
        self.minimum = minimum
        self.maximum = maximum
        self.choices = tuple(choices or ())

    def choice_values(self):
        return [value for value, _ in self.choices]


class FilterSpec(object):
    """A menu entry: which engine op it runs, with which settings, and where results go.

    output: "layers" (new layers above the source, one undo group).
    """

    def __init__(self, key, op, menu_label, blurb, layer_name, params, needs_selection=False,
                 output="layers"):
        self.key = key
        self.op = op
        self.menu_label = menu_label
        self.blurb = blurb
        self.layer_name = layer_name
        self.params = tuple(params)
        self.needs_selection = needs_selection
        self.output = output

    @property
    def procedure_name(self):
        return PROCEDURE_PREFIX + self.key

    def param(self, name):
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)


DEVICE_CHOICES = (("auto", "Automatic (GPU if present)"), ("cpu", "CPU"), ("cuda", "NVIDIA GPU (CUDA)"))
DEVICE_PARAM = FilterParam("device", "choice", "auto", "Device", "Where to compute: auto, cpu or cuda",
                           choices=DEVICE_CHOICES)
# Shared by the DIP filters.
DIP_PARAMS = (
    FilterParam("iterations", "int", 0, "Iterations",
                "Optimisation steps; 0 chooses automatically from the image size", 0, 100000),
    FilterParam("seed", "int", 0, "Seed", "Random seed: the same seed gives the same result",
                0, 2147483647),
    DEVICE_PARAM,
)

FILTERS = (
    FilterSpec("denoise", "denoise", "_Denoise...",
               "Remove noise with a Deep Image Prior; the result is a new layer above the source.",
               "Denoise", DIP_PARAMS),
    FilterSpec("inpaint-selection", "inpaint", "_Inpaint Selection...",
               "Fill the selected pixels from their surroundings with a Deep Image Prior; "
               "the result is a new layer above the source.",
               "Inpaint", DIP_PARAMS, needs_selection=True),
    FilterSpec("remove-jpeg-artifacts", "dejpeg", "Remove _JPEG Artifacts...",
               "Remove JPEG blocking and ringing with a Deep Image Prior (the quality setting "
               "need not be known); the result is a new layer above the source.",
               "JPEG artifacts removed", DIP_PARAMS),
)

EMPTY_SELECTION_MESSAGE = ("Inpaint selection needs a selection: select the area to fill "
                           "(for example with the Free Select tool), then run the filter again.")
# The engine refuses smaller images (its nets downsample several times); checking here
# gives the user the reason before an engine starts.
MIN_SIDE = 8
TOO_SMALL_MESSAGE = ("The layer is %dx%d pixels; Neural Restore needs a layer at least "
                     "%dx%d pixels. Pick or make a larger layer and run the filter again.")
# What the active item can be instead of one pixel layer; hosts call refuse_item(kind, ...).
ITEM_MESSAGES = {
    "count": "Select exactly one layer in the Layers dialog (%(count)d are selected).",
    "mask": ("The active item is a layer mask (%(name)s): click the layer's own thumbnail in the "
             "Layers dialog, then run the filter again."),
    "channel": ("The active item is the channel '%(name)s': Neural Restore works on a pixel layer, "
                "so select a layer in the Layers dialog."),
    "group": ("'%(name)s' is a layer group: select one of its layers (or merge the group with "
              "Layer > Merge Down), then run the filter again."),
    "other": "Neural Restore works on a pixel layer; the active item '%(name)s' is not one.",
    "indexed": ("Indexed (palette) images are not supported: convert with Image > Mode > RGB (or "
                "Grayscale) first, then run the filter again."),
}


def refuse_item(kind, name="", count=0):
    """Raise the FilterError for an active item the filters cannot work on."""
    raise FilterError(ITEM_MESSAGES[kind] % {"name": name, "count": count})


OUTSIDE_SELECTION_MESSAGE = ("The selection does not touch the active layer: select pixels "
                             "inside the layer to fill them.")


def filter_by_procedure(name):
    for spec in FILTERS:
        if spec.procedure_name == name:
            return spec
    raise KeyError(name)


def _intersect(bounds, source):
    x1 = max(bounds[0], source.x)
    y1 = max(bounds[1], source.y)
    x2 = min(bounds[2], source.x + source.width)
    y2 = min(bounds[3], source.y + source.height)
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def _clock_text(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)
    return "%d:%02d" % (seconds // 60, seconds % 60)


class ProgressClock(object):
    """Adds elapsed and estimated remaining time to the engine's progress text.

    The estimate uses the rate since the first progress frame, so the engine's start-up
    (importing torch, building the net) does not skew it; it is shown once the job is 2 %
    done or has run 3 s. ``tick()`` repeats the last state with a fresh clock: the client
    calls it while the engine is silent, so the host hears from us at least once a second.
    """

    def __init__(self, host, clock=None):
        self.host = host
        self.clock = clock or getattr(time, "monotonic", time.time)
        self.started = self.clock()
        self.first = None  # (time, fraction) of the first engine progress frame
        self.fraction = 0.0
        self.text = ""

    def __call__(self, fraction, text):
        now = self.clock()
        fraction = max(0.0, min(1.0, float(fraction)))
        if self.first is None:
            self.first = (now, fraction)
        self.fraction, self.text = fraction, text
        return self.host.progress(fraction, self.describe(now))

    def tick(self):
        return self.host.progress(self.fraction, self.describe(self.clock()))

    def remaining(self, now):
        if self.first is None:
            return None
        t0, f0 = self.first
        done, spent = self.fraction - f0, now - t0
        if done <= 0 or spent <= 0 or (self.fraction < 0.02 and spent < 3.0):
            return None
        return (1.0 - self.fraction) * spent / done

    def describe(self, now):
        timing = "%s elapsed" % _clock_text(now - self.started)
        left = self.remaining(now)
        if left is not None and self.fraction < 1.0:
            timing += ", about %s left" % _clock_text(left)
        return "%s (%s)" % (self.text or "Working", timing)


def engine_params(spec, values):
    """Dialog/PDB values -> the engine's params (the filter's own settings only)."""
    return dict((p.name, values[p.name]) for p in spec.params if p.name in values)


def run_filter(host, spec, values, plugin_dir, log_dir=None):
    """Run one filter on the host's active drawable. Returns the engine's info dict.

    Raises FilterError (kind bad-input / engine / cancelled / setup) with a message for the
    user; in every failure case the image is left as it was.
    """
    source = host.source()
    if min(source.width, source.height) < MIN_SIDE:
        raise FilterError(TOO_SMALL_MESSAGE % (source.width, source.height, MIN_SIDE, MIN_SIDE))
    mask_buffer = None
    if spec.needs_selection:
        bounds = host.selection_bounds()
        if bounds is None:
            raise FilterError(EMPTY_SELECTION_MESSAGE)
        if _intersect(bounds, source) is None:
            raise FilterError(OUTSIDE_SELECTION_MESSAGE)
        mask = host.read_selection(source.x, source.y, source.width, source.height)
        if mask.count(b"\x00") == len(mask):
            raise FilterError(OUTSIDE_SELECTION_MESSAGE)
        mask_buffer = WireBuffer("mask", source.width, source.height, 1, "u8", mask, source.x, source.y)
    image_buffer = WireBuffer("image", source.width, source.height, source.channels, source.dtype,
                              host.read_pixels(source), source.x, source.y)
    buffers = [image_buffer] + ([mask_buffer] if mask_buffer is not None else [])
    try:
        config = load_config(plugin_dir)
        stderr_path = None
        log_dir = log_dir or config.get("log_dir")
        if log_dir:
            try:
                if not os.path.isdir(log_dir):
                    os.makedirs(log_dir)
                stderr_path = os.path.join(log_dir, "engine-stderr.log")
            except OSError:
                stderr_path = None
        clock = ProgressClock(host)
        clock(0.0, "Starting the Neural Restore engine...")
        engine = EngineProcess(config, stderr_path)
        try:
            engine.start(on_idle=clock.tick)
            clock.first = None  # estimate from the job's own frames, not the start-up
            info, results = engine.run(spec.op, engine_params(spec, values), buffers, clock, clock.tick)
        finally:
            engine.close()
    except EngineFailure as failure:
        raise FilterError(failure.message, failure.kind)
    if not results:
        raise FilterError("The engine returned no result.", "engine")
    for result in results:
        if (result.width, result.height, result.channels, result.dtype) != \
                (source.width, source.height, source.channels, source.dtype):
            raise FilterError("The engine returned a result of the wrong size or format.", "engine")
    host.progress(1.0, "Adding the result layer...")
    host.add_layers(source, spec.layer_name, results)
    return info
