"""The trained-net filters (Upscale, Sharpen, Denoise, Inpaint Selection, Remove JPEG Artifacts)
in a real headless GIMP 3, through the PDB as a script calls them.

The installed engine (install.py, see tests/test_gimp_plugin.py) runs tiny known-output nets
(tests/tiny_nets.py: the RDNs are exactly bilinear, the sharpen U-Net is the identity) given
through NEURAL_RESTORE_MODELS, so the tests check geometry, precision and placement exactly.
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gimp_harness import Gimp3Chroot
from tests.conftest import ENGINE_VENV
from tests.test_gimp_plugin import EXCHANGE, PROLOGUE, SIZE
from tests.tiny_nets import bilinear, export_tiny_nets

pytestmark = pytest.mark.gimp
UPSCALE = "plug-in-neural-restore-upscale"
SHARPEN = "plug-in-neural-restore-sharpen"
# Beside the test engine venv: bound into the chroot at the same path (not under /tmp).
MODELS = ENGINE_VENV.parent / "tiny-nets"


@pytest.fixture(scope="module")
def nets_gimp(gimp: Gimp3Chroot) -> Gimp3Chroot:
    shutil.rmtree(MODELS, ignore_errors=True)
    export_tiny_nets(MODELS)
    gimp.bind(MODELS)
    return gimp


def run_in_gimp(gimp: Gimp3Chroot, body: str, models: Path | None = MODELS) -> dict[str, Any]:
    """Run ``body`` in GIMP; the engine uses the nets in ``models`` (None: the installed ones)."""
    out = gimp.to_host(f"{EXCHANGE}/facts.json")
    out.unlink(missing_ok=True)
    code = (PROLOGUE.format(exchange=EXCHANGE, size=SIZE) + textwrap.dedent(body)
            + f"\nwith open({EXCHANGE!r} + '/facts.json', 'w') as h:\n    json.dump(facts, h)\n")
    result = gimp.run_batch(code, timeout=600, env={} if models is None else {"NEURAL_RESTORE_MODELS": str(models)})
    assert out.exists(), f"GIMP batch failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def _pixels(seed: int, channels: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)


def test_upscale_opens_a_new_image_and_leaves_the_source_alone(nets_gimp: Gimp3Chroot) -> None:
    rgba = _pixels(0, 4)
    nets_gimp.to_host(f"{EXCHANGE}/up.raw").write_bytes(rgba.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("up.raw", "R'G'B'A u8", Gimp.ImageType.RGBA_IMAGE, (80, 70), (10, 12))
        before = len(Gimp.get_images())
        facts["status"], values = run_for_values("plug-in-neural-restore-upscale", image, layer,
                                                 scale="2", method="rdn", device="cpu")
        new = values[0]
        facts["returned"] = isinstance(new, Gimp.Image)
        facts["images_added"] = len(Gimp.get_images()) - before
        facts["size"] = [new.get_width(), new.get_height()]
        facts["precision"] = new.get_precision() == image.get_precision()
        facts["base"] = new.get_base_type() == Gimp.ImageBaseType.RGB
        facts["new_layers"] = describe(new)
        facts["source_layers"] = describe(image)
        facts["dirty"] = new.is_dirty()
        dump_layer(new.get_layers()[0], "up-result.raw", "R'G'B'A u8")
        dump_layer(layer, "up-source-after.raw", "R'G'B'A u8")
        new.delete()
        image.delete()

        # A 16-bit image stays 16-bit; the selection's bounds are what gets enlarged; ×3 (the
        # ×4 network's result reduced) is offered and sized so.
        image16 = Gimp.Image.new_with_precision(60, 60, Gimp.ImageBaseType.RGB, Gimp.Precision.U16_NON_LINEAR)
        layer16 = Gimp.Layer.new(image16, "Source", 60, 60, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image16.insert_layer(layer16, None, 0)
        image16.select_ellipse(Gimp.ChannelOps.REPLACE, 10, 20, 24, 16)
        facts["status16"], values = run_for_values("plug-in-neural-restore-upscale", image16, layer16, scale="3")
        facts["precision16"] = values[0].get_precision() == Gimp.Precision.U16_NON_LINEAR
        facts["size16"] = [values[0].get_width(), values[0].get_height()]
        values[0].delete()
        image16.delete()
    """)
    assert facts["status"] == "success" and facts["status16"] == "success", facts
    assert facts["returned"] and facts["images_added"] == 1
    assert facts["size"] == [2 * SIZE, 2 * SIZE] and facts["precision"] and facts["base"]
    assert facts["new_layers"] == [{"name": "Upscaled (Source)", "offsets": [0, 0], "size": [2 * SIZE, 2 * SIZE]}]
    assert facts["source_layers"] == [{"name": "Source", "offsets": [10, 12], "size": [SIZE, SIZE]}]
    assert not facts["dirty"]
    assert nets_gimp.to_host(f"{EXCHANGE}/up-source-after.raw").read_bytes() == rgba.tobytes()
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/up-result.raw").read_bytes(), np.uint8)
    out = out.reshape(2 * SIZE, 2 * SIZE, 4)
    want = np.clip(bilinear(rgba[..., :3] / 255.0, 2), 0, 1)
    assert np.abs(out[..., :3] / 255.0 - want).max() <= 0.6 / 255
    assert facts["precision16"] and facts["size16"] == [3 * 24, 3 * 16]


