"""A small, faithful in-memory fake of GIMP 2.10's ``gimpfu`` module (Python 2.7 syntax).

Only what hosts/gimp2.py and gimp_plugin/gimp2/neural_restore_gimp2.py use, with the
behaviour of the real calls (GIMP 2.10 Python-Fu / pygimp, libgimp 2.10 PDB):

  gimpfu.register(proc_name, blurb, help, author, copyright, date, label, imagetypes,
                  params, results, function, menu=...)   -> recorded in REGISTERED
  gimpfu.main()                                           -> no-op (GIMP calls the function)
  gimp.Layer(image, name, width, height, type, opacity, mode)  a layer not yet in the image
  gimp.progress_init(text), gimp.progress_update(fraction), gimp.displays_flush()
  drawable.width / height / offsets / bpp / has_alpha / is_rgb / is_gray / is_indexed /
           type / name / parent;  drawable.set_offsets(x, y), flush(), update(x, y, w, h)
  drawable.get_pixel_rgn(x, y, w, h, dirty, shadow) -> PixelRgn; rgn[x1:x2, y1:y2] is a str
           of (x2-x1)*(y2-y1)*bpp bytes, rows top first, drawable coordinates, inside the
           region only (pygimp raises otherwise); assigning needs a dirty region
  image.width / height / layers / selection;  image.undo_group_start() / undo_group_end()
  pdb.gimp_selection_bounds(image) -> (non_empty, x1, y1, x2, y2), x2/y2 exclusive
  pdb.gimp_item_is_layer / is_group / is_channel / is_layer_mask(item) -> 0/1 (a layer mask
           is a channel too, as in GIMP)
  pdb.gimp_image_get_item_position(image, item), pdb.gimp_image_insert_layer(image, layer,
           parent, position), pdb.gimp_progress_set_text(text)
  pdb.gimp_image_get_precision(image), pdb.gimp_image_new_with_precision(w, h, base, precision)
           (GimpPrecision values of 2.10: 150 = 8-bit gamma, 250 = 16-bit gamma, 600 = float
           linear), pdb.gimp_image_undo_disable / undo_enable / clean_all(image)
  layer.create_mask(ADD_SELECTION_MASK) -> LayerMask from the selection under the layer (the
           layer must be in its image); layer.add_mask(mask)
  gimp.Display(image) (RuntimeError in batch GIMP: no user interface; UI = True here)
  pdb.gimp_layer_group_new(image) -> an unnamed group not yet in the image;
           pdb.gimp_item_set_name(item, name); pdb.gimp_layer_set_composite_space(layer, space)
  layer.create_mask(type) -> LayerMask of the layer's size (ADD_MASK_WHITE: all 255);
           layer.add_mask(mask) (fails if the layer has one); layer.mask; layer.visible;
           layer.opacity

Enum values are GIMP 2.10's (GimpImageType, LAYER_MODE_NORMAL = 28). Everything the
plug-in does is logged in CALLS so tests can check undo grouping and progress.
"""
import time

RGB_IMAGE, RGBA_IMAGE, GRAY_IMAGE, GRAYA_IMAGE, INDEXED_IMAGE, INDEXEDA_IMAGE = range(6)
RGB, GRAY, INDEXED = range(3)
LAYER_MODE_NORMAL = 28
ADD_SELECTION_MASK = 4
PRECISION_U8_GAMMA, PRECISION_U16_GAMMA, PRECISION_FLOAT_LINEAR = 150, 250, 600
_PRECISION_BY_BYTES = {1: PRECISION_U8_GAMMA, 2: PRECISION_U16_GAMMA, 4: PRECISION_FLOAT_LINEAR}
UI = True  # False: batch GIMP (no displays)
DISPLAYS = []
ADD_MASK_WHITE, ADD_MASK_BLACK = 0, 1
LAYER_COLOR_SPACE_AUTO, LAYER_COLOR_SPACE_RGB_LINEAR, LAYER_COLOR_SPACE_RGB_PERCEPTUAL = 0, 1, 2
PF_INT32, PF_INT, PF_STRING, PF_IMAGE, PF_DRAWABLE, PF_OPTION = 0, 0, 4, 13, 16, 1007

