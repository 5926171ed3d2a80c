"""Remove JPEG Artifacts kept to the JPEG's quantisation tables (engine.jpeg_consistency), the
CLI reading them from a JPEG input, and the plug-in reading them from GIMP's parasite."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin"))

from engine import jpeg_consistency as jc  # noqa: E402
from engine import ops  # noqa: E402
from engine.errors import BadInput  # noqa: E402
from neural_restore.filters import jpeg_tables_text  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _photo(width: int = 96, height: int = 80, left: int = 100, top: int = 60) -> Image.Image:
    photo = Image.open(SHARED / "dip" / "restoration" / "kate.png").convert("RGB")
    return photo.crop((left, top, left + width, top + height))


def _jpeg(image: Image.Image, quality: int, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _float(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, np.float32) / 255.0
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


# -- tables ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quality", [1, 10, 25, 50, 75, 90, 95, 100])
def test_ijg_tables_are_the_ones_libjpeg_writes(quality: int) -> None:
    tables = _jpeg(_photo(), quality).quantization
    np.testing.assert_array_equal(jc.ijg_table(jc.IJG_LUMA, quality).ravel(), tables[0])
    np.testing.assert_array_equal(jc.ijg_table(jc.IJG_CHROMA, quality).ravel(), tables[1])


def test_tables_from_a_jpeg_file_round_trip_and_name_their_quality() -> None:
    img = _jpeg(_photo(), 90)
    tables = jc.parse_tables(jc.tables_from_pillow(img))
    assert tables.sampling == ((2, 2), (1, 1), (1, 1)) and tables.origin == (0, 0)
    np.testing.assert_array_equal(tables.luma.ravel(), img.quantization[0])
    assert tables.describe() == "quality ≈ 90"
    assert jc.parse_tables("sampling=2x2,1x1,1x1 quality=90 origin=3,5").origin == (3, 5)
    grey = jc.parse_tables(jc.tables_from_pillow(_jpeg(_photo().convert("L"), 50)))
    assert grey.sampling == ((1, 1),) and grey.chroma is None
    png = io.BytesIO()
    _photo().save(png, "PNG")
    assert jc.tables_from_pillow(Image.open(png)) == ""
    for nothing in ("", "none", "file"):
        assert jc.parse_tables(nothing) is None


@pytest.mark.parametrize("text, message", [
    ("luma=1,2", "sampling"),
    ("sampling=2x2,1x1,1x1 luma=" + ",".join(["2"] * 64), "chroma"),
    ("sampling=2x2,1x1,1x1 luma=1,2,3 chroma=1", "64 values"),
    ("sampling=9x1 quality=50", "sampling factor"),
    ("sampling=1x1,1x1 quality=50", "greyscale"),
    ("sampling=1x1 quality=0", "1–100"),
    ("sampling=1x1 quality=50 quality=60", "each once"),
    ("sampling=1x1 colour=yes", "cannot read"),
])
def test_malformed_tables_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        jc.parse_tables(text)


def test_a_malformed_tables_text_fails_before_the_net_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_run_net", lambda *a, **k: pytest.fail("the net ran"))
    with pytest.raises(BadInput, match="jpeg_tables"):
        ops.run_op("dejpeg", np.zeros((16, 16, 3), np.float32), None, {"jpeg_tables": "sampling=1x1"})


# -- the grid ----------------------------------------------------------------------------------

@pytest.mark.parametrize("left, top", [(0, 0), (3, 5), (8, 1), (13, 14)])
def test_the_block_grid_is_found_in_a_crop_and_the_given_origin_is_checked(left: int, top: int) -> None:
    img = _jpeg(_photo(160, 144, 80, 40), 75)
    tables = jc.parse_tables(jc.tables_from_pillow(img).replace(" origin=0,0", ""))
    luma = jc._channel(_float(img)[top:, left:], 0)
    expected = ((-top) % 8, (-left) % 8)
    assert jc.find_grid(luma, tables.luma, None) == expected
    assert jc.find_grid(luma, tables.luma, (left, top)) == expected
    assert jc.find_grid(luma, tables.luma, (left + 3, top)) == expected  # a wrong origin is not believed


def test_pixels_that_no_longer_fit_the_tables_are_left_as_restored() -> None:
    img = _jpeg(_photo(160, 144, 80, 40), 75)
    resized = img.resize((150, 130), Image.Resampling.BICUBIC)
    tables = jc.parse_tables(jc.tables_from_pillow(img))
    assert jc.find_grid(jc._channel(_float(resized), 0), tables.luma, None) is None
    restored = _float(resized) * 0.9
    out, note = jc.make_consistent(restored, _float(resized), tables)
    assert out is restored and "no longer fit" in note
    out, note = jc.make_consistent(restored[:, :, :1], _float(resized)[:, :, :1], tables)
    assert out is restored[:, :, :1] or "colour JPEG" in note


# -- the consistency step ------------------------------------------------------------------------

def _luma_coefficients(pixels: np.ndarray) -> np.ndarray:
    luma = jc._channel(pixels, 0)
    h, w = luma.shape[0] // 8 * 8, luma.shape[1] // 8 * 8
    return jc._blocks_dct(luma[:h, :w])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), quality=st.sampled_from([30, 75, 95]), strength=st.floats(0.0, 0.04))
def test_every_luma_coefficient_ends_within_its_quantisation_interval(seed: int, quality: int,
                                                                      strength: float) -> None:
    """Whatever the restoration did (here: noise on a mid-tone photo, weak enough that
    nothing clips), the result's luma coefficients lie where the JPEG says the photo's did."""
    img = _jpeg(Image.fromarray((np.asarray(_photo(64, 48)) * 0.5 + 64).astype(np.uint8)), quality)
    decoded = _float(img)
    tables = jc.parse_tables(jc.tables_from_pillow(img))
    restored = np.clip(decoded + np.random.default_rng(seed).normal(0, strength, decoded.shape), 0, 1)
    out, note = jc.make_consistent(restored.astype(np.float32), decoded, tables)
    assert "kept consistent" in note
    stored = np.round(_luma_coefficients(decoded) / tables.luma)
    distance = np.abs(_luma_coefficients(out) - stored * tables.luma) / tables.luma
    assert distance.max() <= 0.5 + 0.02  # (8-bit-free floats; RGB ↔ YCbCr round off a little)


def test_the_jpeg_itself_comes_back_unchanged() -> None:
    img = _jpeg(_photo(), 50)
    decoded = _float(img)
    out, _ = jc.make_consistent(decoded, decoded, jc.parse_tables(jc.tables_from_pillow(img)))
    assert np.abs(out - decoded).max() < 2.5 / 255


def test_alpha_and_the_pixels_outside_whole_blocks_are_kept() -> None:
    img = _jpeg(_photo(90, 75), 95)
    decoded = _float(img)
    alpha = np.linspace(0, 1, 90 * 75, dtype=np.float32).reshape(75, 90, 1)
    restored = np.concatenate([np.clip(decoded * 0.97, 0, 1), alpha], axis=2)
    out, _ = jc.make_consistent(restored, np.concatenate([decoded, alpha], axis=2),
                                jc.parse_tables(jc.tables_from_pillow(img)))
    np.testing.assert_array_equal(out[:, :, 3], alpha[:, :, 0])
    np.testing.assert_array_equal(out[72:, :, :3], restored[72:, :, :3])  # 75 rows: 9 whole blocks
    assert not np.array_equal(out[:72, :88, :3], restored[:72, :88, :3])


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_the_shipped_net_kept_to_a_good_jpeg_stays_as_good_as_the_jpeg(monkeypatch: pytest.MonkeyPatch,
                                                                       subsampling: int) -> None:
    """Quality 95: the network alone smooths detail the JPEG kept (kate 96×80, 4:2:0: JPEG
    42.38 dB, net 41.26); kept to the tables it is as good as the JPEG or better (42.90)."""
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    truth = _float(_photo())
    img = _jpeg(_photo(), 95, subsampling=subsampling)
    jpeg = _float(img)
    tables = jc.tables_from_pillow(img)
    alone = ops.run_op("dejpeg", jpeg, None, {"device": "cpu", "passes": 1})[0].pixels
    kept = ops.run_op("dejpeg", jpeg, None, {"device": "cpu", "passes": 1, "jpeg_tables": tables})[0].pixels
    assert _psnr(kept, truth) > _psnr(alone, truth) + 1.0
    assert _psnr(kept, truth) > _psnr(jpeg, truth) - 0.3


def test_at_low_quality_the_tables_do_not_undo_the_net(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    truth = _float(_photo())
    img = _jpeg(_photo(), 20)
    jpeg = _float(img)
    alone = ops.run_op("dejpeg", jpeg, None, {"device": "cpu", "passes": 1})[0].pixels
    kept = ops.run_op("dejpeg", jpeg, None, {"device": "cpu", "passes": 1,
                                             "jpeg_tables": jc.tables_from_pillow(img)})[0].pixels
    assert _psnr(kept, truth) >= _psnr(alone, truth) - 0.02
    assert _psnr(kept, truth) > _psnr(jpeg, truth) + 0.5


def test_the_dip_method_is_kept_to_the_tables_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.dip import tasks

    img = _jpeg(_photo(), 95)
    jpeg = _float(img)
    smooth = np.asarray(Image.fromarray((jpeg * 255).astype(np.uint8)).resize((24, 20)).resize((96, 80)),
                        np.float32) / 255.0
    monkeypatch.setattr(tasks, "dejpeg", lambda image, **kwargs: smooth)
    params = {"device": "cpu", "method": "dip", "iterations": 5}
    alone = ops.run_op("dejpeg", jpeg, None, params)[0].pixels
    kept = ops.run_op("dejpeg", jpeg, None, {**params, "jpeg_tables": jc.tables_from_pillow(img)})[0].pixels
    np.testing.assert_allclose(alone, smooth)
    assert _psnr(kept, jpeg) > _psnr(alone, jpeg) + 10


# -- the CLI reads a JPEG's tables; the plug-in GIMP's parasite ------------------------------------

def test_the_cli_keeps_to_a_jpeg_inputs_tables_unless_told_none(tmp_path: Path) -> None:
    source = tmp_path / "good.jpg"
    _photo().save(source, "JPEG", quality=95)
    truth = _float(_photo())
    outputs = {}
    for name, extra in (("file", []), ("none", ["--jpeg-tables", "none"])):
        outputs[name] = tmp_path / f"{name}.png"
        done = subprocess.run([sys.executable, "-m", "engine", "dejpeg", str(source), "-o", str(outputs[name]),
                               "--passes", "1", "--device", "cpu", "--quiet", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert _psnr(_float(Image.open(outputs["file"])), truth) > _psnr(_float(Image.open(outputs["none"])), truth) + 1.0


def _parasite(space: int, quality: int, sampling: list[tuple[int, int]], tables: list[list[int]]) -> bytes:
    data = bytearray([space, quality, len(sampling), len(tables)])
    for h, v in sampling:
        data += bytes([h, v])
    for table in tables:
        for step in table:
            data += bytes([step // 256, step % 256])
    return bytes(data)


def test_the_plugin_reads_gimps_jpeg_settings_parasite() -> None:
    standard = _parasite(3, 90, [(2, 2), (1, 1), (1, 1)], [])
    assert jpeg_tables_text(standard, (10, -3)) == "sampling=2x2,1x1,1x1 quality=90 origin=10,61"
    luma, chroma = list(range(1, 65)), [300] * 64
    custom = jc.parse_tables(jpeg_tables_text(_parasite(3, 87, [(2, 1), (1, 1), (1, 1)], [luma, chroma]), (0, 0)))
    assert custom.sampling == ((2, 1), (1, 1), (1, 1)) and custom.origin == (0, 0)
    np.testing.assert_array_equal(custom.luma.ravel(), luma)
    np.testing.assert_array_equal(custom.chroma.ravel(), chroma)
    grey = jc.parse_tables(jpeg_tables_text(_parasite(1, 75, [(1, 1)], []), (0, 0)))
    assert grey.chroma is None and grey.describe() == "quality ≈ 75"
    assert jpeg_tables_text(_parasite(4, 90, [(1, 1)] * 4, []), (0, 0)) == ""  # CMYK
    assert jpeg_tables_text(standard[:5], (0, 0)) == ""  # cut short
    assert jpeg_tables_text(_parasite(3, 0, [(2, 2), (1, 1), (1, 1)], []), (0, 0)) == ""  # nothing known
    assert jpeg_tables_text(None, (0, 0)) == ""


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_turned_jpegs_tables_and_grid_follow_its_exif_orientation(tmp_path: Path, orientation: int) -> None:
    """The CLI turns a photo upright by its EXIF orientation; the tables (transposed for a
    quarter turn) and the grid's origin it sends must be those of the turned pixels: the
    origin is where the grid search finds the blocks."""
    from engine.imageio import read_image

    photo = _photo(101, 77)  # neither side a multiple of 8 or 16
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    photo.save(path, "JPEG", quality=70, exif=exif.tobytes(), subsampling=1)  # 4:2:2: not symmetric
    loaded = read_image(path)
    tables = jc.parse_tables(loaded.jpeg_tables)
    luma = jc._channel(loaded.pixels, 0)
    assert jc.find_grid(luma, tables.luma, None) == ((-tables.origin[1]) % 8, (-tables.origin[0]) % 8)
    quarter = orientation in (5, 6, 7, 8)
    assert tables.sampling[0] == ((1, 2) if quarter else (2, 1))
    with Image.open(path) as img:
        stored = np.array(img.quantization[0]).reshape(8, 8)
    np.testing.assert_array_equal(tables.luma, stored.T if quarter else stored)
    out, note = jc.make_consistent(loaded.pixels, loaded.pixels, tables)
    assert "kept consistent" in note and "colour planes were left" not in note


def test_the_estimate_counts_the_tables_step() -> None:
    params = {"device": "cpu", "passes": 1}
    alone = ops.estimate_seconds("dejpeg", params, 2000, 1500)
    kept = ops.estimate_seconds("dejpeg", {**params, "jpeg_tables": "sampling=1x1 quality=90"}, 2000, 1500)
    assert alone is not None
    assert kept == pytest.approx(alone + 3 * ops.JPEG_TABLES_SECONDS_PER_MEGAPIXEL)


# -- Upscale removes a JPEG's artefacts first ----------------------------------------------------

def _low_resolution_jpeg(quality: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A photo crop (96×80), its ×2-smaller version saved as JPEG: (truth, JPEG pixels, tables)."""
    from onnx_export import degrade

    truth = _float(_photo())
    small = degrade.bicubic_downscale(truth, 2)
    img = _jpeg(Image.fromarray((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)), quality)
    return truth, _float(img), jc.tables_from_pillow(img)


