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
  host.add_layers(source, layer_name, buffers, mask_with_selection=True)
                                     -> the same, each new layer getting a layer mask made
                                        from the current selection (filters that honour it)
  host.open_image(source, name, buffer)
                                     -> a new image (the source image's base type and
                                        precision, one layer from buffer), shown in a new
                                        display when the run is interactive; remembered as
                                        host.opened_image (the PDB return value)
  host.add_layer_group(source, group_name, stack)
                                     -> (filters with output "layer-group") inserts a layer
                                        group above the source holding stack's layers, top
                                        first: stack is [(layer WireBuffer, mask WireBuffer or
                                        None)]; each layer gets its title, opacity, visibility,
                                        a perceptual composite space and the mask as its layer
                                        mask; one undo step
Optional (JPEG data; hosts without it never send the JPEG's tables):
  host.jpeg_settings()               -> the bytes of the image's "jpeg-settings" parasite (what
                                        GIMP's JPEG loader records: sampling, quality, tables),
                                        or None
Optional (two-layer input; hosts without it always work on one layer):
  host.sources()                     -> [SourceInfo] of every selected drawable, each checked
                                        as source() checks its one (refuse_item), upper layer
                                        first; read_pixels accepts each of them
Optional (live preview; hosts without them get none):
  host.preview_interval_s            -> seconds between previews, or None for no preview
  host.show_preview(source, layer_name, buffers)
                                     -> shows/updates one temporary layer above the source
                                        (buffers[0]'s size and offsets: the layer's, or the
                                        selection's bounds), without undo steps
  host.show_preview(source, layer_name, buffers, mask_with_selection=True)
                                     -> the same, the layer masked by the current selection
                                        (runs whose result will be masked to it)
  host.remove_preview()              -> removes it again (no undo step); safe to call twice
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

    def __init__(self, name, kind, default, label, help, minimum=None, maximum=None, choices=None,
                 engine_type="str"):
        self.engine_type = engine_type
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

    def engine_value(self, value):
        """Dialog/PDB value -> the engine's: choices are strings in GIMP, some are numbers there."""
        return int(value) if self.kind == "choice" and self.engine_type == "int" else value


class FilterSpec(object):
    """A menu entry: which engine op it runs, with which settings, and where results go.

    output: "layers" (new layers above the source, one undo group), "new-image" (the
    result opens as a new image; the source image is not touched at all) or "layer-group" (a
    group named after the "mode" setting's label, holding the result stack; see
    add_layer_group).
    selection_bounds: with a selection, only its bounds (within the layer) are processed,
    read with ``context`` px more on each side so the net sees real neighbours there; the
    context is cut off the result again. mask_result: the result layer then gets the
    selection as its layer mask, unless the selection is all of its bounds (a rectangle).
    scale_param: the setting that enlarges the result (results are that many times larger).
    selection_hint: the selection, when there is one, is sent as the op's mask (a hint);
    selection_required_for: values of "mode" for which that hint is required.
    second_layer_for: values of "mode" for which a second selected layer (same size) is sent
    as the op's ``second`` image; any other run needs exactly one selected layer.
    sends_jpeg_tables: the image's JPEG tables (GIMP's jpeg-settings parasite), when it has
    them, go with the run as the op's ``jpeg_tables`` (see jpeg_tables_text).
    """

    def __init__(self, key, op, menu_label, blurb, layer_name, params, needs_selection=False,
                 output="layers", selection_bounds=False, context=0, mask_result=False,
                 scale_param=None, selection_hint=False, selection_required_for=(), second_layer_for=(),
                 sends_jpeg_tables=False):
        self.key = key
        self.op = op
        self.menu_label = menu_label
        self.blurb = blurb
        self.layer_name = layer_name
        self.params = tuple(params)
        self.needs_selection = needs_selection
        self.output = output
        self.selection_bounds = selection_bounds
        self.context = context
        self.mask_result = mask_result
        self.scale_param = scale_param
        self.selection_hint = selection_hint
        self.selection_required_for = tuple(selection_required_for)
        self.second_layer_for = tuple(second_layer_for)
        self.sends_jpeg_tables = sends_jpeg_tables

    def result_scale(self, values):
        return int(values.get(self.scale_param, 1)) if self.scale_param else 1

    def group_name(self, values):
        """The layer group's name: the label of the chosen mode."""
        try:
            return dict(self.param("mode").choices).get(values.get("mode"), self.layer_name)
        except KeyError:
            return self.layer_name

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
# Speed/quality choice of the DIP filters. Engines that do not list "preset" for an op in
# their hello never receive it (client.supported_params), so old engines keep working.
PRESET_CHOICES = (("auto", "Automatic"), ("fast", "Fast"), ("quality", "Best quality"),
                  ("paper", "Paper settings (slow)"))
PRESET_PARAM = FilterParam("preset", "choice", "auto", "Quality",
                           "Speed/quality trade-off: auto, fast, quality (the best result; on a "
                           "CPU several times slower than fast) or paper (the published settings, "
                           "slow on a CPU)", choices=PRESET_CHOICES)
# Shared by the DIP filters. New settings go last: gimpfu (GIMP 2.10) scripts pass them by
# position. The GIMP 3 dialog shows "preset" first (dialog_order).
DIP_PARAMS = (
    FilterParam("iterations", "int", 0, "Iterations",
                "Optimisation steps; 0 chooses automatically from the image size", 0, 100000),
    FilterParam("seed", "int", 0, "Seed", "Random seed: the same seed gives the same result",
                0, 2147483647),
    DEVICE_PARAM,
    PRESET_PARAM,
)

# Trained nets (Upscale with rdn, Sharpen): how many mirrored/turned copies of the image the
# net runs on, averaged. Automatic = 8 up to 1 megapixel (seconds), else 1.
PASSES_PARAM = FilterParam("passes", "choice", "0", "Passes",
                           "Trained network: average it over mirrored and turned copies of the image "
                           "(8 passes: a little cleaner, 8x the time); automatic = 8 up to 1 megapixel",
                           choices=(("0", "Automatic"), ("1", "1 (fastest)"), ("8", "8 (best)")),
                           engine_type="int")
# Sharpen's strength, as in unsharp mask: how much of the detail the net recovered is added.
AMOUNT_PARAM = FilterParam("amount", "int", 100, "Amount (%)",
                           "How much of the recovered detail to add: 100 = the network's result, "
                           "0 = no change, up to 300 for stronger sharpening (also of noise)", 0, 300)
UPSCALE_PARAMS = (
    # 3x and 8x after the networks' own factors: GIMP 2.10 scripts pass the option's index.
    FilterParam("scale", "choice", "2", "Scale",
                "Enlargement factor: 2x and 4x are the networks' own; 3x is the 4x result reduced, 8x the "
                "4x result enlarged 2x (Deep Image Prior fits 8x itself)",
                choices=(("2", "2x"), ("4", "4x"), ("3", "3x (4x, reduced)"), ("8", "8x (4x, then enlarged 2x)")),
                engine_type="int"),
    FilterParam("method", "choice", "rdn", "Method",
                "rdn: trained network, seconds; dip: Deep Image Prior, minutes",
                choices=(("rdn", "Trained network (RDN, fast)"), ("dip", "Deep Image Prior (slow)"))),
    DEVICE_PARAM,
    # For method dip only (the trained network ignores them); last, for positional callers.
    PRESET_PARAM,
    DIP_PARAMS[0],
    DIP_PARAMS[1],
    # For method rdn only; newer, so after those.
    PASSES_PARAM,
    # Newest: an enlargement makes JPEG blocks bigger, so a JPEG's are removed first.
    FilterParam("jpeg_artifacts", "choice", "auto", "JPEG artifacts",
                "Remove JPEG blocking and ringing before enlarging (the Remove JPEG Artifacts network): "
                "auto = when the image was opened from a JPEG file (then kept to its quantisation tables)",
                choices=(("auto", "Remove if opened from a JPEG"), ("remove", "Remove first"),
                         ("keep", "Keep (enlarge as they are)"))),
)
def _net_or_dip_params(dip_strength):
    """A filter with both backends: the DIP settings first (gimpfu (GIMP 2.10) scripts pass
    them by position, and they came first), then the method and the network's passes."""
    return DIP_PARAMS + (
        FilterParam("method", "choice", "net", "Method",
                    "net: trained network, seconds; dip: Deep Image Prior, minutes (fits this one image%s; "
                    "Quality, Iterations and Seed are its settings)" % dip_strength,
                    choices=(("net", "Trained network (fast)"), ("dip", "Deep Image Prior (slow)"))),
        PASSES_PARAM,
    )


# Denoise removes the noise level measured in the image times this (the network reads it as
# an input, Deep Image Prior stops fitting at it). Last: gimpfu scripts pass settings by position.
STRENGTH_PARAM = FilterParam("strength", "int", 100, "Strength (%)",
                             "How much noise to remove, in percent of the noise measured in the image: "
                             "100 = as measured; less leaves part of the noise (as grain); more also "
                             "smooths noise the measurement underrates (JPEG'd or camera noise)",
                             10, 400)
DENOISE_PARAMS = _net_or_dip_params("") + (STRENGTH_PARAM,)
# Inpaint has a third method, the default, listed last (gimpfu passes a choice's index):
# texture copied from the image where the selection is wide (removing objects), the network
# where it is thin; the network alone and DIP fill a large area smoothly.
INPAINT_PARAMS = tuple(
    FilterParam("method", "choice", "patch", "Method",
                "patch: texture copied from around the selection where it is wide (removing objects), "
                "the trained network where it is thin (scratches, text, dust), seconds; net: the trained "
                "network everywhere (a smooth fill of large areas), seconds; dip: Deep Image Prior, "
                "minutes (fits this one image: better on repeating patterns such as stripes; Quality, "
                "Iterations and Seed are its settings)",
                choices=(("net", "Trained network (smooth fill)"), ("dip", "Deep Image Prior (slow)"),
                         ("patch", "Texture from the image (thin parts: network)")))
    if param.name == "method" else param
    for param in _net_or_dip_params(""))
DEJPEG_PARAMS = _net_or_dip_params("")
# Context read around a selection's bounds: more than the nets' tile overlap (16 px), so
# the processed area's edges look like its inside.
NET_CONTEXT = 32
# The same for the DIP filters: a fit sees only mirrored pixels beyond its input's edge, and
# its tiles cross-fade 32 px bands for that reason (engine/dip/tiles.py).
DIP_CONTEXT = 32
DECOMPOSE_MODE_PARAM = FilterParam(
    "mode", "choice", "segment", "Layers",
    "segment: foreground + background (the selection is the rough foreground); transparency: "
    "transmission + reflection; dehaze: dehazed image + haze + transmission map; watermark: "
    "clean image + watermark (select the area around the watermark)",
    choices=(("segment", "Segment"), ("transparency", "Transparency"), ("dehaze", "Dehaze"),
             ("watermark", "Watermark")))


# Decompose fits larger layers on a copy of this longer side and carries the split to full
# size (the engine's working_side). Last: gimpfu scripts pass settings by position.
WORKING_SIDE_PARAM = FilterParam("working_side", "int", 0, "Working size (px)",
                                 "Larger layers are split on a copy of this size (longer side) and the "
                                 "split is carried to full size, fine detail included; larger is finer "
                                 "but slower; 0 = automatic (256 on a CPU, 384 for watermark, 512 on a GPU)", 0, 8192)


# Settings the GIMP 3 dialog shows first, in this order: what the filter makes (Decompose's
# layers), then the quality (Sharpen: its amount); the rest keep their PDB order.
DIALOG_FIRST = ("mode", "preset", "amount")


# Filters with a method (Upscale, Denoise, Inpaint, Remove JPEG Artifacts): what they make, the method, the network's
# settings, then those of method dip.
METHOD_DIALOG_FIRST = ("scale", "method", "jpeg_artifacts", "strength", "device", "passes", "preset")


def dialog_order(spec):
    """Names of the spec's settings in the order the dialog shows them."""
    names = [p.name for p in spec.params]
    if "method" in names:
        first = [name for name in METHOD_DIALOG_FIRST if name in names]
        return first + [name for name in names if name not in first]
    first = [name for name in DIALOG_FIRST if name in names]
    return first + [name for name in names if name not in first]


FILTERS = (
    # Denoise and JPEG honour the selection as GIMP's own filters do, and a DIP run's time
    # grows with the area: a selected face takes minutes where the whole photo takes hours.
    FilterSpec("denoise", "denoise", "_Denoise...",
               "Remove noise with a trained network (seconds) or a Deep Image Prior (minutes); the "
               "result is a new layer above the source, masked to the selection if there is one.",
               "Denoise", DENOISE_PARAMS, selection_bounds=True, context=DIP_CONTEXT, mask_result=True),
    FilterSpec("inpaint-selection", "inpaint", "_Inpaint Selection...",
               "Fill the selected pixels from their surroundings with a trained network (seconds) "
               "or a Deep Image Prior (minutes); the result is a new layer above the source.",
               "Inpaint", INPAINT_PARAMS, needs_selection=True),
    FilterSpec("remove-jpeg-artifacts", "dejpeg", "Remove _JPEG Artifacts...",
               "Remove JPEG blocking and ringing with a trained network (seconds) or a Deep Image "
               "Prior (minutes); the quality setting need not be known. The result is a new layer "
               "above the source, masked to the selection if there is one.",
               "JPEG artifacts removed", DEJPEG_PARAMS, selection_bounds=True, context=DIP_CONTEXT,
               mask_result=True, sends_jpeg_tables=True),
    FilterSpec("upscale", "upscale", "_Upscale...",
               "Enlarge the layer (or the selection's bounds) 2x, 3x, 4x or 8x with a trained network "
               "(seconds) or a Deep Image Prior (minutes); the result opens as a new image.",
               "Upscaled", UPSCALE_PARAMS, output="new-image", selection_bounds=True,
               context=NET_CONTEXT, scale_param="scale", sends_jpeg_tables=True),
    FilterSpec("sharpen", "sharpen", "_Sharpen...",
               "Remove blur (soft focus, defocus, resize blur) with a trained network; the result "
               "is a new layer above the source, masked to the selection if there is one.",
               "Sharpened", (DEVICE_PARAM, PASSES_PARAM, AMOUNT_PARAM), selection_bounds=True, context=NET_CONTEXT,
               mask_result=True),
    FilterSpec("decompose", "decompose", "Decompose into _Layers...",
               "Split the layer into layers with Double-DIP (foreground/background, transparent "
               "layers, haze, watermark); they appear in a new layer group above the source, "
               "whose composite reproduces it. Transparency with two layers selected (two shots "
               "of the same scene, the reflection stronger in one) separates both jointly.",
               "Decompose", (DECOMPOSE_MODE_PARAM,) + DIP_PARAMS + (WORKING_SIDE_PARAM,), output="layer-group",
               selection_hint=True, selection_required_for=("watermark",),
               second_layer_for=("transparency",)),
)
WATERMARK_SELECTION_MESSAGE = ("Watermark mode needs a selection around the watermark: select "
                               "it loosely (for example with the Rectangle Select tool), then "
                               "run the filter again.")

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
    "pair-count": ("Select one layer, or two layers (two shots of the same scene) for "
                   "Transparency, in the Layers dialog (%(count)d are selected)."),
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
SELECTION_MISSES_LAYER_MESSAGE = ("The selection does not touch the active layer: select part of "
                                  "the layer, or use Select > None to process all of it.")


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


PREVIEW_SUFFIX = " (preview)"
PARTIAL_SUFFIX = " (result so far)"
ESTIMATE_UNAVAILABLE = "No time estimate available."


def _duration_text(seconds):
    if seconds < 90:
        return "%d s" % max(1, int(round(seconds)))
    if seconds < 5400:
        return "%d min" % int(round(seconds / 60.0))
    return "%.1f h" % (seconds / 3600.0)


def _size_text(size):
    return "%.1f GB" % (size / float(1 << 30)) if size >= 1 << 30 else "%d MB" % (size // (1 << 20))


def describe_estimate(spec, reply, device_label):
    """The dialog's one-line estimate from an engine ``estimate`` reply (None -> fallback)."""
    if not reply:
        return ESTIMATE_UNAVAILABLE
    try:
        preset = spec.param("preset")
    except KeyError:
        preset = None
    labels = [label for _, label in preset.choices] if preset is not None else [""]
    known = [(label, seconds) for label, seconds in zip(labels, reply.get("seconds") or [])
             if isinstance(seconds, (int, float)) and seconds >= 0]
    if len(set(_duration_text(seconds) for _, seconds in known)) == 1:
        known = [("", known[0][1])]  # the setting does not change the time (e.g. Upscale's net)
    parts = []
    for label, seconds in known:
        parts.append("%s with %s" % (_duration_text(seconds), label) if label else _duration_text(seconds))
    text = ("About " + ", ".join(parts) + (" on %s." % device_label)) if parts else ESTIMATE_UNAVAILABLE
    memory = [m for m in reply.get("memory_bytes") or [] if isinstance(m, (int, float))]
    available = reply.get("memory_available")
    if memory and isinstance(available, (int, float)) and max(memory) > available:
        text += " Needs about %s of memory, this machine has %s free: select a smaller area." % (
            _size_text(max(memory)), _size_text(available))
    return text


SECOND_SIZE_MESSAGE = ("The two selected layers must be the same size (%dx%d and %dx%d): crop or "
                       "scale one of them to the other's size, then run the filter again.")


OLD_ENGINE_SECOND_MESSAGE = ("This engine cannot use a second layer yet: run install.py of this "
                             "plug-in version again, or select one layer.")


def filter_sources(host, spec, values):
    """(source, second or None): the layer the filter works on, and for the modes in
    spec.second_layer_for a second selected layer of the same size (the upper one is the
    source). Every other run needs exactly one layer (host.source() refuses more)."""
    if values.get("mode") not in spec.second_layer_for or not hasattr(host, "sources"):
        return host.source(), None
    selected = host.sources()
    if len(selected) == 1:
        return selected[0], None
    if len(selected) != 2:
        refuse_item("pair-count", count=len(selected))
    source, second = selected
    if (second.width, second.height) != (source.width, source.height):
        raise FilterError(SECOND_SIZE_MESSAGE % (source.width, source.height, second.width, second.height))
    return source, second


def work_size(spec, host, source):
    """(width, height) the op works on: the selection's box for inpaint, that box with its
    context for filters that process the selection's bounds, else the layer."""
    if spec.needs_selection or spec.selection_bounds:
        bounds = host.selection_bounds()
        box = _intersect(bounds, source) if bounds is not None else None
        if box is not None:
            if spec.selection_bounds:
                box = _grow(box, spec.context, source)
            return box[2] - box[0], box[3] - box[1]
    return source.width, source.height


# A selection byte -> 1 where the pixel is selected at all (Inpaint fills it), else 0: the
# count then runs in C (bytes.translate / count), also for a 12-megapixel selection.
_SELECTED_BYTE = bytes(bytearray([0] + [1] * 255))


def selected_pixel_count(spec, host, source):
    """How many pixels of the layer the selection covers at all, for a filter that fills the
    selection (Inpaint), or None: its time depends on that more than on the selection's box."""
    if not spec.needs_selection:
        return None
    bounds = host.selection_bounds()
    box = _intersect(bounds, source) if bounds is not None else None
    if box is None:
        return None
    data = host.read_selection(box[0], box[1], box[2] - box[0], box[3] - box[1])
    return bytes(data).translate(_SELECTED_BYTE).count(b"\x01")


class DialogEstimator(object):
    """The dialog's estimate line, recomputed when a setting changes (device, iterations, ...).

    Keeps one engine alive while the dialog is open (estimates are arithmetic on its side, no
    torch import), so each change costs one round trip. Never raises: once the engine has
    failed it answers "no estimate" without trying again, so a broken engine cannot make
    every click in the dialog wait for a timeout.
    """

    def __init__(self, host, spec, plugin_dir, timeout=10.0):
        self.host = host
        self.spec = spec
        self.plugin_dir = plugin_dir
        self.timeout = timeout
        self.engine = None
        self.failed = False
        self.size = None
        self.selected = None

    def _param_sets(self, values):
        try:
            choices = self.spec.param("preset").choice_values()
        except KeyError:
            choices = [None]
        param_sets = []
        for choice in choices:
            params = engine_params(self.spec, values)
            if choice is not None:
                params["preset"] = choice
            param_sets.append(params)
        return param_sets

    def _reply(self, values):
        if self.size is None:
            source = filter_sources(self.host, self.spec, values)[0]
            self.size = work_size(self.spec, self.host, source)
            self.selected = selected_pixel_count(self.spec, self.host, source)
        if self.engine is None:
            self.engine = EngineProcess(load_config(self.plugin_dir), timeout=self.timeout)
            self.engine.start()
        width, height = self.size
        return self.engine.estimate(self.spec.op, width, height, self._param_sets(values),
                                    selected_pixels=self.selected)

    def text(self, values):
        if self.failed:
            return ESTIMATE_UNAVAILABLE
        try:
            reply = self._reply(values)
        except (FilterError, EngineFailure, OSError, ValueError, KeyError):
            self.failed = True
            self.close()
            return ESTIMATE_UNAVAILABLE
        device = values.get("device", "auto")
        device_label = {"cpu": "the CPU", "cuda": "the GPU"}.get(device, "this machine")
        return describe_estimate(self.spec, reply, device_label)

    def close(self):
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()


def estimate_text(host, spec, values, plugin_dir, timeout=10.0):
    """One estimate line (starts and stops an engine); never raises (dialog helper)."""
    estimator = DialogEstimator(host, spec, plugin_dir, timeout)
    try:
        return estimator.text(values)
    finally:
        estimator.close()


def preview_interval(interactive, environ=None):
    """Seconds between live previews: 3 in interactive runs, none in scripts, unless the
    NEURAL_RESTORE_PREVIEW_S environment variable says otherwise (0 = off)."""
    environ = os.environ if environ is None else environ
    override = environ.get("NEURAL_RESTORE_PREVIEW_S")
    if override:
        try:
            value = float(override)
        except ValueError:
            value = 0.0
        return value if value > 0 else None
    return 3.0 if interactive else None


def engine_params(spec, values):
    """Dialog/PDB values -> the engine's params (the filter's own settings only)."""
    return dict((p.name, p.engine_value(values[p.name])) for p in spec.params if p.name in values)


_BYTES_PER_SAMPLE = {"u8": 1, "u16": 2, "f32": 4}
# libjpeg's colour space numbers, as GIMP's parasite stores them.
_JCS_GRAYSCALE, _JCS_YCBCR = 1, 3


def jpeg_tables_text(parasite, origin):
    """GIMP's "jpeg-settings" parasite (bytes: colour space, quality, components, tables,
    then each component's sampling factors and each table's 64 big-endian 16-bit steps; a
    table is stored only when the quality is not the IJG tables' exactly) -> the engine's
    ``jpeg_tables`` text (docs/protocol.md), with ``origin`` (x, y), where the pixels sent
    start in the image; "" when it holds nothing usable."""
    data = bytearray(parasite or b"")
    if len(data) < 4:
        return ""
    space, quality, components, tables = data[0], data[1], data[2], data[3]
    if (space, components) not in ((_JCS_GRAYSCALE, 1), (_JCS_YCBCR, 3)) or \
            len(data) < 4 + 2 * components + 128 * tables:
        return ""
    sampling = ["%dx%d" % (data[4 + 2 * i], data[5 + 2 * i]) for i in range(components)]
    if any(not ("1" <= f[0] <= "4" and "1" <= f[2] <= "4") for f in sampling):
        return ""
    parts = ["sampling=" + ",".join(sampling)]
    start = 4 + 2 * components
    steps = [[data[start + 128 * t + 2 * i] * 256 + data[start + 128 * t + 2 * i + 1] for i in range(64)]
             for t in range(tables)]
    if tables >= (1 if components == 1 else 2):
        parts.append("luma=" + ",".join(map(str, steps[0])))
        if components == 3:
            parts.append("chroma=" + ",".join(map(str, steps[1])))
    elif tables == 0 and 1 <= quality <= 100:
        parts.append("quality=%d" % quality)
    else:
        return ""
    # Only the position within the grid matters (MCUs are at most 32 px): never negative.
    parts.append("origin=%d,%d" % (origin[0] % 64, origin[1] % 64))
    return " ".join(parts)


def crop_rows(data, width, pixel_bytes, x, y, crop_width, crop_height):
    """The crop_width x crop_height block at (x, y) of a row-major image ``width`` px wide."""
    if x == 0 and crop_width == width:
        return data[y * width * pixel_bytes:(y + crop_height) * width * pixel_bytes]
    stride, span = width * pixel_bytes, crop_width * pixel_bytes
    start = x * pixel_bytes
    return b"".join(data[(y + row) * stride + start:(y + row) * stride + start + span]
                    for row in range(crop_height))


def _grow(box, margin, source):
    """box (x1, y1, x2, y2) grown by margin on each side, kept inside the source layer."""
    return (max(box[0] - margin, source.x), max(box[1] - margin, source.y),
            min(box[2] + margin, source.x + source.width), min(box[3] + margin, source.y + source.height))


def _selection_region(host, spec, source):
    """For filters that honour the selection: (inner, outer, partial) boxes in image
    coordinates, or None to process the whole layer. inner is what the result covers,
    outer what is sent (inner plus context), partial whether the selection is anything
    other than all of inner (then a mask is worth adding)."""
    bounds = host.selection_bounds()
    if bounds is None:
        return None
    inner = _intersect(bounds, source)
    if inner is None:
        raise FilterError(SELECTION_MISSES_LAYER_MESSAGE)
    width, height = inner[2] - inner[0], inner[3] - inner[1]
    selected = host.read_selection(inner[0], inner[1], width, height)
    if selected.count(b"\x00") == len(selected):
        raise FilterError(SELECTION_MISSES_LAYER_MESSAGE)
    if inner == (source.x, source.y, source.x + source.width, source.y + source.height) and \
            selected.count(b"\xff") == len(selected):
        return None  # Select All (or a selection covering the layer): the ordinary whole-layer run
    if min(width, height) < MIN_SIDE:
        raise FilterError("The selection covers only %dx%d pixels of the layer; select at least %dx%d "
                          "pixels (or Select > None for the whole layer)." % (width, height, MIN_SIDE, MIN_SIDE))
    partial = selected.count(b"\xff") != len(selected)
    return inner, _grow(inner, spec.context, source), partial


def _cut_result(result, outer, inner, factor):
    """A result for ``outer`` (``factor`` times its size) -> the part covering ``inner``."""
    if outer == inner:
        return result
    bpp = result.channels * _BYTES_PER_SAMPLE[result.dtype]
    x, y = (inner[0] - outer[0]) * factor, (inner[1] - outer[1]) * factor
    width, height = (inner[2] - inner[0]) * factor, (inner[3] - inner[1]) * factor
    data = crop_rows(bytes(result.data), result.width, bpp, x, y, width, height)
    return WireBuffer(result.name, width, height, result.channels, result.dtype, data,
                      inner[0] * factor, inner[1] * factor, **result.extra)


def run_filter(host, spec, values, plugin_dir, log_dir=None):
    """Run one filter on the host's active drawable. Returns the engine's info dict.

    Raises FilterError (kind bad-input / engine / cancelled / setup) with a message for the
    user; in every failure case the image is left as it was.
    """
    source, second = filter_sources(host, spec, values)
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
    elif spec.selection_hint:
        mask_buffer = _selection_hint(host, spec, values, source)
    region = _selection_region(host, spec, source) if spec.selection_bounds else None
    pixels = host.read_pixels(source)
    sent = (source.x, source.y, source.x + source.width, source.y + source.height)
    if region is not None:
        sent = region[1]
        pixel_bytes = source.channels * _BYTES_PER_SAMPLE[source.dtype]
        pixels = crop_rows(pixels, source.width, pixel_bytes, sent[0] - source.x, sent[1] - source.y,
                           sent[2] - sent[0], sent[3] - sent[1])
    image_buffer = WireBuffer("image", sent[2] - sent[0], sent[3] - sent[1], source.channels, source.dtype,
                              pixels, sent[0], sent[1])
    buffers = [image_buffer] + ([mask_buffer] if mask_buffer is not None else [])
    if second is not None:
        buffers.append(WireBuffer("second", second.width, second.height, second.channels, second.dtype,
                                  host.read_pixels(second), second.x, second.y))
    factor = spec.result_scale(values)
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
        # A preview is shown as a layer over the source (or over the selection's bounds, cut
        # and masked as the result will be), so not for an enlargement.
        interval = getattr(host, "preview_interval_s", None) if factor == 1 else None
        shown = region[0] if region is not None else sent

        def on_preview(previews):
            if region is not None:
                previews = [_cut_result(p, region[1], region[0], 1) if _fits(p, sent, source) else p
                            for p in previews]
            if all(_fits(p, shown, source) for p in previews):
                if region is not None and spec.mask_result and region[2]:
                    host.show_preview(source, spec.layer_name + PREVIEW_SUFFIX, previews,
                                      mask_with_selection=True)
                else:
                    host.show_preview(source, spec.layer_name + PREVIEW_SUFFIX, previews)

        try:
            engine.start(on_idle=clock.tick)
            if second is not None and "second-image" not in (engine.hello or {}).get("features", ()):
                # An older engine would ignore the second layer and split the first alone.
                raise FilterError(OLD_ENGINE_SECOND_MESSAGE, "setup")
            clock.first = None  # estimate from the job's own frames, not the start-up
            params = engine_params(spec, values)
            if spec.sends_jpeg_tables and getattr(host, "jpeg_settings", None) is not None:
                tables = jpeg_tables_text(host.jpeg_settings(), (sent[0], sent[1]))
                if tables:
                    params["jpeg_tables"] = tables
            info, results = engine.run(spec.op, params, buffers, clock, clock.tick,
                                       interval, on_preview if interval else None)
        finally:
            engine.close(on_idle=clock.tick)
            if interval:
                host.remove_preview()  # also on errors: a preview never outlives the run
    except EngineFailure as failure:
        raise FilterError(failure.message, failure.kind)
    if not results:
        raise FilterError("The engine returned no result.", "engine")
    for result in results:
        channels = 1 if result.is_mask else source.channels
        if (result.width, result.height, result.channels, result.dtype) != \
                (image_buffer.width * factor, image_buffer.height * factor, channels, source.dtype):
            raise FilterError("The engine returned a result of the wrong size or format.", "engine")
    if region is not None:
        results = [_cut_result(result, region[1], region[0], factor) for result in results]
    if spec.output == "new-image":
        host.progress(1.0, "Opening the result as a new image...")
        host.open_image(source, "%s (%s)" % (spec.layer_name, source.name) if source.name else spec.layer_name,
                        results[0])
        return info
    suffix = PARTIAL_SUFFIX if info.get("partial") else ""
    if spec.output == "layer-group":
        host.progress(1.0, "Adding the layer group...")
        host.add_layer_group(source, spec.group_name(values) + suffix, layer_stack(results))
        return info
    host.progress(1.0, "Adding the result layer...")
    layer_name = spec.layer_name + suffix
    if spec.mask_result and region is not None and region[2]:
        host.add_layers(source, layer_name, results, mask_with_selection=True)
    else:
        host.add_layers(source, layer_name, results)
    return info


def _fits(buffer, box, source):
    """Whether buffer covers box (x1, y1, x2, y2) in the source's format."""
    return (buffer.width, buffer.height, buffer.channels, buffer.dtype) == \
        (box[2] - box[0], box[3] - box[1], source.channels, source.dtype)


def _selection_hint(host, spec, values, source):
    """The selection as the op's hint mask, or None without one (an error for the modes
    that need it)."""
    bounds = host.selection_bounds()
    mask = None
    if bounds is not None and _intersect(bounds, source) is not None:
        mask = host.read_selection(source.x, source.y, source.width, source.height)
        if mask.count(b"\x00") == len(mask):
            mask = None
    if mask is None:
        if values.get("mode") in spec.selection_required_for:
            raise FilterError(WATERMARK_SELECTION_MESSAGE)
        return None
    return WireBuffer("mask", source.width, source.height, 1, "u8", mask, source.x, source.y)


def layer_stack(results):
    """The result layers, top first, each with the buffer that is its layer mask (or None)."""
    by_name = dict((result.name, result) for result in results)
    stack = []
    for result in results:
        if result.is_mask:
            continue
        mask = by_name.get(result.mask) if result.mask else None
        if result.mask and (mask is None or not mask.is_mask):
            raise FilterError("The engine returned a layer whose mask %r is missing." % result.mask, "engine")
        stack.append((result, mask))
    if not stack:
        raise FilterError("The engine returned no layer.", "engine")
    return stack
