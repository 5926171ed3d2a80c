"""engine/imageio.py: formats, bit depth kept, masks, clear errors."""
import numpy as np
import pytest
from PIL import Image

from engine.errors import BadInput
from engine.imageio import FileMetadata, from_float, read_image, read_mask, to_float, write_image


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png8_roundtrip_is_exact(tmp_path, channels):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 11, channels), dtype=np.uint8)
    write_image(tmp_path / "a.png", to_float(pixels), "u8")
    loaded = read_image(tmp_path / "a.png")
    assert loaded.sample_type == "u8"
    np.testing.assert_array_equal(from_float(loaded.pixels, "u8"), pixels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_is_kept(tmp_path, channels, suffix):
    pixels = np.random.default_rng(1).integers(0, 65536, (7, 5, channels), dtype=np.uint16)
    path = tmp_path / f"a{suffix}"
    write_image(path, to_float(pixels), "u16")
    loaded = read_image(path)
    assert loaded.sample_type == "u16"
    np.testing.assert_array_equal(from_float(loaded.pixels, "u16"), pixels)


def test_float_tiff_is_kept(tmp_path):
    pixels = np.random.default_rng(2).random((6, 4, 3), dtype=np.float32) * 1.5
    write_image(tmp_path / "f.tif", pixels, "f32")
    loaded = read_image(tmp_path / "f.tif")
    assert loaded.sample_type == "f32"
    np.testing.assert_array_equal(loaded.pixels, pixels)


def test_palette_and_jpeg_inputs(tmp_path):
    grey_palette = Image.new("P", (8, 6), 3)  # the default palette's entry 3 is grey
    grey_palette.save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").pixels.shape == (6, 8, 1)
    colour_palette = Image.new("RGB", (8, 6), (250, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    colour_palette.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels.shape == (6, 8, 3)
    Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "j.jpg")
    assert read_image(tmp_path / "j.jpg").pixels.shape == (6, 8, 3)


def test_mask_white_means_fill(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    hole = read_mask(tmp_path / "m.png", (6, 8))
    assert hole.sum() == 6 and hole[2:4, 3:6].all()
    with pytest.raises(BadInput, match="same size"):
        read_mask(tmp_path / "m.png", (7, 8))


def test_bad_files_are_bad_input(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(BadInput, match="cannot read"):
        read_image(tmp_path / "x.png")
    with pytest.raises(BadInput, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(BadInput, match="does not exist"):
        write_image(tmp_path / "no" / "dir.png", np.zeros((2, 2, 3), np.float32), "u8")
    with pytest.raises(BadInput, match="cannot write"):
        write_image(tmp_path / "a.xyz", np.zeros((2, 2, 3), np.float32), "u8")


def _icc_profile(colour_space: bytes) -> bytes:
    """A real profile (Little CMS's sRGB) for RGB; else a 132-byte ICC header naming
    ``colour_space``: all the reader and writer look at (they carry a profile, never apply it)."""
    if colour_space == b"RGB ":
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    header = bytearray(132)
    header[0:4] = (132).to_bytes(4, "big")
    header[12:16] = b"mntr"
    header[16:20] = colour_space
    header[36:40] = b"acsp"
    return bytes(header)


@pytest.mark.parametrize(("suffix", "sample_type", "channels"), [
    (".png", "u8", 3), (".png", "u8", 4), (".png", "u16", 3), (".png", "u16", 1), (".tif", "u16", 3),
    (".tif", "f32", 4), (".jpg", "u8", 3), (".jpg", "u8", 4), (".webp", "u8", 3), (".png", "u8", 2)])
def test_colour_profile_is_carried_through(tmp_path, suffix, sample_type, channels):
    profile = _icc_profile(b"GRAY" if channels <= 2 else b"RGB ")
    pixels = np.random.default_rng(3).random((6, 5, channels), dtype=np.float32)
    write_image(tmp_path / f"a{suffix}", pixels, sample_type, FileMetadata(icc_profile=profile))
    loaded = read_image(tmp_path / f"a{suffix}")
    assert loaded.metadata.icc_profile == profile
    assert loaded.sample_type == sample_type
    if suffix in (".png", ".tif"):  # lossless: the pixels are as without a profile
        write_image(tmp_path / f"b{suffix}", pixels, sample_type)
        assert read_image(tmp_path / f"b{suffix}").metadata == FileMetadata()
        np.testing.assert_array_equal(loaded.pixels, read_image(tmp_path / f"b{suffix}").pixels)


def test_a_profile_for_other_channels_is_dropped(tmp_path):
    # A CMYK JPEG's profile does not describe the RGB it is read as, nor an RGB profile a grey image.
    Image.new("CMYK", (8, 6), (10, 200, 30, 0)).save(tmp_path / "c.jpg", icc_profile=_icc_profile(b"CMYK"))
    assert read_image(tmp_path / "c.jpg").metadata.icc_profile is None
    write_image(tmp_path / "g.png", np.zeros((4, 4, 1), np.float32), "u8", FileMetadata(icc_profile=_icc_profile(b"RGB ")))
    assert read_image(tmp_path / "g.png").metadata.icc_profile is None
    assert Image.open(tmp_path / "g.png").info.get("icc_profile") is None


@pytest.mark.parametrize(("suffix", "sample_type"), [(".jpg", "u8"), (".png", "u8"), (".png", "u16"), (".webp", "u8")])
def test_exif_is_carried_upright_with_the_results_size(tmp_path, suffix, sample_type):
    # A phone photo stored sideways: 40×30 pixels, orientation 6 ("turn 90° clockwise").
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "PhoneMaker"
    details = exif.get_ifd(0x8769)
    details[0x9003] = "2026:01:02 03:04:05"  # date taken
    details[0xA002], details[0xA003] = 40, 30
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "phone.jpg", exif=exif)
    loaded = read_image(tmp_path / "phone.jpg")
    assert loaded.pixels.shape == (40, 30, 3)  # turned upright on reading
    bigger = np.repeat(np.repeat(loaded.pixels, 2, axis=0), 2, axis=1)  # as an ×2 upscale would
    write_image(tmp_path / f"out{suffix}", bigger, sample_type, loaded.metadata)
    with Image.open(tmp_path / f"out{suffix}") as written:
        assert written.size == (60, 80)
        record = written.getexif()
        assert record[0x010F] == "PhoneMaker" and record[0x0112] == 1  # upright: viewers must not turn it again
        details = record.get_ifd(0x8769)
        assert details[0x9003] == "2026:01:02 03:04:05"
        assert (details[0xA002], details[0xA003]) == (60, 80)


def test_a_damaged_exif_record_is_dropped_not_fatal(tmp_path):
    write_image(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.float32), "u8", FileMetadata(exif=b"Exif\0\0garbage"))
    assert read_image(tmp_path / "a.jpg").metadata.exif is None


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_results_are_written_at_quality_95(tmp_path, suffix):
    # Pillow's WebP default (quality 80) would put back some of the blur a filter removed.
    y, x = np.mgrid[0:64, 0:64]
    pixels = (0.5 + 0.4 * np.sin(x / 2.0) * np.cos(y / 3.0))[..., None].repeat(3, axis=2).astype(np.float32)
    write_image(tmp_path / f"ours{suffix}", pixels, "u8")
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(tmp_path / f"q95{suffix}", quality=95)
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(tmp_path / f"q80{suffix}", quality=80)
    errors = {name: float(np.abs(read_image(tmp_path / f"{name}{suffix}").pixels - pixels).mean())
              for name in ("ours", "q95", "q80")}
    assert errors["ours"] == pytest.approx(errors["q95"], abs=1e-6) and errors["ours"] < errors["q80"]