REGISTERED = []
CALLS = []  # (seconds, what, args)
_CHANNELS = {RGB_IMAGE: 3, RGBA_IMAGE: 4, GRAY_IMAGE: 1, GRAYA_IMAGE: 2, INDEXED_IMAGE: 1, INDEXEDA_IMAGE: 2}


def _log(what, *args):
    CALLS.append((time.time(), what, args))


def register(proc_name, blurb, help, author, copyright, date, label, imagetypes, params, results,
             function, menu=None, domain=None, on_query=None, on_run=None):
    if not (proc_name.startswith("python-fu-") or proc_name.startswith("plug-in-")):
        proc_name = "python-fu-" + proc_name  # what real gimpfu does
    REGISTERED.append({"name": proc_name, "label": label, "menu": menu, "imagetypes": imagetypes,
                       "params": params, "results": results, "function": function})


def main():
    pass


class PixelRgn(object):
    def __init__(self, drawable, x, y, w, h, dirty, shadow):
        self.drawable, self.x, self.y, self.w, self.h = drawable, x, y, w, h
        self.dirty, self.shadow = dirty, shadow
        if x < 0 or y < 0 or x + w > drawable.width or y + h > drawable.height:
            raise ValueError("pixel region outside the drawable")

    def _box(self, key):
        xs, ys = key
        x1, x2, y1, y2 = xs.start, xs.stop, ys.start, ys.stop
        if not (self.x <= x1 < x2 <= self.x + self.w and self.y <= y1 < y2 <= self.y + self.h):
            raise IndexError("subscript out of range")
        return x1, y1, x2, y2

    def __getitem__(self, key):
        x1, y1, x2, y2 = self._box(key)
        d, bpp = self.drawable, self.drawable.bpp
        rows = [bytes(d.data[((y * d.width) + x1) * bpp:((y * d.width) + x2) * bpp]) for y in range(y1, y2)]
        return b"".join(rows)

    def __setitem__(self, key, value):
        if not self.dirty:
            raise TypeError("pixel region is not writable (dirty=False)")
        x1, y1, x2, y2 = self._box(key)
        d, bpp = self.drawable, self.drawable.bpp
        span = (x2 - x1) * bpp
        if len(value) != span * (y2 - y1):
            raise TypeError("wrong number of bytes")
        for row, y in enumerate(range(y1, y2)):
            start = (y * d.width + x1) * bpp
            d.data[start:start + span] = value[row * span:(row + 1) * span]
        d.written = True


class Item(object):
    kind = "item"

    def __init__(self, image, name, width, height, bpp):
        self.image, self.name, self.width, self.height, self.bpp = image, name, width, height, bpp
        self.offsets = (0, 0)
        self.parent = None
        self.data = bytearray(width * height * bpp)
        self.written = False

    def get_pixel_rgn(self, x, y, w, h, dirty=True, shadow=False):
        return PixelRgn(self, x, y, w, h, dirty, shadow)

    def flush(self):
        _log("flush", self.name)

    def update(self, x, y, w, h):
        _log("update", self.name, x, y, w, h)