def test_upscale_of_a_jpeg_removes_its_artifacts_first_when_its_tables_are_known(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """×2 of a quality-50 JPEG with the shipped nets: the JPEG net (kept to the tables) before
    the RDN comes closer to the full-size photo than the RDN alone (held-out split: +0.76 dB Y
    at q 50, and better at every quality 30–95 measured)."""
    from onnx_export.data import psnr

    monkeypatch.delenv("NEURAL_RESTORE_MODELS", raising=False)
    truth, jpeg, tables = _low_resolution_jpeg(50)
    params = {"device": "cpu", "passes": 1, "jpeg_tables": tables}
    auto = ops.run_op("upscale", jpeg, None, params)[0].pixels
    kept = ops.run_op("upscale", jpeg, None, {**params, "jpeg_artifacts": "keep"})[0].pixels
    no_tables = ops.run_op("upscale", jpeg, None, {"device": "cpu", "passes": 1})[0].pixels
    np.testing.assert_array_equal(kept, no_tables)  # auto without tables: nothing before the RDN
    assert psnr(auto, truth, 2, y_only=True) > psnr(kept, truth, 2, y_only=True) + 0.3


@pytest.mark.parametrize("choice, tables, first", [("auto", True, True), ("auto", False, False),
                                                   ("remove", False, True), ("keep", True, False)])
def test_upscale_runs_the_jpeg_net_first_as_chosen(monkeypatch: pytest.MonkeyPatch, choice: str, tables: bool,
                                                   first: bool) -> None:
    ran = []
    monkeypatch.setattr(ops, "_run_net", lambda name, image, *a, **k: ran.append(name) or image)
    _, jpeg, text = _low_resolution_jpeg(50)
    params = {"device": "cpu", "jpeg_artifacts": choice, "jpeg_tables": text if tables else ""}
    ops.run_op("upscale", jpeg, None, params)
    assert ran == (["dejpeg", "rdn_x2"] if first else ["rdn_x2"])
    alone = ops.estimate_seconds("upscale", {"device": "cpu", "jpeg_artifacts": "keep"}, 1000, 1000)
    assert (ops.estimate_seconds("upscale", params, 1000, 1000) > alone) == first


def test_the_cli_upscale_of_a_jpeg_removes_its_artifacts_first(tmp_path: Path) -> None:
    truth, jpeg, _ = _low_resolution_jpeg(50)
    source = tmp_path / "small.jpg"
    Image.fromarray((jpeg * 255 + 0.5).astype(np.uint8)).save(source, "JPEG", quality=50)
    outputs = {}
    for choice in ("auto", "keep"):
        outputs[choice] = tmp_path / f"{choice}.png"
        done = subprocess.run([sys.executable, "-m", "engine", "upscale", str(source), "-o", str(outputs[choice]),
                               "--passes", "1", "--device", "cpu", "--quiet", "--jpeg-artifacts", choice],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    auto, keep = (_float(Image.open(outputs[c])) for c in ("auto", "keep"))
    assert not np.array_equal(auto, keep) and auto.shape == keep.shape == truth.shape