def test_a_wide_gamut_photo_keeps_its_colours_profile_and_metadata(nets_gimp: Gimp3Chroot) -> None:
    """An Adobe RGB photo, as a camera's opens: the engine must get and give back the stored
    values (in sRGB terms its saturated colours lie outside [0, 1] and 8 bits would clip
    them), and an upscale's new image must keep the profile, metadata and resolution."""
    rgba = _pixels(4, 4)
    rgba[:8, :, :3] = (255, 0, 0)  # the most saturated red Adobe RGB holds: beyond sRGB's gamut
    nets_gimp.to_host(f"{EXCHANGE}/wide.raw").write_bytes(rgba.tobytes())
    facts = run_in_gimp(nets_gimp, """
        gi.require_version("Babl", "0.1")
        from gi.repository import Babl

        def own(drawable, name):  # a pixel format in the drawable's own colour space
            return Babl.get_name(Babl.format_with_space(name, drawable.get_format()))

        image = Gimp.Image.new(SIZE, SIZE, Gimp.ImageBaseType.RGB)
        image.set_color_profile(Gimp.ColorProfile.new_rgb_adobe())
        layer = Gimp.Layer.new(image, "Source", SIZE, SIZE, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        layer.get_buffer().set(Gegl.Rectangle.new(0, 0, SIZE, SIZE), own(layer, "R'G'B'A u8"), read_raw("wide.raw"))
        layer.get_buffer().flush()
        # (GIMP's own XML form: GExiv2's tag methods need a typelib trixie's GIMP lacks.)
        image.set_metadata(Gimp.Metadata.deserialize(
            '<?xml version="1.0" encoding="UTF-8"?><metadata>'
            '<tag name="Exif.Image.Make">PhoneMaker</tag></metadata>'))
        image.set_resolution(240.0, 240.0)

        facts["upscale"], values = run_for_values("plug-in-neural-restore-upscale", image, layer,
                                                  scale="2", device="cpu", passes="1")
        new = values[0]
        facts["profile"] = new.get_color_profile().get_description()
        facts["metadata"] = new.get_metadata().serialize()
        facts["resolution"] = list(new.get_resolution()[-2:])
        big = new.get_layers()[0]
        dump_layer(big, "wide-up.raw", own(big, "R'G'B'A u8"))
        new.delete()
        facts["sharpen"], _ = run_for_values("plug-in-neural-restore-sharpen", image, layer, device="cpu", passes="1")
        top = image.get_layers()[0]
        dump_layer(top, "wide-sharp.raw", own(top, "R'G'B'A u8"))
        image.delete()
    """.replace("SIZE", str(SIZE)))
    assert facts["upscale"] == "success" and facts["sharpen"] == "success", facts
    assert "Adobe" in facts["profile"] and facts["resolution"] == [240.0, 240.0]
    assert '<tag name="Exif.Image.Make">PhoneMaker</tag>' in facts["metadata"]
    # The identity sharpen net gives back the stored values exactly; the bilinear ×2 net
    # their bilinear enlargement (reds included: no clipping to sRGB on the way).
    sharp = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/wide-sharp.raw").read_bytes(), np.uint8)
    np.testing.assert_array_equal(sharp.reshape(SIZE, SIZE, 4), rgba)
    up = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/wide-up.raw").read_bytes(), np.uint8)
    want = np.clip(bilinear(rgba[..., :3] / 255.0, 2), 0, 1)
    assert np.abs(up.reshape(2 * SIZE, 2 * SIZE, 4)[..., :3] / 255.0 - want).max() <= 0.6 / 255