class Layer(Item):
    kind = "layer"

    def __init__(self, image, name, width, height, type, opacity=100.0, mode=LAYER_MODE_NORMAL):
        # Pixel regions of a precision-enabled 2.10 plug-in: bpp follows the image precision.
        Item.__init__(self, image, name, width, height, _CHANNELS[type] * image.bytes_per_channel)
        self.type, self.opacity, self.mode = type, opacity, mode
        self.mask = None
        self.visible = True
        self.composite_space = LAYER_COLOR_SPACE_AUTO
        _log("gimp.Layer", name, width, height, type, opacity, mode)

    has_alpha = property(lambda self: self.type in (RGBA_IMAGE, GRAYA_IMAGE, INDEXEDA_IMAGE))
    is_rgb = property(lambda self: self.type in (RGB_IMAGE, RGBA_IMAGE))
    is_gray = property(lambda self: self.type in (GRAY_IMAGE, GRAYA_IMAGE))
    is_indexed = property(lambda self: self.type in (INDEXED_IMAGE, INDEXEDA_IMAGE))

    def set_offsets(self, x, y):
        self.offsets = (x, y)

    def create_mask(self, mask_type):
        if mask_type == ADD_SELECTION_MASK:
            if self not in _Pdb()._siblings(self.image, self):
                raise RuntimeError("layer is not in an image")
            mask = LayerMask(self.image, self.name + " mask", self.width, self.height)
            sel, ox, oy = self.image.selection, self.offsets[0], self.offsets[1]
            for y in range(self.height):
                for x in range(self.width):
                    if 0 <= x + ox < sel.width and 0 <= y + oy < sel.height:
                        mask.data[y * self.width + x] = sel.data[(y + oy) * sel.width + x + ox]
            return mask
        if mask_type not in (ADD_MASK_WHITE, ADD_MASK_BLACK):
            raise NotImplementedError("the fake knows white, black and selection masks only")
        # One channel of the image's precision, as the pixel regions see it.
        mask = LayerMask(self.image, self.name + " mask", self.width, self.height)
        mask.bpp = self.image.bytes_per_channel
        mask.data = bytearray(self.width * self.height * mask.bpp)
        if mask_type == ADD_MASK_WHITE:
            mask.data[:] = b"\xff" * len(mask.data)
        return mask

    def add_mask(self, mask):
        if self.mask is not None:
            raise RuntimeError("the layer already has a mask")
        if (mask.width, mask.height) != (self.width, self.height):
            raise RuntimeError("the mask's size differs from the layer's")
        self.mask = mask
        _log("add_mask", self.name)


class GroupLayer(Layer):
    kind = "group"

    def __init__(self, image, name):
        Layer.__init__(self, image, name, 1, 1, RGBA_IMAGE)
        self.layers = []


class Channel(Item):
    kind = "channel"
    type, has_alpha, is_rgb, is_gray, is_indexed = GRAY_IMAGE, False, False, True, False

    def __init__(self, image, name, width, height, opacity=50.0, color=(0, 0, 0)):
        Item.__init__(self, image, name, width, height, 1)


class LayerMask(Channel):
    kind = "mask"


class Image(object):
    def __init__(self, width, height, base=RGB, bytes_per_channel=1):
        # bytes_per_channel stands for the image precision (gimp-image-get-precision):
        # 1 = 8-bit, 2 = 16-bit, 4 = float, as a precision-enabled plug-in's regions see it.
        self.width, self.height, self.base_type = width, height, base
        self.bytes_per_channel = bytes_per_channel
        self.layers = []  # top first, like image.layers
        self.channels = []
        self.selection = Channel(self, "Selection Mask", width, height)
        self.undo_depth = 0
        self.undo_enabled = True
        self.dirty = False
        self.color_profile = ()  # ICC bytes as PDB INT8ARRAY values; () = built-in sRGB
        self.metadata = ""  # GimpMetadata serialised (XML), as gimp-image-get-metadata returns it
        self.resolution = (72.0, 72.0)  # a new image's default
        self.parasites = {}  # name -> Parasite, as GIMP's loaders attach them (e.g. jpeg-settings)

    def parasite_find(self, name):
        return self.parasites.get(name)

    def undo_group_start(self):
        self.undo_depth += 1
        _log("undo_group_start")

    def undo_group_end(self):
        self.undo_depth -= 1
        _log("undo_group_end")


