"""The CLI as a user types it: real subprocesses, real files, one clear line on failure."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.imageio import read_image


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.fixture
def noisy_pair(tmp_path, shared_data):
    clean = np.asarray(Image.open(shared_data / "dip/denoising/F16_GT.png").convert("RGB"))[200:248, 200:248]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    return clean / 255.0, noisy / 255.0, tmp_path / "noisy.png"


@pytest.mark.parametrize("method, options", [("dip", ["--iterations", "300", "--seed", "3"]),
                                             ("net", ["--passes", "1"])])
def test_denoise_cli_improves_psnr(noisy_pair, tmp_path, method, options):
    clean, noisy, path = noisy_pair
    result = run_cli("denoise", path, "-o", tmp_path / "out.png", "--method", method, *options)
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr  # the progress report reached the end
    assert ("denoise on CPU" in result.stderr) == (method == "net")
    out = read_image(tmp_path / "out.png").pixels
    assert out.shape == noisy.shape
    assert _psnr(out, clean) > _psnr(noisy, clean) + 2.0


def test_inpaint_cli_keeps_known_pixels_16bit(tmp_path):
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:40, 0:40]
    image = np.stack([x * 1600, y * 1600, (x + y) * 800], axis=2).astype(np.uint16)
    image += rng.integers(0, 50, image.shape, dtype=np.uint16)
    import tifffile
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    mask = np.zeros((40, 40), np.uint8)
    mask[15:25, 12:22] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = run_cli("inpaint", tmp_path / "in.tif", "--mask", tmp_path / "mask.png", "-o", tmp_path / "out.tif",
                     "--method", "dip", "--iterations", "60", "--quiet")
    assert result.returncode == 0, result.stderr
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.uint16
    hole = mask > 0
    np.testing.assert_array_equal(out[~hole], image[~hole])
    assert not np.array_equal(out[hole], image[hole])


@pytest.mark.parametrize("op, output", [("sharpen", "out.png"), ("upscale", "out.jpg")])
def test_the_colour_profile_and_exif_come_through(tmp_path, op, output):
    # A photo tagged with its colour space (here sRGB built by Little CMS; a phone would say
    # Display P3) and its camera's EXIF: the result must carry both, or viewers show other
    # colours and photo libraries lose the date taken.
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    pixels = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95, icc_profile=profile, exif=exif)
    result = run_cli(op, tmp_path / "photo.jpg", "-o", tmp_path / output, "--passes", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / output) as written:
        assert written.info.get("icc_profile") == profile
        assert written.getexif().get(0x010F) == "PhoneMaker"
        assert written.size == ((64, 48) if op == "upscale" else (32, 24))


@pytest.mark.parametrize("args, message", [
    (["denoise", "missing.png", "-o", "out.png"], "input file not found"),
    (["denoise", "{bad}", "-o", "out.png"], "cannot read"),
    (["denoise", "{tiny}", "-o", "out.png"], "at least"),
    (["denoise", "{ok}", "-o", "out.xyz"], "cannot write"),
    (["denoise", "{ok}", "-o", "no/such/dir/out.png"], "does not exist"),
    (["denoise", "{ok}", "-o", "out.png", "--device", "tpu"], "invalid choice"),
    (["denoise", "{ok}", "-o", "out.png", "--iterations", "-4"], "≥ 0"),
    (["inpaint", "{ok}", "-o", "out.png"], "--mask"),
    (["inpaint", "{ok}", "--mask", "{empty_mask}", "-o", "out.png"], "mask is empty"),
    (["inpaint", "{ok}", "--mask", "{tiny}", "-o", "out.png"], "same size"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    Image.new("RGB", (3, 3)).save(tmp_path / "tiny.png")
    Image.new("RGB", (16, 16), (9, 90, 200)).save(tmp_path / "ok.png")
    Image.new("L", (16, 16), 0).save(tmp_path / "empty_mask.png")
    files = {name: tmp_path / f"{name}.png" for name in ("bad", "tiny", "ok", "empty_mask")}
    args = [a.format(**files) if "{" in a else (str(tmp_path / a) if "/" in a or a.endswith((".png", ".xyz")) else a)
            for a in args]
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_cuda_without_gpu_is_clear(tmp_path):
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    Image.new("RGB", (16, 16), (9, 90, 200)).save(tmp_path / "ok.png")
    result = run_cli("denoise", tmp_path / "ok.png", "-o", tmp_path / "out.png", "--device", "cuda")
    assert result.returncode == 2
    assert "error:" in result.stderr and "CUDA" in result.stderr and "Traceback" not in result.stderr


def test_selfcheck():
    result = run_cli("selfcheck")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    # /proc takes no new files, even from root (for whom os.access() always says yes).
    Image.new("RGB", (16, 16), (9, 90, 200)).save(tmp_path / "ok.png")
    result = run_cli("denoise", tmp_path / "ok.png", "-o", "/proc/neural-restore-out.png", "--iterations", "100000")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot write /proc/neural-restore-out.png") and "another output folder" in line


def test_unwritable_log_folder_still_runs_and_says_so_on_stderr(tmp_path):
    import os
    Image.new("RGB", (16, 16), (9, 90, 200)).save(tmp_path / "ok.png")
    env = dict(os.environ, NEURAL_RESTORE_LOG_DIR="/proc/neural-restore-logs")
    result = subprocess.run([sys.executable, "-m", "engine", "denoise", str(tmp_path / "ok.png"), "-o",
                             str(tmp_path / "out.png"), "--iterations", "3", "--quiet"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").is_file()
    assert "cannot write the log file /proc/neural-restore-logs/engine.log" in result.stderr
    assert "Traceback" not in result.stderr



def test_an_upscale_that_memory_cannot_hold_is_refused_before_any_work(tmp_path):
    """The trained nets keep the whole image and its enlargement in memory: an ×8 of a
    600² photo with 300 MB free is refused with the need named, and nothing is written."""
    import os
    Image.new("RGB", (600, 600), (9, 90, 200)).save(tmp_path / "photo.png")
    env = dict(os.environ, NEURAL_RESTORE_MEMORY_BUDGET_MB="300")
    result = subprocess.run([sys.executable, "-m", "engine", "upscale", str(tmp_path / "photo.png"), "-o",
                             str(tmp_path / "big.png"), "--scale", "8"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert "upscale on the enlarged image (600×600 pixels) needs about 1." in result.stderr
    assert "300 MB free" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "big.png").exists()

# -- batches -------------------------------------------------------------------------------------

def _photos(folder, names, size=(40, 48)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, **({"quality": 80} if name.endswith(".jpg") else {}))
    return folder


def test_a_batch_writes_each_result_as_a_single_run_would_and_reports_the_file_that_failed(tmp_path):
    photos = _photos(tmp_path / "in", ["a.png", "b.jpg"])
    (photos / "broken.png").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not an image either: not picked up")
    extra = _photos(tmp_path / "more", ["c.png"])
    result = run_cli("sharpen", photos, extra / "c.png", photos / "a.png", "-o", tmp_path / "out", "--passes", "1")
    assert result.returncode == 2  # one input was bad; the others were written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {photos / 'broken.png'}: cannot read broken.png as an image: "
                      f"cannot identify image file '{photos / 'broken.png'}'"]
    assert f"wrote 3 of 4 results to {tmp_path / 'out'}; failed: {photos / 'broken.png'}" in result.stderr
    assert "[4/4]" in result.stderr and "Traceback" not in result.stderr
    # The same pixels as one file at a time (b.jpg: its own JPEG tables are not a sharpen
    # matter; a PNG result of a JPEG keeps 8 bits).
    for name, out in (("a.png", "a.png"), ("b.jpg", "b.png")):
        single = run_cli("sharpen", photos / name, "-o", tmp_path / f"single-{out}", "--passes", "1", "--quiet")
        assert single.returncode == 0, single.stderr
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / out)),
                                      np.asarray(Image.open(tmp_path / f"single-{out}")))


def test_a_batch_finds_each_inputs_mask_by_name_in_a_folder_of_masks(tmp_path):
    photos = _photos(tmp_path / "in", ["a.png", "b.png", "c.png"])
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, box in (("a", (5, 15)), ("c", (20, 30))):  # b has none
        mask = np.zeros((40, 48), np.uint8)
        mask[box[0]:box[1], box[0]:box[1]] = 255
        Image.fromarray(mask).save(masks / f"{name}.png")
    result = run_cli("inpaint", photos, "--mask", masks, "-o", tmp_path / "out", "--passes", "1", "--quiet")
    assert result.returncode == 2
    assert f"--mask folder {masks} has no image named b (for b.png)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    for name, box in (("a", (5, 15)), ("c", (20, 30))):
        source = np.asarray(Image.open(photos / f"{name}.png"))
        out = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        hole = np.zeros((40, 48), bool)
        hole[box[0]:box[1], box[0]:box[1]] = True
        np.testing.assert_array_equal(out[~hole], source[~hole])  # each got its own hole filled
        assert not np.array_equal(out[hole], source[hole])


@pytest.mark.parametrize("setup, args, message", [
    ("", ["{in}", "{in}/nowhere.png", "-o", "{out}"], "input not found: {in}/nowhere.png"),
    ("", ["{in}", "-o", "{in}", "--format", "jpg"], "would replace it"),
    ("collide", ["{in}", "{other}/a.jpg", "-o", "{out}"], "a.png and a.jpg would both be written to a.png"),
    ("file_out", ["{in}/a.png", "{in}/b.jpg", "-o", "{out}"], "several inputs need an output folder"),
    ("empty", ["{other}", "-o", "{out}"], "holds no images"),
    ("", ["{in}/a.png", "{in}/b.jpg", "-o", "{out}.png"], "out.png names an image, but there are several inputs"),
])
def test_a_batch_is_refused_before_any_work_when_it_cannot_end_well(tmp_path, setup, args, message):
    photos = _photos(tmp_path / "in", ["a.png", "b.jpg"])
    (tmp_path / "other").mkdir()
    if setup == "collide":
        _photos(tmp_path / "other", ["a.jpg"])
    if setup == "file_out":
        (tmp_path / "out").write_text("a file")
    names = {"in": photos, "other": tmp_path / "other", "out": tmp_path / "out"}
    result = run_cli("denoise", *[a.format(**names) for a in args], "--passes", "1")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and message.format(**names) in line
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.jpg"]
    assert not (tmp_path / "out").is_dir() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "out.png").exists()


def test_skip_existing_resumes_a_batch_and_an_existing_folder_takes_a_single_result(tmp_path):
    photos = _photos(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "a.png")  # "done" in an earlier run
    result = run_cli("denoise", photos / "b.png", "-o", out, "--passes", "1", "--quiet")  # cp-like
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "b.png").size == (48, 40)
    (out / "b.png").unlink()
    result = run_cli("denoise", photos, "-o", out, "--passes", "1", "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert "1 already done (--skip-existing)" in result.stderr and "wrote 1 of 1 results" in result.stderr
    assert Image.open(out / "a.png").size == (4, 4) and Image.open(out / "b.png").size == (48, 40)


def test_a_layered_batch_writes_a_folder_per_input(tmp_path):
    pytest.importorskip("torch")
    photos = _photos(tmp_path / "in", ["a.png", "b.png"], size=(32, 32))
    result = run_cli("decompose", photos, "-o", tmp_path / "layers", "--mode", "dehaze", "--iterations", "5",
                     "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("a", "b"):
        manifest = json.loads((tmp_path / "layers" / name / "manifest.json").read_text())
        assert manifest["op"] == "decompose" and len(manifest["layers"]) >= 2