def test_sharpen_adds_a_layer_masked_to_the_selection(nets_gimp: Gimp3Chroot) -> None:
    rgb = _pixels(1, 3)
    nets_gimp.to_host(f"{EXCHANGE}/sharp.raw").write_bytes(rgb.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("sharp.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (6, 5))
        image.select_ellipse(Gimp.ChannelOps.REPLACE, 16, 15, 20, 14)
        facts["status"], _ = run_for_values("plug-in-neural-restore-sharpen", image, layer, device="cpu")
        facts["layers"] = describe(image)
        top = image.get_layers()[0]
        facts["has_mask"] = top.get_mask() is not None
        dump_layer(top, "sharp-result.raw", "R'G'B' u8")
        dump_layer(top.get_mask(), "sharp-mask.raw", "Y u8")
        dump_layer(layer, "sharp-source-after.raw", "R'G'B' u8")
        image.delete()
    """)
    assert facts["status"] == "success", facts
    assert facts["layers"] == [
        {"name": "Sharpened", "offsets": [16, 15], "size": [20, 14]},
        {"name": "Source", "offsets": [6, 5], "size": [SIZE, SIZE]},
    ]
    assert facts["has_mask"]
    assert nets_gimp.to_host(f"{EXCHANGE}/sharp-source-after.raw").read_bytes() == rgb.tobytes()
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/sharp-result.raw").read_bytes(), np.uint8).reshape(14, 20, 3)
    np.testing.assert_array_equal(out, rgb[10:24, 10:30])  # the identity net, in the right place
    mask = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/sharp-mask.raw").read_bytes(), np.uint8).reshape(14, 20)
    assert mask[7, 10] == 255 and mask[0, 0] == 0  # the ellipse: centre in, corner out


def test_sharpen_amount_with_the_installed_net(nets_gimp: Gimp3Chroot) -> None:
    """The shipped sharpen net (it changes pixels, unlike the tiny one) at 0, 100 and 250 %."""
    from tests.test_upscale_sharpen import _blurred_photo

    soft = np.round(_blurred_photo(SIZE) * 255).astype(np.uint8)
    nets_gimp.to_host(f"{EXCHANGE}/soft.raw").write_bytes(soft.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("soft.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (0, 0))
        facts["status"] = {}
        for amount in (0, 100, 250):
            facts["status"][amount], _ = run_for_values("plug-in-neural-restore-sharpen", image, layer,
                                                        device="cpu", passes="1", amount=amount)
            layers = image.get_layers()  # the new layer is the one right above the source
            above = layers[[l.get_id() for l in layers].index(layer.get_id()) - 1]
            dump_layer(above, "sharp-%d.raw" % amount, "R'G'B' u8")
        facts["names"] = [l.get_name() for l in image.get_layers()]
        image.delete()
    """, models=None)
    assert set(facts["status"].values()) == {"success"}, facts
    assert facts["names"][-1] == "Source" and len(facts["names"]) == 4  # GIMP numbers the repeated names
    assert all(name.startswith("Sharpened") for name in facts["names"][:3])
    out = {amount: np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/sharp-{amount}.raw").read_bytes(), np.uint8)
           .reshape(SIZE, SIZE, 3).astype(np.int16) for amount in (0, 100, 250)}
    np.testing.assert_array_equal(out[0], soft)
    detail = out[100] - soft
    assert np.abs(detail).mean() > 1  # the real net sharpens
    # 250 % of the same detail, within the 8-bit rounding of both results
    want = np.clip(soft + 2.5 * detail, 0, 255)
    assert np.abs(out[250] - want).max() <= 2


def test_denoise_runs_the_installed_net_by_default(nets_gimp: Gimp3Chroot) -> None:
    """Denoise with its default settings (method: the trained network) on a noisy photo crop:
    a "Denoise" layer above the source, much cleaner, the source untouched; Strength 40 %
    removes clearly less of the noise."""
    from PIL import Image

    photo = Image.open(Path(__file__).resolve().parents[2] / "shared/data/dip/denoising/F16_GT.png").convert("RGB")
    left, top = photo.width // 2 - SIZE // 2, photo.height // 2 - SIZE // 2
    clean = np.asarray(photo.crop((left, top, left + SIZE, top + SIZE)), np.float64)
    noisy = np.clip(clean + np.random.default_rng(3).normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    nets_gimp.to_host(f"{EXCHANGE}/noisy.raw").write_bytes(noisy.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("noisy.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (0, 0))
        facts["status"], _ = run_for_values("plug-in-neural-restore-denoise", image, layer, device="cpu")
        facts["names"] = [l.get_name() for l in image.get_layers()]
        dump_layer(image.get_layers()[0], "denoised.raw", "R'G'B' u8")
        facts["weak"], _ = run_for_values("plug-in-neural-restore-denoise", image, layer, device="cpu",
                                          strength=40)
        dump_layer(image.get_layers()[-2], "denoised-weak.raw", "R'G'B' u8")  # right above the source
        dump_layer(layer, "noisy-after.raw", "R'G'B' u8")
        image.delete()
    """, models=None)
    assert facts["status"] == "success" and facts["weak"] == "success", facts
    assert facts["names"] == ["Denoise", "Source"]
    assert nets_gimp.to_host(f"{EXCHANGE}/noisy-after.raw").read_bytes() == noisy.tobytes()
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/denoised.raw").read_bytes(), np.uint8).reshape(SIZE, SIZE, 3)

    def psnr(a: np.ndarray) -> float:
        return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - clean) ** 2))

    assert psnr(out) > psnr(noisy) + 5.0
    weak = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/denoised-weak.raw").read_bytes(), np.uint8).reshape(SIZE, SIZE, 3)
    removed = {name: np.sqrt(np.mean((result.astype(np.float64) - noisy) ** 2)) for name, result in
               (("default", out), ("weak", weak))}
    assert removed["weak"] < 0.8 * removed["default"]


def test_remove_jpeg_artifacts_runs_the_installed_net_by_default(nets_gimp: Gimp3Chroot) -> None:
    """Remove JPEG Artifacts with its default settings (method: the trained network) on a photo
    crop saved as JPEG q 10 and opened: a "JPEG artifacts removed" layer above the source,
    closer to the original than the JPEG, the source untouched."""
    import io

    from PIL import Image

    photo = Image.open(Path(__file__).resolve().parents[2] / "shared/data/dip/denoising/F16_GT.png").convert("RGB")
    left, top = photo.width // 2 - SIZE // 2, photo.height // 2 - SIZE // 2
    clean = photo.crop((left, top, left + SIZE, top + SIZE))
    buffer = io.BytesIO()
    clean.save(buffer, "JPEG", quality=10)
    blocky = np.asarray(Image.open(buffer).convert("RGB"), np.uint8)
    nets_gimp.to_host(f"{EXCHANGE}/blocky.raw").write_bytes(blocky.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("blocky.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (0, 0))
        facts["status"], _ = run_for_values("plug-in-neural-restore-remove-jpeg-artifacts", image, layer,
                                            device="cpu")
        facts["names"] = [l.get_name() for l in image.get_layers()]
        dump_layer(image.get_layers()[0], "dejpeg.raw", "R'G'B' u8")
        dump_layer(layer, "blocky-after.raw", "R'G'B' u8")
        image.delete()
    """, models=None)
    assert facts["status"] == "success", facts
    assert facts["names"] == ["JPEG artifacts removed", "Source"]
    assert nets_gimp.to_host(f"{EXCHANGE}/blocky-after.raw").read_bytes() == blocky.tobytes()
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/dejpeg.raw").read_bytes(), np.uint8).reshape(SIZE, SIZE, 3)
    truth = np.asarray(clean, np.float64)

    def psnr(a: np.ndarray) -> float:
        return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - truth) ** 2))

    assert psnr(out) > psnr(blocky) + 0.5  # 48², q 10: +0.97 dB with the first shipped net


