"""GIMP 3 host adapter (Python 3, GObject Introspection). See filters.py for the interface."""
import os
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

try:
    gi.require_version("Babl", "0.1")
    from gi.repository import Babl  # noqa: E402
except (ImportError, ValueError):  # a GIMP without Babl's typelib: sRGB names only
    Babl = None

from ..filters import SourceInfo, refuse_item  # noqa: E402

# NEURAL_RESTORE_PROGRESS_LOG=<file>: append every progress update (time, fraction, text).
PROGRESS_LOG = os.environ.get("NEURAL_RESTORE_PROGRESS_LOG")
# Babl sample-type suffix per wire dtype; 16-bit and float images never pass through 8 bits.
_BABL_TYPE = {"u8": "u8", "u16": "u16", "f32": "float"}
# Linear-light integer images are not listed: the protocol's values are perceptual, and
# linear u8/u16 -> perceptual u8/u16 -> linear would round untouched pixels; through f32
# the round trip gives back the stored integers.
_U8 = (Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL)
_U16 = (Gimp.Precision.U16_NON_LINEAR, Gimp.Precision.U16_PERCEPTUAL)


def _wire_dtype(image):
    precision = image.get_precision()
    if precision in _U8:
        return "u8"
    if precision in _U16:
        return "u16"
    return "f32"  # linear integers, half, u32, float, double


def _babl_format(channels, dtype, drawable):
    """The pixel format for the wire, in the drawable's own colour space.

    A bare name ("R'G'B'A u8") means sRGB: GIMP would convert an Adobe RGB or Display P3
    image to sRGB on reading (clipping its wide-gamut colours in 8 and 16 bits) and back on
    writing. In the image's own space the engine gets the stored values, as from a file.
    """
    model = {1: "Y'", 2: "Y'A", 3: "R'G'B'", 4: "R'G'B'A"}[channels]
    name = "%s %s" % (model, _BABL_TYPE[dtype])
    if Babl is None:
        return name
    return Babl.get_name(Babl.format_with_space(name, drawable.get_format()))


def _write_pixels(drawable, buf):
    """Store a WireBuffer's pixels in a drawable of its size (its top-left corner)."""
    target = drawable.get_buffer()
    target.set(Gegl.Rectangle.new(0, 0, buf.width, buf.height), _babl_format(buf.channels, buf.dtype, drawable),
               buf.data)
    target.flush()


