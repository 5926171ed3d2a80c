"""Decompose into Layers in a real headless GIMP 3 (see tests/test_gimp_plugin.py for the set-up):
a layer group named after the mode appears above the source, holding the layers with their
masks, hidden map and opacity; its composite reproduces the source; the source is untouched."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA
from tests.test_gimp_plugin import EXCHANGE, SIZE, _psnr, _read, _write, run_in_gimp

pytestmark = pytest.mark.gimp


def test_dehaze_builds_a_layer_group_that_reproduces_the_source(gimp) -> None:
    clear = np.asarray(Image.open(SHARED_DATA / "dip/inpainting/vase.png").convert("RGB"), np.float32)[136:184, 136:184]
    depth = np.mgrid[:SIZE, :SIZE][0][..., None] / SIZE
    t = 0.2 + 0.7 * depth
    hazy = np.clip(clear * t + np.array([220.0, 222.0, 228.0]) * (1 - t), 0, 255).astype(np.uint8)
    _write(gimp, "hazy.raw", hazy.tobytes())
    facts = run_in_gimp(gimp, """
        image, layer = make_image("hazy.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (6, 5))
        facts["status"], facts["message"] = run_filter("plug-in-neural-restore-decompose", image, layer,
                                                       mode="dehaze", iterations=150, seed=0, device="cpu")
        top = image.get_layers()
        facts["top"] = [l.get_name() for l in top]
        group = top[0]
        facts["is_group"] = group.is_group()
        children = group.get_children()
        facts["children"] = [{"name": c.get_name(), "visible": c.get_visible(), "mask": c.get_mask() is not None,
                              "offsets": list(c.get_offsets()[-2:]), "opacity": c.get_opacity()} for c in children]
        dump_layer(layer, "hazy-after.raw", "R'G'B' u8")
        visible = Gimp.Layer.new_from_visible(image, image, "composite")
        image.insert_layer(visible, None, 0)
        visible.set_offsets(0, 0)
        rect = Gegl.Rectangle.new(6, 5, {size}, {size})
        with open(X + "/composite.raw", "wb") as handle:
            handle.write(bytes(visible.get_buffer().get(rect, 1.0, "R'G'B' u8", Gegl.AbyssPolicy.CLAMP)))
        # Undo: one step removes the whole group.
        facts["undo"] = image.undo_is_enabled()
        image.delete()
    """.replace("{size}", str(SIZE)))
    assert facts["status"] == "success", facts["message"]
    assert facts["top"] == ["Dehaze", "Source"]
    assert facts["is_group"]
    assert [(c["name"], c["visible"], c["mask"]) for c in facts["children"]] == [
        ("Transmission map", False, False), ("Haze", True, True), ("Dehazed", True, False)]
    assert all(c["offsets"] == [6, 5] for c in facts["children"])
    assert gimp.to_host(f"{EXCHANGE}/hazy-after.raw").read_bytes() == hazy.tobytes()
    composite = _read(gimp, "composite.raw", 3)
    assert _psnr(composite, hazy) > 20, _psnr(composite, hazy)


def test_a_layer_larger_than_the_working_size_gets_full_size_layers(gimp) -> None:
    # 112×96 with Working size 64: fitted on a 64×55 copy, the layers carried to full size.
    clear = np.asarray(Image.open(SHARED_DATA / "dip/inpainting/kate.png").convert("RGB"), np.float32)[200:296, 200:312]
    t = 0.25 + 0.7 * (np.mgrid[:96, :112][0][..., None] / 96)
    hazy = np.clip(clear * t + np.array([225.0, 225.0, 230.0]) * (1 - t), 0, 255).astype(np.uint8)
    _write(gimp, "hazy-large.raw", hazy.tobytes())
    facts = run_in_gimp(gimp, """
        image = Gimp.Image.new(140, 120, Gimp.ImageBaseType.RGB)
        layer = Gimp.Layer.new(image, "Source", 112, 96, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(3, 4)
        layer.get_buffer().set(Gegl.Rectangle.new(0, 0, 112, 96), "R'G'B' u8", read_raw("hazy-large.raw"))
        layer.get_buffer().flush()
        facts["status"], facts["message"] = run_filter("plug-in-neural-restore-decompose", image, layer,
                                                       mode="dehaze", iterations=60, seed=0, device="cpu",
                                                       working_side=64)
        group = image.get_layers()[0]
        facts["children"] = [{"name": c.get_name(), "size": [c.get_width(), c.get_height()],
                              "offsets": list(c.get_offsets()[-2:])} for c in group.get_children()]
        visible = Gimp.Layer.new_from_visible(image, image, "composite")
        image.insert_layer(visible, None, 0)
        visible.set_offsets(0, 0)
        rect = Gegl.Rectangle.new(3, 4, 112, 96)
        with open(X + "/composite-large.raw", "wb") as handle:
            handle.write(bytes(visible.get_buffer().get(rect, 1.0, "R'G'B' u8", Gegl.AbyssPolicy.CLAMP)))
        image.delete()
    """)
    assert facts["status"] == "success", facts["message"]
    assert [c["name"] for c in facts["children"]] == ["Transmission map", "Haze", "Dehazed"]
    assert all(c["size"] == [112, 96] and c["offsets"] == [3, 4] for c in facts["children"])
    composite = np.frombuffer(gimp.to_host(f"{EXCHANGE}/composite-large.raw").read_bytes(), np.uint8).reshape(96, 112, 3)
    assert _psnr(composite, hazy) > 20, _psnr(composite, hazy)


def test_transparency_with_two_selected_layers_separates_them_jointly(gimp) -> None:
    # Two shots of the same two layers, the second with a weaker "reflection" (discs).
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    bands = 0.5 + 0.4 * np.sin(12 * (xx + yy))
    discs = np.where((yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.06, 0.9, 0.1)
    shots = [((w * bands + (1 - w) * discs)[..., None].repeat(3, 2) * 255).astype(np.uint8) for w in (0.5, 0.7)]
    _write(gimp, "shot1.raw", shots[0].tobytes())
    _write(gimp, "shot2.raw", shots[1].tobytes())
    facts = run_in_gimp(gimp, """
        image, first = make_image("shot1.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (6, 5))
        second = Gimp.Layer.new(image, "Second shot", {size}, {size}, Gimp.ImageType.RGB_IMAGE, 100.0,
                                Gimp.LayerMode.NORMAL)
        image.insert_layer(second, None, 1)  # below the first
        second.get_buffer().set(Gegl.Rectangle.new(0, 0, {size}, {size}), "R'G'B' u8", read_raw("shot2.raw"))
        second.get_buffer().flush()

        def run_with(drawables, mode):
            procedure = Gimp.get_pdb().lookup_procedure("plug-in-neural-restore-decompose")
            config = procedure.create_config()
            config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
            config.set_property("image", image)
            config.set_core_object_array("drawables", drawables)
            for key, value in dict(mode=mode, iterations=40, seed=0, device="cpu").items():
                config.set_property(key, value)
            result = procedure.run(config)
            message = result.index(1) if result.length() > 1 else Gimp.get_pdb().get_last_error()
            return result.index(0).value_nick, message

        # Listed lower layer first: the upper one is still the first shot.
        facts["status"], facts["message"] = run_with([second, first], "transparency")
        top = image.get_layers()
        facts["top"] = [l.get_name() for l in top]
        facts["children"] = [(c.get_name(), c.get_mask() is not None) for c in top[0].get_children()]
        dump_layer(first, "shot1-after.raw", "R'G'B' u8")
        dump_layer(second, "shot2-after.raw", "R'G'B' u8")
        facts["other_status"], facts["other_message"] = run_with([first, second], "dehaze")
        facts["top_after_refusal"] = [l.get_name() for l in image.get_layers()]
        image.delete()
    """.replace("{size}", str(SIZE)))
    assert facts["status"] == "success", facts["message"]
    assert facts["top"] == ["Transparency", "Source", "Second shot"]
    assert facts["children"] == [["Reflection", True], ["Transmission", False]]
    assert gimp.to_host(f"{EXCHANGE}/shot1-after.raw").read_bytes() == shots[0].tobytes()
    assert gimp.to_host(f"{EXCHANGE}/shot2-after.raw").read_bytes() == shots[1].tobytes()
    assert facts["other_status"] != "success" and "exactly one layer" in facts["other_message"]
    assert facts["top_after_refusal"] == facts["top"]