def test_remove_jpeg_artifacts_keeps_to_an_opened_jpegs_tables(nets_gimp: Gimp3Chroot) -> None:
    """A photo crop saved at JPEG quality 95 and opened in GIMP (File > Open: GIMP's loader
    records the sampling and quality in the "jpeg-settings" parasite): Remove JPEG Artifacts
    sends those tables, so the result stays at what the JPEG says (the net alone smooths a
    good JPEG); the same image with the parasite removed gets the net alone. The parasite's
    tables, as the plug-in reads them, are the file's."""
    from PIL import Image

    from engine.jpeg_consistency import parse_tables, tables_from_pillow
    from gimp_plugin.neural_restore.filters import jpeg_tables_text

    photo = Image.open(Path(__file__).resolve().parents[2] / "shared/data/dip/restoration/kate.png").convert("RGB")
    clean = photo.crop((100, 60, 196, 140))  # 96×80
    path = nets_gimp.to_host(f"{EXCHANGE}/good.jpg")
    clean.save(path, "JPEG", quality=95)
    facts = run_in_gimp(nets_gimp, """
        from gi.repository import Gio
        results = {}
        for keep in (True, False):
            image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(X + "/good.jpg"))
            layer = image.get_layers()[0]
            parasite = image.get_parasite("jpeg-settings")
            if keep:
                facts["parasite"] = None if parasite is None else list(bytearray(parasite.get_data()))
            else:
                image.detach_parasite("jpeg-settings")
            facts["status_%s" % keep], _ = run_for_values("plug-in-neural-restore-remove-jpeg-artifacts",
                                                          image, layer, device="cpu")
            dump_layer(image.get_layers()[0], "good-%s.raw" % keep, "R'G'B' u8")
            image.delete()
    """, models=None)
    assert facts["status_True"] == facts["status_False"] == "success", facts
    assert facts["parasite"], "GIMP's JPEG loader left no jpeg-settings parasite"
    sent = parse_tables(jpeg_tables_text(bytes(facts["parasite"]), (0, 0)))
    with Image.open(path) as img:
        from_file = parse_tables(tables_from_pillow(img))
    assert sent.sampling == from_file.sampling
    assert np.array_equal(sent.luma, from_file.luma) and np.array_equal(sent.chroma, from_file.chroma)
    truth = np.asarray(clean, np.float64)
    jpeg = np.asarray(Image.open(path).convert("RGB"), np.float64)

    def psnr(a: np.ndarray) -> float:
        return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - truth) ** 2))

    def result(keep: bool) -> np.ndarray:
        raw = nets_gimp.to_host(f"{EXCHANGE}/good-{keep}.raw").read_bytes()
        return np.frombuffer(raw, np.uint8).reshape(80, 96, 3)

    # Measured by the engine on the host: JPEG 42.38 dB, the net alone 41.26, kept 42.90.
    assert psnr(result(True)) > psnr(result(False)) + 1.0
    assert psnr(result(True)) > psnr(jpeg) - 0.5