class Gimp3Host(object):
    def __init__(self, image, drawables, interactive=False, preview_interval_s=None):
        self.image = image
        self.drawables = list(drawables or [])
        self.interactive = interactive  # a new image gets a display only when a user is looking
        self.opened_image = None
        self._drawable = None
        self._progress_started = False
        self.preview_interval_s = preview_interval_s
        self._preview = None

    def show_preview(self, source, layer_name, buffers, mask_with_selection=False):
        """One temporary layer above the source, outside the undo history.

        The undo stack is frozen only around each edit (milliseconds), not for the whole
        run: GIMP kills a plug-in on cancel, and a stack left frozen would make the user's
        next edits impossible to undo. Freeze/thaw (unlike undo_disable) keeps the history.
        """
        buf = buffers[0]
        image = self.image
        image.undo_freeze()
        try:
            if self._preview is None or not self._preview.is_valid():
                drawable = self._drawable
                layer = Gimp.Layer.new(image, layer_name, buf.width, buf.height, drawable.type(), 100.0,
                                       Gimp.LayerMode.NORMAL)
                image.insert_layer(layer, drawable.get_parent(), image.get_item_position(drawable))
                layer.set_offsets(buf.x, buf.y)
                if mask_with_selection:  # as the result layer will be
                    layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
                self._preview = layer
            _write_pixels(self._preview, buf)
            self._preview.update(0, 0, buf.width, buf.height)
        finally:
            image.undo_thaw()
        Gimp.displays_flush()

    def remove_preview(self):
        if self._preview is None:
            return
        layer, self._preview = self._preview, None
        if not layer.is_valid():  # the user deleted it meanwhile
            return
        self.image.undo_freeze()
        try:
            self.image.remove_layer(layer)
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()

    def source(self):
        if len(self.drawables) != 1:
            refuse_item("count", count=len(self.drawables))
        return self._checked(self.drawables[0])

    def sources(self):
        """Every selected drawable, checked; of two in one layer group the upper first (GIMP
        may list a selection in another order). The first is the one results go above."""
        drawables = list(self.drawables)
        if len(drawables) == 2 and drawables[0].get_parent() == drawables[1].get_parent():
            drawables.sort(key=self.image.get_item_position)
        infos = [self._checked(drawable) for drawable in drawables]
        if infos:
            self._drawable = infos[0].item
        return infos

    def _checked(self, drawable):
        # Specific messages: each of these is a different click away from a usable layer.
        if isinstance(drawable, Gimp.LayerMask):
            refuse_item("mask", drawable.get_name())
        if isinstance(drawable, Gimp.Channel):
            refuse_item("channel", drawable.get_name())
        if isinstance(drawable, Gimp.GroupLayer) or drawable.is_group():
            refuse_item("group", drawable.get_name())
        if not isinstance(drawable, Gimp.Layer):
            refuse_item("other", drawable.get_name())
        if drawable.is_indexed():
            refuse_item("indexed")
        self._drawable = drawable
        has_alpha = drawable.has_alpha()
        channels = (1 if drawable.is_gray() else 3) + (1 if has_alpha else 0)
        x, y = drawable.get_offsets()[-2:]
        info = SourceInfo(drawable.get_width(), drawable.get_height(), x, y, channels,
                          _wire_dtype(self.image), drawable.get_name())
        info.item = drawable  # which drawable read_pixels reads for this source
        return info

    def read_pixels(self, source):
        rect = Gegl.Rectangle.new(0, 0, source.width, source.height)
        drawable = getattr(source, "item", None) or self._drawable
        data = drawable.get_buffer().get(rect, 1.0, _babl_format(source.channels, source.dtype, drawable),
                                         Gegl.AbyssPolicy.CLAMP)
        return bytes(data)

    def jpeg_settings(self):
        parasite = self.image.get_parasite("jpeg-settings")  # set by GIMP's JPEG loader
        if parasite is None:
            return None
        data = parasite.get_data()
        return data.encode("latin-1") if isinstance(data, str) else bytes(bytearray(data))

    def selection_bounds(self):
        result = Gimp.Selection.bounds(self.image)
        # 3.0.4 returns (ok, non_empty, x1, y1, x2, y2); x2/y2 exclusive.
        non_empty, x1, y1, x2, y2 = result[-5:]
        return (x1, y1, x2, y2) if non_empty else None

    def read_selection(self, x, y, width, height):
        selection = self.image.get_selection()
        rect = Gegl.Rectangle.new(x, y, width, height)
        # The selection mask is in image coordinates; outside the canvas reads as unselected.
        return bytes(selection.get_buffer().get(rect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE))

    def progress(self, fraction, text):
        if not self._progress_started:
            Gimp.progress_init("Neural Restore")
            self._progress_started = True
        if text:
            Gimp.progress_set_text(text)
        Gimp.progress_update(max(0.0, min(1.0, fraction)))
        if PROGRESS_LOG:  # what GIMP was told, for bug reports and the progress test
            with open(PROGRESS_LOG, "a") as handle:
                handle.write("%.3f\t%.4f\t%s\n" % (time.time(), fraction, text))
        return False

    def open_image(self, source, name, buf):
        # Same base type and precision as the source image: a 16-bit or float image stays so.
        image = Gimp.Image.new_with_precision(buf.width, buf.height, self.image.get_base_type(),
                                              self.image.get_precision())
        image.undo_disable()  # the new image starts as it is; nothing to undo back to
        try:
            profile = self.image.get_color_profile()
            if profile is not None:
                image.set_color_profile(profile)
            # What Image > Duplicate would keep: the camera's metadata (GIMP updates the pixel
            # size in it on export) and the resolution, as Image > Scale Image leaves it.
            metadata = self.image.get_metadata()
            if metadata is not None:
                image.set_metadata(metadata)
            image.set_resolution(*self.image.get_resolution()[-2:])
            layer = Gimp.Layer.new(image, name, buf.width, buf.height, self._drawable.type(), 100.0,
                                   Gimp.LayerMode.NORMAL)
            image.insert_layer(layer, None, 0)
            _write_pixels(layer, buf)
        finally:
            image.undo_enable()
        image.clean_all()
        if self.interactive:
            Gimp.Display.new(image)
            Gimp.displays_flush()
        self.opened_image = image
        return image

    def add_layers(self, source, layer_name, buffers, mask_with_selection=False):
        drawable = self._drawable
        image = self.image
        parent = drawable.get_parent()
        position = image.get_item_position(drawable)
        layer_type = drawable.type()
        image.undo_group_start()
        try:
            for index, buf in enumerate(buffers):
                name = layer_name if len(buffers) == 1 else "%s - %s" % (layer_name, buf.title)
                layer = Gimp.Layer.new(image, name, buf.width, buf.height, layer_type, 100.0,
                                       Gimp.LayerMode.NORMAL)
                image.insert_layer(layer, parent, position + index)
                layer.set_offsets(buf.x, buf.y)
                _write_pixels(layer, buf)
                if mask_with_selection:  # feathered edges blend as in GIMP's own filters
                    layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
                layer.update(0, 0, buf.width, buf.height)
        finally:
            image.undo_group_end()
        Gimp.displays_flush()

    def add_layer_group(self, source, group_name, stack):
        drawable = self._drawable
        image = self.image
        parent = drawable.get_parent()
        position = image.get_item_position(drawable)
        layer_type = drawable.type()
        image.undo_group_start()
        try:
            group = Gimp.GroupLayer.new(image, group_name)
            image.insert_layer(group, parent, position)
            for index, (buf, mask) in enumerate(stack):
                layer = Gimp.Layer.new(image, buf.title, buf.width, buf.height, layer_type,
                                       100.0 * buf.opacity, Gimp.LayerMode.NORMAL)
                image.insert_layer(layer, group, index)
                layer.set_offsets(buf.x, buf.y)
                # The engine's layers mix in sRGB-encoded values; GIMP's default for Normal
                # is linear light, which would not reproduce the source.
                layer.set_composite_space(Gimp.LayerColorSpace.RGB_PERCEPTUAL)
                _write_pixels(layer, buf)
                if mask is not None:
                    layer_mask = layer.create_mask(Gimp.AddMaskType.WHITE)
                    layer.add_mask(layer_mask)
                    # Mask values are opacities: written as linear "Y", so GIMP's compositing
                    # (which reads masks as linear) sees exactly the engine's weights.
                    mask_buffer = layer_mask.get_buffer()
                    mask_buffer.set(Gegl.Rectangle.new(0, 0, mask.width, mask.height),
                                    "Y %s" % _BABL_TYPE[mask.dtype], mask.data)
                    mask_buffer.flush()
                layer.set_visible(buf.visible)
                layer.update(0, 0, buf.width, buf.height)
        finally:
            image.undo_group_end()
        Gimp.displays_flush()