class Parasite(object):
    def __init__(self, name, flags, data):
        self.name, self.flags, self.data = name, flags, data  # data: a str of bytes (Python 2)


class Display(object):
    def __init__(self, image):
        if not UI:
            raise RuntimeError("could not create display")
        self.image = image
        DISPLAYS.append(self)
        _log("gimp.Display", image)


class _Gimp(object):
    Layer, Image, Channel, GroupLayer, LayerMask, Display = Layer, Image, Channel, GroupLayer, LayerMask, Display
    Parasite = Parasite

    def progress_init(self, text=None):
        _log("progress_init", text)

    def progress_update(self, fraction):
        _log("progress_update", fraction)

    def displays_flush(self):
        _log("displays_flush")

    def message(self, text):
        _log("message", text)


class _Pdb(object):
    def gimp_selection_bounds(self, image):
        data, w = image.selection.data, image.width
        rows = [y for y in range(image.height) if any(data[y * w:(y + 1) * w])]
        if not rows:
            return (0, 0, 0, w, image.height)  # GIMP returns the whole image when empty
        cols = [x for x in range(w) if any(data[y * w + x] for y in rows)]
        return (1, cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)

    def gimp_item_is_layer(self, item):
        return int(isinstance(item, Layer))

    def gimp_item_is_group(self, item):
        return int(isinstance(item, GroupLayer))

    def gimp_item_is_channel(self, item):
        return int(isinstance(item, Channel))

    def gimp_item_is_layer_mask(self, item):
        return int(isinstance(item, LayerMask))

    def _siblings(self, image, item):
        return item.parent.layers if item.parent is not None else image.layers

    def gimp_image_get_item_position(self, image, item):
        return self._siblings(image, item).index(item)

    def gimp_image_insert_layer(self, image, layer, parent, position):
        if image.undo_depth <= 0 and image.undo_enabled:
            _log("insert outside an undo group", layer.name)
        layer.parent = parent
        (parent.layers if parent is not None else image.layers).insert(position, layer)
        _log("gimp_image_insert_layer", layer.name, parent.name if parent else None, position)

    def gimp_image_get_precision(self, image):
        return _PRECISION_BY_BYTES[image.bytes_per_channel]

    def gimp_image_new_with_precision(self, width, height, base, precision):
        by_precision = dict((v, k) for k, v in _PRECISION_BY_BYTES.items())
        image = Image(width, height, base, by_precision[precision])
        _log("gimp_image_new_with_precision", width, height, base, precision)
        return image

    def gimp_image_get_color_profile(self, image):
        return len(image.color_profile), tuple(image.color_profile)

    def gimp_image_set_color_profile(self, image, num_bytes, color_profile):
        if num_bytes != len(color_profile):
            raise RuntimeError("gimp-image-set-color-profile: num-bytes does not match the data")
        image.color_profile = tuple(color_profile)
        _log("gimp_image_set_color_profile", num_bytes)

    def gimp_image_get_metadata(self, image):
        return image.metadata

    def gimp_image_set_metadata(self, image, metadata_string):
        image.metadata = metadata_string
        _log("gimp_image_set_metadata", len(metadata_string))

    def gimp_image_get_resolution(self, image):
        return image.resolution

    def gimp_image_set_resolution(self, image, xresolution, yresolution):
        image.resolution = (float(xresolution), float(yresolution))

    def gimp_image_undo_disable(self, image):
        image.undo_enabled = False

    def gimp_image_undo_enable(self, image):
        image.undo_enabled = True

    def gimp_image_clean_all(self, image):
        image.dirty = False

    def gimp_progress_set_text(self, text):
        _log("gimp_progress_set_text", text)

    def gimp_layer_group_new(self, image):
        return GroupLayer(image, "Layer Group")

    def gimp_item_set_name(self, item, name):
        item.name = name

    def gimp_layer_set_composite_space(self, layer, space):
        layer.composite_space = space


gimp = _Gimp()
pdb = _Pdb()
