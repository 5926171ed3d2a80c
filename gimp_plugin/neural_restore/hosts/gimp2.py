"""GIMP 2.10 host adapter (Python 2.7, gimpfu / pygimp). See filters.py for the interface.

Uses only the gimpfu API: ``gimp`` and ``pdb`` objects, drawable attributes, pixel regions
(``drawable.get_pixel_rgn``) and PDB procedures that exist in GIMP 2.10.
Pixel regions hand plug-ins data in the drawable's own layout, ``bpp`` bytes per pixel;
for high-bit-depth images GIMP 2.10 converts that to 8 bits per channel unless the plug-in
enabled precision, so the wire dtype is derived from ``bpp`` rather than assumed.
"""
from gimpfu import gimp, pdb  # noqa: F401 - pdb is the live PDB inside GIMP
import gimpfu

from ..filters import SourceInfo, refuse_item

_DTYPE_BY_SIZE = {1: "u8", 2: "u16", 4: "f32"}


class Gimp2Host(object):
    def __init__(self, image, drawable):
        self.image = image
        self.drawable = drawable
        self.opened_image = None
        self._progress_started = False

    def source(self):
        drawable = self.drawable
        if drawable is None:
            refuse_item("count", count=0)
        # A layer mask is also a channel, so ask about it first.
        if pdb.gimp_item_is_layer_mask(drawable):
            refuse_item("mask", drawable.name)
        if pdb.gimp_item_is_channel(drawable):
            refuse_item("channel", drawable.name)
        if pdb.gimp_item_is_group(drawable):
            refuse_item("group", drawable.name)
        if not pdb.gimp_item_is_layer(drawable):
            refuse_item("other", drawable.name)
        if drawable.is_indexed:
            refuse_item("indexed")
        channels = (1 if drawable.is_gray else 3) + (1 if drawable.has_alpha else 0)
        dtype = _DTYPE_BY_SIZE.get(drawable.bpp // channels)
        if dtype is None or drawable.bpp % channels:
            refuse_item("other", drawable.name)
        x, y = drawable.offsets
        return SourceInfo(drawable.width, drawable.height, x, y, channels, dtype, drawable.name)

    def read_pixels(self, source):
        region = self.drawable.get_pixel_rgn(0, 0, source.width, source.height, False, False)
        return region[0:source.width, 0:source.height]

    def jpeg_settings(self):
        parasite = self.image.parasite_find("jpeg-settings")  # set by GIMP's JPEG loader
        return None if parasite is None else bytes(bytearray(parasite.data))

    def selection_bounds(self):
        # gimp-selection-bounds: (non_empty, x1, y1, x2, y2), x2/y2 exclusive, image coordinates.
        non_empty, x1, y1, x2, y2 = pdb.gimp_selection_bounds(self.image)
        return (x1, y1, x2, y2) if non_empty else None

    def read_selection(self, x, y, width, height):
        # The selection channel covers the canvas only; pixel regions cannot read past it, so
        # read the overlap and leave the rest unselected (0).
        out = bytearray(width * height)
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + width, self.image.width), min(y + height, self.image.height)
        if x1 < x2 and y1 < y2:
            region = self.image.selection.get_pixel_rgn(x1, y1, x2 - x1, y2 - y1, False, False)
            rows = region[x1:x2, y1:y2]
            span = x2 - x1
            for row in range(y2 - y1):
                start = (y1 - y + row) * width + (x1 - x)
                out[start:start + span] = rows[row * span:(row + 1) * span]
        return bytes(out)

    def progress(self, fraction, text):
        if not self._progress_started:
            gimp.progress_init("Neural Restore")
            self._progress_started = True
        if text:
            pdb.gimp_progress_set_text(text)
        gimp.progress_update(max(0.0, min(1.0, fraction)))
        return False

    def open_image(self, source, name, buf):
        # Same base type and precision as the source: a 16-bit or float image stays so.
        image = pdb.gimp_image_new_with_precision(buf.width, buf.height, self.image.base_type,
                                                  pdb.gimp_image_get_precision(self.image))
        pdb.gimp_image_undo_disable(image)  # the new image starts as it is
        try:
            # The source's colour profile too, so the pixels mean the same colours there
            # (0 bytes: the source uses GIMP's built-in sRGB, which the new image has already).
            profile_size, profile = pdb.gimp_image_get_color_profile(self.image)
            if profile_size:
                pdb.gimp_image_set_color_profile(image, profile_size, profile)
            # The camera's metadata (serialised; GIMP updates the pixel size in it on export)
            # and the resolution, as Image > Scale Image leaves it.
            metadata = pdb.gimp_image_get_metadata(self.image)
            if metadata:
                pdb.gimp_image_set_metadata(image, metadata)
            pdb.gimp_image_set_resolution(image, *pdb.gimp_image_get_resolution(self.image))
            layer = gimp.Layer(image, name, buf.width, buf.height, self.drawable.type, 100.0,
                               gimpfu.LAYER_MODE_NORMAL)
            pdb.gimp_image_insert_layer(image, layer, None, 0)
            region = layer.get_pixel_rgn(0, 0, buf.width, buf.height, True, False)
            region[0:buf.width, 0:buf.height] = bytes(buf.data)
            layer.flush()
        finally:
            pdb.gimp_image_undo_enable(image)
        pdb.gimp_image_clean_all(image)
        # gimpfu does not tell the function its run mode: show the image whenever GIMP has a
        # user interface (batch GIMP has none, and then creating a display fails).
        try:
            gimp.Display(image)
            gimp.displays_flush()
        except RuntimeError:
            pass
        self.opened_image = image
        return image

    def add_layers(self, source, layer_name, buffers, mask_with_selection=False):
        image, drawable = self.image, self.drawable
        parent = drawable.parent  # None at the top level
        position = pdb.gimp_image_get_item_position(image, drawable)
        image.undo_group_start()
        try:
            for index, buf in enumerate(buffers):
                name = layer_name if len(buffers) == 1 else "%s - %s" % (layer_name, buf.title)
                layer = gimp.Layer(image, name, buf.width, buf.height, drawable.type, 100.0,
                                   gimpfu.LAYER_MODE_NORMAL)
                pdb.gimp_image_insert_layer(image, layer, parent, position + index)
                layer.set_offsets(buf.x, buf.y)
                region = layer.get_pixel_rgn(0, 0, buf.width, buf.height, True, False)
                region[0:buf.width, 0:buf.height] = bytes(buf.data)
                layer.flush()
                if mask_with_selection:  # feathered edges blend as in GIMP's own filters
                    layer.add_mask(layer.create_mask(gimpfu.ADD_SELECTION_MASK))
                layer.update(0, 0, buf.width, buf.height)
        finally:
            image.undo_group_end()
        gimp.displays_flush()

    def add_layer_group(self, source, group_name, stack):
        image, drawable = self.image, self.drawable
        parent = drawable.parent
        position = pdb.gimp_image_get_item_position(image, drawable)
        image.undo_group_start()
        try:
            group = pdb.gimp_layer_group_new(image)
            pdb.gimp_item_set_name(group, group_name)
            pdb.gimp_image_insert_layer(image, group, parent, position)
            for index, (buf, mask) in enumerate(stack):
                layer = gimp.Layer(image, buf.title, buf.width, buf.height, drawable.type,
                                   100.0 * buf.opacity, gimpfu.LAYER_MODE_NORMAL)
                pdb.gimp_image_insert_layer(image, layer, group, index)
                layer.set_offsets(buf.x, buf.y)
                # The engine's layers mix in sRGB-encoded values (GIMP's Normal: linear light).
                pdb.gimp_layer_set_composite_space(layer, gimpfu.LAYER_COLOR_SPACE_RGB_PERCEPTUAL)
                region = layer.get_pixel_rgn(0, 0, buf.width, buf.height, True, False)
                region[0:buf.width, 0:buf.height] = bytes(buf.data)
                if mask is not None:
                    layer_mask = layer.create_mask(gimpfu.ADD_MASK_WHITE)
                    layer.add_mask(layer_mask)
                    region = layer_mask.get_pixel_rgn(0, 0, buf.width, buf.height, True, False)
                    region[0:buf.width, 0:buf.height] = _stored_mask_bytes(mask)
                    layer_mask.flush()
                layer.visible = bool(buf.visible)
                layer.flush()
                layer.update(0, 0, buf.width, buf.height)
        finally:
            image.undo_group_end()
        gimp.displays_flush()


def _srgb_encode(value):
    value = max(0.0, min(1.0, value))
    return 12.92 * value if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055


# GIMP 2.10 stores the channels of 8-bit perceptual images as Y' (sRGB-encoded) while layer
# compositing reads masks as linear opacity; deeper images store linear Y. So 8-bit mask
# opacities are encoded before they are written, deeper ones go in as they are.
_ENCODE_U8 = bytearray(int(round(255 * _srgb_encode(v / 255.0))) for v in range(256))


def _stored_mask_bytes(mask):
    if mask.dtype == "u8":
        return bytes(bytearray(_ENCODE_U8[b] for b in bytearray(mask.data)))
    return bytes(mask.data)