def test_upscale_of_an_opened_jpeg_removes_its_artifacts_first(nets_gimp: Gimp3Chroot) -> None:
    """Upscale ×2 with its defaults on a photo opened from a quality-50 JPEG (the crop at half
    size): the JPEG's artefacts are removed first (its tables go with it), which comes closer
    to the full-size photo than enlarging the JPEG as it is ("Keep")."""
    from PIL import Image

    from onnx_export import degrade

    photo = Image.open(Path(__file__).resolve().parents[2] / "shared/data/dip/restoration/kate.png").convert("RGB")
    truth = np.asarray(photo.crop((100, 60, 196, 140)), np.float32) / 255.0  # 96×80
    small = degrade.bicubic_downscale(truth, 2)
    path = nets_gimp.to_host(f"{EXCHANGE}/small.jpg")
    Image.fromarray((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path, "JPEG", quality=50)
    facts = run_in_gimp(nets_gimp, """
        from gi.repository import Gio
        for choice in ("auto", "keep"):
            image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(X + "/small.jpg"))
            facts["status_" + choice], values = run_for_values("plug-in-neural-restore-upscale", image,
                                                               image.get_layers()[0], device="cpu",
                                                               **{"jpeg-artifacts": choice})
            dump_layer(values[0].get_layers()[0], "big-%s.raw" % choice, "R'G'B' u8")
            values[0].delete()
            image.delete()
    """, models=None)
    assert facts["status_auto"] == facts["status_keep"] == "success", facts
    from onnx_export.data import psnr

    def result(choice: str) -> np.ndarray:
        raw = nets_gimp.to_host(f"{EXCHANGE}/big-{choice}.raw").read_bytes()
        return np.frombuffer(raw, np.uint8).reshape(80, 96, 3).astype(np.float32) / 255.0

    assert psnr(result("auto"), truth, 2, y_only=True) > psnr(result("keep"), truth, 2, y_only=True) + 0.3


def test_inpaint_selection_fills_thin_scratches_with_the_installed_net_by_default(nets_gimp: Gimp3Chroot) -> None:
    """Inpaint Selection with its default settings (method: texture from the image, whose
    thin parts are the trained network's) on a photo crop with two scratches selected: an
    "Inpaint" layer above the source that keeps every unselected pixel and fills the
    scratches better than the smooth fill the network starts from."""
    from engine.fill import smooth_fill
    from tests.test_inpaint_net import _photo

    truth = np.round(_photo(SIZE, top=150, left=150) * 255).astype(np.uint8)
    nets_gimp.to_host(f"{EXCHANGE}/scratched.raw").write_bytes(truth.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("scratched.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (64, 64), (4, 3))
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 4 + 30, 3, 5, 64)
        image.select_rectangle(Gimp.ChannelOps.ADD, 4, 3 + 20, 64, 6)
        facts["status"], _ = run_for_values("plug-in-neural-restore-inpaint-selection", image, layer, device="cpu")
        facts["names"] = [l.get_name() for l in image.get_layers()]
        dump_layer(image.get_layers()[0], "inpainted.raw", "R'G'B' u8")
        dump_layer(layer, "scratched-after.raw", "R'G'B' u8")
        image.delete()
    """, models=None)
    assert facts["status"] == "success", facts
    assert facts["names"] == ["Inpaint", "Source"]
    assert nets_gimp.to_host(f"{EXCHANGE}/scratched-after.raw").read_bytes() == truth.tobytes()
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/inpainted.raw").read_bytes(), np.uint8).reshape(SIZE, SIZE, 3)
    hole = np.zeros((SIZE, SIZE), bool)
    hole[:, 30:35] = True
    hole[20:26, :] = True
    np.testing.assert_array_equal(out[~hole], truth[~hole])

    def psnr(a: np.ndarray) -> float:
        return 10 * np.log10(255.0 ** 2 / np.mean((a[hole].astype(np.float64) - truth[hole]) ** 2))

    fill = np.round(smooth_fill(truth.astype(np.float32) / 255, hole) * 255)
    assert psnr(out) > psnr(fill) + 1.0


def test_inpaint_selection_copies_texture_into_a_wide_selection_by_default(nets_gimp: Gimp3Chroot) -> None:
    """Inpaint Selection with its default settings (method: texture from the image) on a
    repeating 16-bit pattern with a block selected: an "Inpaint" layer that keeps every
    unselected pixel and continues the pattern into the block (a smooth fill would leave a
    blur there)."""
    from tests.test_patch_fill import _pattern

    truth = np.round(_pattern(SIZE, SIZE, 3) * 65535).astype("<u2")
    nets_gimp.to_host(f"{EXCHANGE}/pattern.raw").write_bytes(truth.tobytes())
    facts = run_in_gimp(nets_gimp, """
        image, layer = make_image("pattern.raw", "R'G'B' u16", Gimp.ImageType.RGB_IMAGE, (64, 64), (0, 0))
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 24, 18, 14)
        facts["status"], _ = run_for_values("plug-in-neural-restore-inpaint-selection", image, layer)
        facts["names"] = [l.get_name() for l in image.get_layers()]
        dump_layer(image.get_layers()[0], "patched.raw", "R'G'B' u16")
        dump_layer(layer, "pattern-after.raw", "R'G'B' u16")
        image.delete()
    """, models=None)
    assert facts["status"] == "success", facts
    assert facts["names"] == ["Inpaint", "Source"]
    out = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/patched.raw").read_bytes(), "<u2").reshape(SIZE, SIZE, 3)
    # The source as GIMP holds it (a new u16 image's precision may round the raw values).
    source = np.frombuffer(nets_gimp.to_host(f"{EXCHANGE}/pattern-after.raw").read_bytes(), "<u2").reshape(SIZE, SIZE, 3)
    assert np.abs(source.astype(np.int64) - truth).max() <= 256
    hole = np.zeros((SIZE, SIZE), bool)
    hole[24:38, 20:38] = True
    np.testing.assert_array_equal(out[~hole], source[~hole])
    error = out[hole].astype(np.float64) - source[hole]
    # The copies are exact (~70 dB); a smooth fill of this pattern scores ~14 dB. (30, not
    # more: OpenCV's fill is not bit-reproducible, see tests/test_patch_fill.py.)
    assert 10 * np.log10(65535.0 ** 2 / np.mean(error ** 2)) > 30.0


def test_damaged_model_fails_cleanly_in_gimp(nets_gimp: Gimp3Chroot, tmp_path: Path) -> None:
    broken = ENGINE_VENV.parent / "broken-nets"
    shutil.rmtree(broken, ignore_errors=True)
    broken.mkdir()
    (broken / "sharpen.onnx").write_bytes(b"\0" * 64)
    nets_gimp.bind(broken)
    nets_gimp.to_host(f"{EXCHANGE}/sharp.raw").write_bytes(_pixels(2, 3).tobytes())
    out = nets_gimp.to_host(f"{EXCHANGE}/facts.json")
    out.unlink(missing_ok=True)
    code = PROLOGUE.format(exchange=EXCHANGE, size=SIZE) + textwrap.dedent("""
        image, layer = make_image("sharp.raw", "R'G'B' u8", Gimp.ImageType.RGB_IMAGE, (48, 48), (0, 0))
        facts["status"], _ = run_for_values("plug-in-neural-restore-sharpen", image, layer)
        facts["message"] = Gimp.get_pdb().get_last_error()
        facts["layers"] = describe(image)
        image.delete()
        with open(X + "/facts.json", "w") as h:
            json.dump(facts, h)
    """)
    nets_gimp.run_batch(code, timeout=300, env={"NEURAL_RESTORE_MODELS": str(broken)})
    facts = json.loads(out.read_text())
    assert facts["status"] == "execution-error"
    assert "sharpen.onnx is damaged" in facts["message"] and "reinstall" in facts["message"]
    assert [layer["name"] for layer in facts["layers"]] == ["Source"]
