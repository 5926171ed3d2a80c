"""Trained-nets benchmark (JSON on stdout): upscale and sharpen quality, ONNX Runtime vs torch
speed, and (with --big) peak memory and seams of a 6000×4000 ×2 upscale.

    python benchmarks/nets_bench.py [--models DIR] [--max-images N]
                                    [--only upscale,sharpen,denoise,inpaint,dejpeg,speed,estimates]
                                    [--set NAME=DIR ...] [--dejpeg-qualities 10,…,none] [--no-cbm3d-oracle]
                                    [--speed-sizes 256,512] [--speed-repeats 9]
                                    [--estimate-side 1024]
                                    [--big [--big-size 6000x4000]] > benchmarks/results/nets.json

Images (never the training images): the held-out validation split of the training folders
(``../shared/data/train/{t91,bsd200}``, the same name-hash split as ``onnx_export.train``:
sha1(file name) < 0.1) and the DIP paper's clean photos in ``../shared/data/dip``. Each set
is reported separately, the held-out split also per training folder (t91's held-out images are
the closest we have to Set5-class photos). ``--set Set5=/data/Set5`` adds any folder of
ground-truth images as one more set (the standard test sets are not in this repository:
point it at your copy of Set5, Set14, BSD100, Urban100 — the same protocol runs on them).

- upscale (×2, ×4): the SR protocol: HR modcropped, LR by antialiased bicubic downscale
  (Pillow's bicubic, a = −0.5 with the kernel widened by the factor, as MATLAB's imresize
  does), PSNR on Y (BT.601) with ``scale`` px shaved; against plain bicubic enlargement.
- sharpen: centred 192² crops; Gaussian σ = 1.6 blur and ×2 resize blur (bicubic down and
  up). PSNR (RGB) of the blurred input, of the net, and of the best unsharp mask *tuned per
  image against the truth* (an oracle: radius × amount grid) — a strong classical baseline.
  Also the net's result at other amounts (the op's ``amount``: 50–200 % of its detail).
- denoise: centred 192² crops with white Gaussian noise of σ = 15, 25 and 50 (/255; numpy rng
  seeded by the image's name), clipped. PSNR (RGB) of the noisy input, of the blind net (never
  told σ) with 1 and 8 passes, and of CBM3D (the ``bm3d`` package, benchmark-only, *told the
  true σ*), with seconds per image. Also the DIP engine's own denoise cases
  (``benchmarks/dip_bench.py``'s ``denoise_case``: F16 256², Berkeley 122048 and 135069 128²,
  σ=25, the same noisy pixels), so the net sits beside the DIP results recorded for them.
  The net runs as the engine's op runs it (``run_op("denoise", method net)``: a net that
  reads the noise level gets the one measured with the blind net ``noise_probe``, which is
  also scored alone); its ``strength`` is swept (50–300 %) on white σ=25, grey grain σ=25
  and camera-like noise (blurred, JPEG'd).
- inpaint: the engine's op (``run_op("inpaint", method net)``, the hole window and pre-fill
  included) with 1 and 8 passes, and with method patch (texture copied from the image),
  against the net's own starting point (``engine.fill``'s smooth fill) and skimage's
  biharmonic inpainting; PSNR (RGB) inside the hole, and the detail there against the
  truth's (``detail_ratio``: 1 = as textured as the photo). On centred 192² crops
  with one seeded random hole per kind (``degrade.inpaint_hole``: strokes, shapes, scattered
  pixels, mixed; seeded by the image's name), and on the DIP benchmark's inpainting cases
  (``benchmarks/dip_bench.py`` at 256: the paper's kate / library / vase masks, half of
  barbara's and kate's pixels missing, the three block holes), whose DIP results are recorded
  in the README — so the net sits beside them.
- dejpeg: centred 192² crops saved by Pillow as JPEG q 10, 20, 30, 50, 75, 90 and 95 (4:2:0
  chroma), and not compressed (``--dejpeg-qualities``).
  PSNR (RGB; and Y for the JPEG and the 8-pass result) of the JPEG, of the engine's op
  (``run_op("dejpeg", method net)``) with 1 and 8 passes, each without and with the JPEG's
  tables (``jpeg_tables``, as the CLI reads them from the file: the ``*_tables`` fields), and up to q 30 of CBM3D *with the
  σ that suits each image best* (an oracle over ``CBM3D_SIGMAS``: BM3D is the usual classical
  deblocker). Also F16 crops at q 10 whose Deep Image Prior results the README records.
- upscale_jpeg (only when asked: ``--only upscale_jpeg``): ×2 of half-size crops saved as
  JPEG q 30–95, the upscale op enlarging the JPEG as it is, after the JPEG step kept to the
  file's tables (its default for a JPEG file) and after the JPEG step alone; Y-PSNR.
- dejpeg_spread (only when asked: ``--only dejpeg_spread``): the 1-pass net's result kept to
  the tables with each σ of ``SPREADS`` (the step's one setting), q 10–95.
- upscale_other (only when asked: ``--only upscale_other``): ×3 and ×8, which no network
  computes itself: the upscale op (×3: the ×4 net's result reduced; ×8: it enlarged ×2 by
  bicubic) against bicubic and the alternatives (×3: the ×2 net's result enlarged; ×8: the ×2
  net run on the ×4 net's result); Y-PSNR, same protocol as upscale.
- jpeg_resave (only when asked: ``--only jpeg_resave``): per held-out photo, the JPEG's
  PSNR at q 85–98 and, at q 95, RGB and Y PSNR of the JPEG and of the net kept to its
  tables: whether a photo was a JPEG before (Berkeley's were: saved again at its quality on
  the same grid it comes back nearly unchanged, so its PSNR peaks there).
- upscale and sharpen are also run with 8 passes (the net averaged over the image's
  mirrored/turned copies, ``runner.run_model(..., passes=8)``; what the ops do automatically
  up to 1 megapixel): the ``*_8_passes`` fields.
- speed: the same net (the checkpoint's weights, output checked against ONNX) in torch eager
  and in ONNX Runtime, CPU, same thread count (1 and all usable cores), interleaved rounds,
  at each --speed-sizes side; once with glibc's default allocator (torch eager then
  page-faults its activations in on every run) and once with malloc keeping freed memory
  (torch at its best), each in its own process.
- estimates: the engine's own tiled run (``runner.run_model``, 1 pass; for inpaint the whole
  op, fill included, with a hole spread over the photo) on a ~1 megapixel photo with 1 thread
  and with all usable cores: seconds per megapixel, the numbers the
  dialog's time estimate is built from (``engine/ops.py``), and that estimate beside the time.
- big (--big, a subprocess so its peak RSS is its own): ``run_op("upscale")`` on a smooth
  photo-like RGB image of --big-size plus the u8 conversion the plug-in's result takes;
  reports peak RSS (ru_maxrss), time, and the largest difference between the tiled result
  and an untiled run of a window that straddles tile seams (seams would show there).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
TRAIN_FOLDERS = [SHARED / "train" / "t91", SHARED / "train" / "bsd200"]
VAL_FRACTION = 0.1
SPLIT_SET = "train-split-validation"
DIP_PHOTOS = ["denoising/F16_GT.png", "restoration/kate.png", "restoration/barbara.png", "sr/zebra_GT.png",
              "inpainting/library.png", "inpainting/vase.png", "flash_no_flash/cave01_00_flash.jpg"]
CROP = 192
NET_NAMES = ("rdn_x2", "rdn_x4", "sharpen", "noise_probe", "denoise", "inpaint", "dejpeg")
BLUR_SIGMA = 1.6

from engine.onnx import runner  # noqa: E402
from engine.ops import scaled_detail  # noqa: E402
from onnx_export import degrade  # noqa: E402
from onnx_export.data import list_images, load_rgb, psnr, split_files  # noqa: E402


def image_sets(max_images: int | None, extra: dict[str, Path] | None = None) -> dict[str, list[Path]]:
    _, held_out = split_files(list_images(TRAIN_FOLDERS), VAL_FRACTION)
    dip = [SHARED / "dip" / name for name in DIP_PHOTOS if (SHARED / "dip" / name).is_file()]
    sets = {SPLIT_SET: held_out[:max_images], "dip": dip[:max_images]}
    for name, folder in (extra or {}).items():
        sets[name] = list_images([folder])[:max_images]
    return sets


def parse_set(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` → (name, folder); the folder must hold images."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    path = Path(folder).expanduser()
    if not path.is_dir() or not list_images([path]):
        raise argparse.ArgumentTypeError(f"{folder}: not a folder of images")
    return name, path


def by_folder(rows: list[dict[str, Any]], fields: dict[str, Callable[[dict[str, Any]], float]]) -> dict[str, Any]:
    """Means of ``fields`` (report key → value of a row) per source folder, when the rows
    (the held-out split's) come from several training folders."""
    folders = sorted({r["folder"] for r in rows})
    if len(folders) < 2:
        return {}
    return {"by_folder": {folder: {"images": sum(r["folder"] == folder for r in rows),
                                   **{out: mean([value(r) for r in rows if r["folder"] == folder])
                                      for out, value in fields.items()}}
                          for folder in folders}}


def as_float(path: Path) -> np.ndarray:
    return load_rgb(path).astype(np.float32) / 255.0


def mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 3) if values else float("nan")


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


# -- upscale -----------------------------------------------------------------------------------

def bench_upscale(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for scale in (2, 4):
        model = runner.load_model(models / f"rdn_x{scale}.onnx", "cpu")
        for set_name, files in sets.items():
            rows, seconds, seconds8 = [], 0.0, 0.0
            for path in files:
                hr = degrade.modcrop(as_float(path), scale)
                lr = degrade.bicubic_downscale(hr, scale)
                sr, took = timed(lambda: runner.run_model(model, lr))
                seconds += took
                sr8, took = timed(lambda: runner.run_model(model, lr, passes=8))
                seconds8 += took
                bicubic = degrade.bicubic_upscale(lr, scale)
                rows.append({"image": path.name, "folder": path.parent.name,
                             "net": round(psnr(sr, hr, scale, y_only=True), 3),
                             "net_8_passes": round(psnr(sr8, hr, scale, y_only=True), 3),
                             "bicubic": round(psnr(bicubic, hr, scale, y_only=True), 3)})
            report[f"x{scale}/{set_name}"] = {
                "images": len(rows), "y_psnr_net": mean([r["net"] for r in rows]),
                "y_psnr_net_8_passes": mean([r["net_8_passes"] for r in rows]),
                "y_psnr_bicubic": mean([r["bicubic"] for r in rows]),
                "gain_db": mean([r["net"] - r["bicubic"] for r in rows]),
                "gain_8_passes_db": mean([r["net_8_passes"] - r["bicubic"] for r in rows]),
                "seconds": round(seconds, 2), "seconds_8_passes": round(seconds8, 2),
                **by_folder(rows if set_name == SPLIT_SET else [], {
                    "y_psnr_net": lambda r: r["net"], "y_psnr_net_8_passes": lambda r: r["net_8_passes"],
                    "y_psnr_bicubic": lambda r: r["bicubic"], "gain_db": lambda r: r["net"] - r["bicubic"],
                    "gain_8_passes_db": lambda r: r["net_8_passes"] - r["bicubic"]}),
                "per_image": rows,
            }
    return report


def bench_upscale_other(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    from engine.onnx.tiling import resize_to
    from engine.ops import run_op

    os.environ["NEURAL_RESTORE_MODELS"] = str(models)
    x2 = runner.load_model(models / "rdn_x2.onnx", "cpu")
    report: dict[str, Any] = {}
    for scale in (3, 8):
        for set_name, files in sets.items():
            rows = []
            for path in files:
                hr = degrade.modcrop(as_float(path), scale)
                lr = degrade.bicubic_downscale(hr, scale)
                height, width = hr.shape[:2]
                (layer,), took = timed(lambda: run_op("upscale", lr, None, {"scale": scale, "device": "cpu",
                                                                               "passes": 1}))
                if scale == 3:
                    other = resize_to(runner.run_model(x2, lr), height, width)
                else:
                    (by4,) = run_op("upscale", lr, None, {"scale": 4, "device": "cpu", "passes": 1})
                    other = runner.run_model(x2, by4.pixels)
                rows.append({"image": path.name, "seconds": round(took, 3),
                             "op": round(psnr(layer.pixels, hr, scale, y_only=True), 3),
                             "alternative": round(psnr(np.clip(other, 0, 1), hr, scale, y_only=True), 3),
                             "bicubic": round(psnr(degrade.bicubic_upscale(lr, scale), hr, scale, y_only=True), 3)})
            report[f"x{scale}/{set_name}"] = {
                "images": len(rows), "alternative": "x2 net enlarged" if scale == 3 else "x2 net after the x4 net",
                **{f"y_psnr_{k}": mean([r[k] for r in rows]) for k in ("op", "alternative", "bicubic")},
                "gain_db": mean([r["op"] - r["bicubic"] for r in rows]), "per_image": rows}
    return report


# -- sharpen -----------------------------------------------------------------------------------

def centre_crop(image: np.ndarray, size: int) -> np.ndarray | None:
    h, w = image.shape[:2]
    if min(h, w) < size:
        return None
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


def centre_crops(files: list[Path]):
    """(path, its centred CROP² crop as float RGB) for each image at least that large."""
    for path in files:
        truth = centre_crop(as_float(path), CROP)
        if truth is not None:
            yield path, truth


USM_RADII = (0.3, 0.4, 0.5, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0)
# Wide enough that the best amount is never the grid's largest (it was 4.0 for σ=1.6 at radius 1).
USM_AMOUNTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0, 40.0)


def best_unsharp_mask(blurred: np.ndarray, truth: np.ndarray) -> tuple[float, dict[str, float]]:
    """Oracle unsharp mask: the (radius, amount) that gives this image its best PSNR."""
    best = (-1.0, {})
    for radius in USM_RADII:
        detail = blurred - degrade.gaussian_blur(blurred, radius)
        for amount in USM_AMOUNTS:
            score = psnr(np.clip(blurred + amount * detail, 0.0, 1.0), truth)  # what a user gets
            if score > best[0]:
                best = (score, {"radius": radius, "amount": amount})
    return best


# Sharpen's amount (engine op param): the share of the net's detail added, 1 pass.
SHARPEN_AMOUNTS = (50, 100, 150, 200)


def bench_sharpen(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    model = runner.load_model(models / "sharpen.onnx", "cpu")
    blurs = {
        f"gaussian_sigma_{BLUR_SIGMA}": lambda img: degrade.gaussian_blur(img, BLUR_SIGMA),
        "resize_x2": lambda img: degrade.resize_blur(img, 2.0),
    }
    report: dict[str, Any] = {}
    for blur_name, blur in blurs.items():
        for set_name, files in sets.items():
            rows = []
            for path, truth in centre_crops(files):
                blurred = np.clip(blur(truth), 0.0, 1.0)
                sharpened = runner.run_model(model, blurred)
                sharpened8 = runner.run_model(model, blurred, passes=8)
                usm, usm_params = best_unsharp_mask(blurred, truth)
                by_amount = {str(a): round(psnr(scaled_detail(blurred, sharpened.copy(), a / 100), truth), 3)
                             for a in SHARPEN_AMOUNTS}
                rows.append({"image": path.name, "folder": path.parent.name,
                             "blurred": round(psnr(blurred, truth), 3),
                             "net": round(psnr(sharpened, truth), 3), "net_by_amount_percent": by_amount,
                             "net_8_passes": round(psnr(sharpened8, truth), 3), "best_unsharp_mask": round(usm, 3),
                             "unsharp_mask_params": usm_params})
            report[f"{blur_name}/{set_name}"] = {
                "images": len(rows), "psnr_blurred": mean([r["blurred"] for r in rows]),
                "psnr_net": mean([r["net"] for r in rows]),
                "psnr_net_by_amount_percent": {str(a): mean([r["net_by_amount_percent"][str(a)] for r in rows])
                                               for a in SHARPEN_AMOUNTS},
                "psnr_best_unsharp_mask": mean([r["best_unsharp_mask"] for r in rows]),
                "gain_over_blurred_db": mean([r["net"] - r["blurred"] for r in rows]),
                "gain_over_unsharp_mask_db": mean([r["net"] - r["best_unsharp_mask"] for r in rows]),
                "psnr_net_8_passes": mean([r["net_8_passes"] for r in rows]),
                "gain_8_passes_over_blurred_db": mean([r["net_8_passes"] - r["blurred"] for r in rows]),
                "gain_8_passes_over_unsharp_mask_db": mean([r["net_8_passes"] - r["best_unsharp_mask"] for r in rows]),
                **by_folder(rows if set_name == SPLIT_SET else [], {
                    "gain_over_blurred_db": lambda r: r["net"] - r["blurred"],
                    "gain_over_unsharp_mask_db": lambda r: r["net"] - r["best_unsharp_mask"],
                    "gain_8_passes_over_blurred_db": lambda r: r["net_8_passes"] - r["blurred"]}),
                "per_image": rows,
            }
    return report


# -- JPEG artefacts ----------------------------------------------------------------------------

DEJPEG_QUALITIES = "10,20,30,50,75,90,95,none"  # none: the uncompressed crop (what it does to a clean image)
# The oracle baseline's σ grid (/255) per quality, around where each quality's best σ lay: in
# session 16's run the top of (15, 20, 25, 30) at q 10 and of (6, 9, 12, 15) at q 30 was
# picked for most photos, so the grids were raised after it; the search is slow (up to q 30).
CBM3D_SIGMAS = {10: (25, 30, 36, 44), 20: (14, 18, 22, 27), 30: (12, 15, 18, 22)}
# The DIP engine's recorded dejpeg cases (README, automatic stopping): F16 at quality 10,
# rows and columns start:start+side.
DIP_DEJPEG_CASES = (("64² sky", 40, 64), ("64² centre", 224, 64), ("128² centre", 192, 128))


def jpeg_copy(truth: np.ndarray, quality: int, with_tables: bool = False):
    """Pillow's JPEG at ``quality`` (4:2:0 chroma, as most JPEGs), decoded to float RGB (and,
    ``with_tables``, its ``jpeg_tables`` text, as the CLI reads it from a file)."""
    import io

    from PIL import Image

    from engine.jpeg_consistency import tables_from_pillow

    buffer = io.BytesIO()
    Image.fromarray((np.clip(truth, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        return (pixels, tables_from_pillow(img)) if with_tables else pixels


def run_dejpeg_net(jpeg: np.ndarray, passes: int = 1, tables: str = "") -> np.ndarray:
    from engine.ops import run_op

    return run_op("dejpeg", jpeg, None, {"method": "net", "device": "cpu", "passes": passes,
                                         "jpeg_tables": tables})[0].pixels


def best_cbm3d(jpeg: np.ndarray, truth: np.ndarray, sigmas: tuple[int, ...]) -> tuple[float, int]:
    """Oracle CBM3D deblocking: the σ (of ``sigmas``) that gives this image its best PSNR. A grey
    photo (barbara) gets grey BM3D on the channels' mean: bm3d_rgb returned NaN on it."""
    import bm3d

    grey = float(np.abs(truth - truth.mean(axis=2, keepdims=True)).max()) < 1e-6

    def filtered(sigma: float) -> np.ndarray:
        if grey:
            out = np.asarray(bm3d.bm3d(jpeg.mean(axis=2), sigma / 255.0), np.float32)
            return np.repeat(out.reshape(*jpeg.shape[:2], 1), 3, axis=2)
        return bm3d.bm3d_rgb(jpeg, sigma / 255.0)

    return max((psnr(np.clip(filtered(sigma), 0.0, 1.0), truth), sigma) for sigma in sigmas)


def dejpeg_row(truth: np.ndarray, jpeg: np.ndarray, quality: int, tables: str = "",
               oracle: bool = True) -> dict[str, Any]:
    net, net_s = timed(lambda: run_dejpeg_net(jpeg))
    net8, net8_s = timed(lambda: run_dejpeg_net(jpeg, passes=8))
    row = {"net": round(psnr(net, truth), 3), "net_8_passes": round(psnr(net8, truth), 3),
           "y_net_8_passes": round(psnr(net8, truth, y_only=True), 3)}
    if tables:
        kept, kept_s = timed(lambda: run_dejpeg_net(jpeg, tables=tables))
        kept8 = run_dejpeg_net(jpeg, passes=8, tables=tables)
        row.update(net_tables=round(psnr(kept, truth), 3), net_8_passes_tables=round(psnr(kept8, truth), 3),
                   y_net_8_passes_tables=round(psnr(kept8, truth, y_only=True), 3),
                   tables_seconds_over_net=round(kept_s - net_s, 3))
    if quality:  # (an uncompressed input is the truth: no PSNR to give)
        row.update(jpeg=round(psnr(jpeg, truth), 3), y_jpeg=round(psnr(jpeg, truth, y_only=True), 3))
    if oracle and quality in CBM3D_SIGMAS:
        score, sigma = best_cbm3d(jpeg, truth, CBM3D_SIGMAS[quality])
        row.update(cbm3d_oracle=round(score, 3), cbm3d_sigma=sigma)
    return {**row, "seconds": {"net": round(net_s, 3), "net_8_passes": round(net8_s, 3)}}


def dejpeg_case(truth: np.ndarray, quality: int, oracle: bool = True) -> dict[str, Any]:
    if not quality:  # 0: not compressed (8-bit rounding only, as any image file is)
        return dejpeg_row(truth, np.round(truth * 255) / 255, quality)
    jpeg, tables = jpeg_copy(truth, quality, with_tables=True)
    return dejpeg_row(truth, jpeg, quality, tables, oracle)


def bench_dejpeg(sets: dict[str, list[Path]], models: Path, qualities: str = DEJPEG_QUALITIES,
                 oracle: bool = True) -> dict[str, Any]:
    os.environ["NEURAL_RESTORE_MODELS"] = str(models)  # the op finds its net there
    report: dict[str, Any] = {}
    for quality in [0 if q == "none" else int(q) for q in qualities.split(",")]:
        for set_name, files in sets.items():
            rows = [{"image": path.name, "folder": path.parent.name, **dejpeg_case(truth, quality, oracle)}
                    for path, truth in centre_crops(files)]
            keys = [k for k in ("jpeg", "net", "net_8_passes", "net_tables", "net_8_passes_tables", "cbm3d_oracle",
                                "y_jpeg", "y_net_8_passes", "y_net_8_passes_tables") if k in rows[0]]
            gains = {} if not quality else {
                "gain_over_jpeg_db": mean([r["net"] - r["jpeg"] for r in rows]),
                "gain_8_passes_over_jpeg_db": mean([r["net_8_passes"] - r["jpeg"] for r in rows]),
                "gain_8_passes_tables_over_jpeg_db": mean([r["net_8_passes_tables"] - r["jpeg"] for r in rows]),
                **by_folder(rows if set_name == SPLIT_SET else [], {
                    "gain_8_passes_over_jpeg_db": lambda r: r["net_8_passes"] - r["jpeg"]})}
            report[f"jpeg_q{quality}/{set_name}" if quality else f"uncompressed/{set_name}"] = {
                "images": len(rows), **{f"psnr_{k}": mean([r[k] for r in rows]) for k in keys}, **gains,
                **({"gain_8_passes_over_cbm3d_oracle_db": mean([r["net_8_passes"] - r["cbm3d_oracle"] for r in rows])}
                   if "cbm3d_oracle" in rows[0] else {}),
                "seconds_mean": {k: mean([r["seconds"][k] for r in rows]) for k in ("net", "net_8_passes")},
                "per_image": rows,
            }
    if "10" in qualities.split(","):
        f16 = as_float(SHARED / "dip" / "denoising" / "F16_GT.png")
        report["dip_cases_q10"] = {
            f"F16 {name} ({start}:{start + side}) q10": dejpeg_case(f16[start:start + side, start:start + side], 10)
            for name, start, side in DIP_DEJPEG_CASES}
    return report


# Upscale of a JPEG: the op's jpeg_artifacts keep / auto (with the tables) / remove without them.
UPSCALE_JPEG_QUALITIES = (30, 50, 75, 90, 95)


def bench_upscale_jpeg(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    """×2 of centred 192² crops made half size (``degrade.bicubic_downscale``) and saved as
    JPEG: Y-PSNR (2 px shaved) against the crop of the upscale op, 1 pass, enlarging the JPEG
    as it is (keep), after the JPEG step kept to the file's tables (auto, what GIMP and the
    CLI do with a JPEG file) and after the JPEG step without them (remove)."""
    import io

    from PIL import Image

    from engine.jpeg_consistency import tables_from_pillow
    from engine.ops import run_op

    os.environ["NEURAL_RESTORE_MODELS"] = str(models)
    report: dict[str, Any] = {}
    for set_name, files in sets.items():
        for quality in UPSCALE_JPEG_QUALITIES:
            scores: dict[str, list[float]] = {"keep": [], "auto_with_tables": [], "remove_without_tables": []}
            for _, truth in centre_crops(files):
                hr = degrade.modcrop(truth, 2)
                buffer = io.BytesIO()
                small = degrade.bicubic_downscale(hr, 2)
                Image.fromarray((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
                with Image.open(buffer) as img:
                    jpeg, tables = np.asarray(img.convert("RGB"), np.float32) / 255.0, tables_from_pillow(img)
                for key, extra in (("keep", {"jpeg_artifacts": "keep"}), ("auto_with_tables", {"jpeg_tables": tables}),
                                   ("remove_without_tables", {"jpeg_artifacts": "remove"})):
                    out = run_op("upscale", jpeg, None, {"device": "cpu", "passes": 1, **extra})[0].pixels
                    scores[key].append(psnr(out, hr, 2, y_only=True))
            report[f"x2_jpeg_q{quality}/{set_name}"] = {"images": len(scores["keep"]),
                                                       **{f"y_psnr_{k}": mean(v) for k, v in scores.items()}}
    return report


# What the tables step's σ (engine.jpeg_consistency.RESTORATION_SPREAD) does: the net's 1-pass
# result per crop once, then kept to the tables with each σ.
SPREADS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0)
SPREAD_QUALITIES = (10, 30, 50, 75, 90, 95)


def bench_dejpeg_spread(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    from engine import jpeg_consistency

    os.environ["NEURAL_RESTORE_MODELS"] = str(models)
    chosen = jpeg_consistency.RESTORATION_SPREAD
    report: dict[str, Any] = {"shipped_spread": chosen}
    try:
        for set_name, files in sets.items():
            for quality in SPREAD_QUALITIES:
                scores: dict[str, list[float]] = {"jpeg": [], "net": [], **{f"spread_{s:g}": [] for s in SPREADS}}
                for _, truth in centre_crops(files):
                    jpeg, text = jpeg_copy(truth, quality, with_tables=True)
                    net = run_dejpeg_net(jpeg)
                    scores["jpeg"].append(psnr(jpeg, truth))
                    scores["net"].append(psnr(net, truth))
                    tables = jpeg_consistency.parse_tables(text)
                    for spread in SPREADS:
                        jpeg_consistency.RESTORATION_SPREAD = spread
                        kept, _ = jpeg_consistency.make_consistent(net, jpeg, tables)
                        scores[f"spread_{spread:g}"].append(psnr(kept, truth))
                    jpeg_consistency.RESTORATION_SPREAD = chosen
                report[f"jpeg_q{quality}/{set_name}"] = {f"psnr_{k}": mean(v) for k, v in scores.items()}
    finally:
        jpeg_consistency.RESTORATION_SPREAD = chosen
    return report


RESAVE_QUALITIES = (85, 90, 92, 94, 95, 96, 98)


def bench_jpeg_resave(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    os.environ["NEURAL_RESTORE_MODELS"] = str(models)
    report: dict[str, Any] = {}
    for set_name, files in sets.items():
        rows = []
        for path, truth in centre_crops(files):
            row: dict[str, Any] = {"image": path.name, "folder": path.parent.name,
                                   **{f"jpeg_q{q}": round(psnr(jpeg_copy(truth, q), truth), 3)
                                      for q in RESAVE_QUALITIES}}
            jpeg, tables = jpeg_copy(truth, 95, with_tables=True)
            kept = run_dejpeg_net(jpeg, tables=tables)
            row.update(y_jpeg_q95=round(psnr(jpeg, truth, y_only=True), 3),
                       net_tables_q95=round(psnr(kept, truth), 3),
                       y_net_tables_q95=round(psnr(kept, truth, y_only=True), 3))
            row["jpeg_peaks_at_95"] = bool(row["jpeg_q95"] > max(row["jpeg_q96"], row["jpeg_q98"]))
            rows.append(row)
        groups = {"jpeg_before": [r for r in rows if r["jpeg_peaks_at_95"]],
                  "not": [r for r in rows if not r["jpeg_peaks_at_95"]]}
        report[set_name] = {
            **{group: {"images": len(members),
                       **{key: mean([r[key] for r in members])
                          for key in ("jpeg_q90", "jpeg_q95", "jpeg_q96", "y_jpeg_q95", "net_tables_q95",
                                      "y_net_tables_q95")}}
               for group, members in groups.items() if members},
            "per_image": rows}
    return report


# -- denoise -----------------------------------------------------------------------------------

DENOISE_SIGMAS = (15, 25, 50)
# dip_bench.py's denoise cases (name, crop side): what the DIP engine's results were measured on.
DIP_DENOISE_CASES = (("F16", 256), ("122048", 128), ("135069", 128))


def seed_of(text: str) -> int:
    """A fixed random seed from a photo's name (its first 8 bytes): the same noise every run."""
    return int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little")


def noisy_copy(truth: np.ndarray, sigma: float, seed_text: str) -> np.ndarray:
    seed = seed_of(seed_text)
    noise = np.random.default_rng(seed).normal(0.0, sigma / 255.0, truth.shape)
    return np.clip(truth + noise, 0.0, 1.0).astype(np.float32)


def run_denoise_net(noisy: np.ndarray, passes: int = 1, strength: float = 1.0) -> np.ndarray:
    """The engine's denoise op (method net) on ``noisy``: the noise probe's measurement, the
    strength, the net (``bench_denoise`` points NEURAL_RESTORE_MODELS at the models)."""
    from engine.ops import run_op

    params = {"method": "net", "device": "cpu", "passes": passes, "strength": round(strength * 100)}
    return run_op("denoise", noisy, None, params)[0].pixels


def denoise_row(model, probe, truth: np.ndarray, noisy: np.ndarray, sigma: float) -> dict[str, Any]:
    import bm3d

    net, net_s = timed(lambda: run_denoise_net(noisy))
    net8, net8_s = timed(lambda: run_denoise_net(noisy, passes=8))
    cbm3d, cbm3d_s = timed(lambda: np.clip(bm3d.bm3d_rgb(noisy, sigma / 255.0), 0.0, 1.0))
    row = {"noisy": round(psnr(noisy, truth), 3), "net": round(psnr(net, truth), 3),
           "net_8_passes": round(psnr(net8, truth), 3), "cbm3d": round(psnr(cbm3d, truth), 3)}
    if probe is not None and model.input_channels == 4:  # the blind net it reads the level from, alone
        row["blind_probe_net"] = round(psnr(runner.run_model(probe, noisy), truth), 3)
    return {**row,
            "seconds": {"net": round(net_s, 3), "net_8_passes": round(net8_s, 3), "cbm3d": round(cbm3d_s, 2)}}


def bench_denoise(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    os.environ["NEURAL_RESTORE_MODELS"] = str(models)  # the op finds its nets there
    model = runner.load_model(models / "denoise.onnx", "cpu")
    probe = runner.load_model(models / "noise_probe.onnx", "cpu") if model.input_channels == 4 else None
    report: dict[str, Any] = {}
    for sigma in DENOISE_SIGMAS:
        for set_name, files in sets.items():
            rows = []
            for path, truth in centre_crops(files):
                row = denoise_row(model, probe, truth, noisy_copy(truth, sigma, path.name), sigma)
                rows.append({"image": path.name, "folder": path.parent.name, **row})
            report[f"gaussian_sigma_{sigma}/{set_name}"] = {
                "images": len(rows), **{f"psnr_{k}": mean([r[k] for r in rows])
                                        for k in ("noisy", "net", "net_8_passes", "cbm3d", "blind_probe_net")
                                        if k in rows[0]},
                "gain_over_cbm3d_db": mean([r["net"] - r["cbm3d"] for r in rows]),
                "gain_8_passes_over_cbm3d_db": mean([r["net_8_passes"] - r["cbm3d"] for r in rows]),
                "seconds_mean": {k: mean([r["seconds"][k] for r in rows]) for k in ("net", "net_8_passes", "cbm3d")},
                **by_folder(rows if set_name == SPLIT_SET else [], {
                    "gain_over_cbm3d_db": lambda r: r["net"] - r["cbm3d"],
                    "gain_8_passes_over_cbm3d_db": lambda r: r["net_8_passes"] - r["cbm3d"]}),
                "per_image": rows,
            }
    sys.path.insert(0, str(REPO / "benchmarks"))
    from dip_bench import denoise_case  # the DIP benchmark's exact noisy inputs

    cases = {}
    for name, size in DIP_DENOISE_CASES:
        clean, noisy = denoise_case(name, size)
        cases[f"{name} centre {size}x{size}"] = denoise_row(model, probe, clean, noisy, 25.0)
    report["dip_bench_cases_sigma_25"] = cases
    if model.input_channels == 4:
        report["strength"] = bench_denoise_strength(sets[SPLIT_SET], probe)
    return report


DENOISE_STRENGTHS = (50, 75, 100, 125, 150, 200, 300)


def grey_grain(truth: np.ndarray, sigma: float, seed_text: str) -> np.ndarray:
    """The same noise of σ in every channel (film-like grey grain), clipped."""
    seed = seed_of(seed_text)
    grain = np.random.default_rng(seed).normal(0.0, sigma / 255.0, truth.shape[:2] + (1,))
    return np.clip(truth + grain, 0.0, 1.0).astype(np.float32)


def camera_like_noise(truth: np.ndarray, sigma: float, seed_text: str) -> np.ndarray:
    """Noise as a phone's JPEG carries it: white noise of σ, softened by a demosaicing-like
    blur (Gaussian, 0.6 px: neighbouring pixels' noise correlates), 8-bit, JPEG quality 90.
    The level-reading net was trained with blurred noise (sometimes JPEG'd); the blind
    probe net was not."""
    from onnx_export import degrade

    seed = seed_of(seed_text)
    noise = np.random.default_rng(seed).normal(0.0, sigma / 255.0, truth.shape).astype(np.float32)
    noise = degrade.gaussian_blur(noise, 0.6)
    return degrade.jpeg(np.clip(truth + noise, 0.0, 1.0), 90)


def phone_like_noise(truth: np.ndarray, sigma: float, seed_text: str) -> np.ndarray:
    """A phone photo's noise, made unlike anything the nets were trained on: shot + read noise
    in linear light (gamma 2.2; σ is the noise of mid-grey in the 8-bit picture), then a camera
    pipeline's smearing — luma noise blurred 0.5 px (demosaicing), colour noise 1.5 px and
    weakened to 60 % (chroma noise reduction leaves blotches) — and JPEG quality 85 with 4:2:0
    chroma (Pillow's default, as phones save)."""
    from onnx_export import degrade

    seed = seed_of(seed_text)
    rng = np.random.default_rng(seed)
    linear = np.clip(truth, 0.0, 1.0).astype(np.float32) ** 2.2
    mid = 0.5 ** 2.2  # mid-grey in linear light; d(x^(1/2.2))/dx there converts σ to linear units
    sigma_linear = (sigma / 255.0) / ((1 / 2.2) * mid ** (1 / 2.2 - 1))
    std = np.sqrt(0.8 * sigma_linear ** 2 * linear / mid + 0.2 * sigma_linear ** 2)
    noisy_linear = np.clip(linear + std * rng.standard_normal(truth.shape).astype(np.float32), 0.0, 1.0)
    noise = noisy_linear ** (1 / 2.2) - np.clip(truth, 0.0, 1.0)
    luma = noise.mean(axis=2, keepdims=True)
    smeared = degrade.gaussian_blur(luma, 0.5) + 0.6 * degrade.gaussian_blur(noise - luma, 1.5)
    return degrade.jpeg(np.clip(truth + smeared, 0.0, 1.0), 85)


def bench_denoise_strength(files: list[Path], probe) -> dict[str, Any]:
    """PSNR (1 pass) at each strength, on white σ=25 noise, on grey grain σ=25, on
    camera-like noise of σ=35 (``camera_like_noise``) and phone-like noise of σ=20
    (``phone_like_noise``), held-out crops, beside the blind net
    (the probe) alone: is 100 % right, and what do other strengths buy?"""
    report: dict[str, Any] = {}
    cases = (("white_sigma_25", lambda t, n: noisy_copy(t, 25, n)),
             ("grey_grain_sigma_25", lambda t, n: grey_grain(t, 25, n)),
             ("camera_like_sigma_35", lambda t, n: camera_like_noise(t, 35, n)),
             ("phone_like_sigma_20", lambda t, n: phone_like_noise(t, 20, n)))
    for case, make in cases:
        rows = []
        for path, truth in centre_crops(files):
            noisy = make(truth, path.name)
            rows.append({"image": path.name, "noisy": psnr(noisy, truth),
                         "blind": psnr(runner.run_model(probe, noisy), truth),
                         **{str(s): psnr(run_denoise_net(noisy, strength=s / 100), truth)
                            for s in DENOISE_STRENGTHS}})
        report[case] = {"images": len(rows), "psnr_noisy": mean([r["noisy"] for r in rows]),
                        "psnr_blind_probe_net": mean([r["blind"] for r in rows]),
                        "psnr_by_strength": {str(s): mean([r[str(s)] for r in rows]) for s in DENOISE_STRENGTHS},
                        "best_strength_per_image": {str(s): sum(max(DENOISE_STRENGTHS, key=lambda k: r[str(k)]) == s
                                                                for r in rows) for s in DENOISE_STRENGTHS}}
    return report


# -- inpaint -----------------------------------------------------------------------------------

def detail(image: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute difference to the right and lower neighbours at the pixels ``where``."""
    image = np.clip(image, 0.0, 1.0)
    dx = np.abs(np.diff(image, axis=1, append=image[:, -1:]))
    dy = np.abs(np.diff(image, axis=0, append=image[-1:]))
    return float((dx + dy)[where].mean())


def inpaint_row(truth: np.ndarray, hole: np.ndarray) -> dict[str, Any]:
    """PSNR inside the hole and seconds: the net (the engine's op, 1 and 8 passes), the
    patch-based fill (method patch), the smooth pre-fill the net starts from, biharmonic; and
    each one's detail in the hole (``detail_ratio``: its mean absolute neighbour difference
    there over the truth's; 1 = as textured as the photo, a smooth fill far less — PSNR
    prefers the smooth mean, the eye the texture)."""
    from skimage.restoration import inpaint_biharmonic

    from engine.fill import smooth_fill
    from engine.ops import run_op

    damaged = np.where(hole[..., None], 0.0, truth).astype(np.float32)
    mask = hole.astype(np.float32)
    results = {
        "net": timed(lambda: run_op("inpaint", damaged, mask, {"method": "net", "passes": 1})[0].pixels),
        "net_8_passes": timed(lambda: run_op("inpaint", damaged, mask, {"method": "net", "passes": 8})[0].pixels),
        "patch": timed(lambda: run_op("inpaint", damaged, mask, {"method": "patch"})[0].pixels),
        "smooth_fill": timed(lambda: smooth_fill(damaged, hole)),
        "biharmonic": timed(lambda: inpaint_biharmonic(damaged, hole, channel_axis=-1)),
    }
    row: dict[str, Any] = {"hole_fraction": round(float(hole.mean()), 3)}
    row.update({name: round(psnr(out, truth, where=hole), 3) for name, (out, _) in results.items()})
    truth_detail = detail(truth, hole)
    row["detail_ratio"] = {name: round(detail(out, hole) / max(truth_detail, 1e-6), 3)
                           for name, (out, _) in results.items()}
    row["seconds"] = {name: round(seconds, 3) for name, (_, seconds) in results.items()}
    return row


def bench_inpaint(sets: dict[str, list[Path]], models: Path) -> dict[str, Any]:
    os.environ["NEURAL_RESTORE_MODELS"] = str(models)  # the op finds its net there
    fields = ("net", "net_8_passes", "patch", "smooth_fill", "biharmonic")
    report: dict[str, Any] = {}
    for kind in degrade.HOLE_KINDS:
        for set_name, files in sets.items():
            rows = []
            for path, truth in centre_crops(files):
                rng = np.random.default_rng(seed_of(f"{path.name}/{kind}"))
                hole = degrade.inpaint_hole(*truth.shape[:2], rng, kind=kind)
                rows.append({"image": path.name, "folder": path.parent.name, **inpaint_row(truth, hole)})
            report[f"{kind}/{set_name}"] = {
                "images": len(rows), "hole_fraction_mean": mean([r["hole_fraction"] for r in rows]),
                **{f"psnr_in_hole_{k}": mean([r[k] for r in rows]) for k in fields},
                "gain_over_biharmonic_db": mean([r["net"] - r["biharmonic"] for r in rows]),
                "gain_8_passes_over_biharmonic_db": mean([r["net_8_passes"] - r["biharmonic"] for r in rows]),
                "detail_ratio_mean": {k: mean([r["detail_ratio"][k] for r in rows]) for k in fields},
                "seconds_mean": {k: mean([r["seconds"][k] for r in rows]) for k in fields},
                "per_image": rows,
            }
    sys.path.insert(0, str(REPO / "benchmarks"))
    import dip_bench  # the DIP benchmark's exact cases (its module imports torch: fine here)

    from PIL import Image

    size = 256
    cases: dict[str, Any] = {}
    for name in ("kate", "library", "vase"):
        image = dip_bench.resized_to(Image.open(dip_bench.DATA / "inpainting" / f"{name}.png").convert("RGB"), size)
        mask = Image.open(dip_bench.DATA / "inpainting" / f"{name}_mask.png").convert("L").resize(image.size,
                                                                                                  Image.NEAREST)
        cases[f"inpaint {name} (paper mask)"] = inpaint_row(dip_bench.as_float(image), np.asarray(mask) < 128)
    for name in dip_bench.MISSING_IMAGES:
        truth = dip_bench.centre_crop(dip_bench.as_float(dip_bench.open_photo(
            dip_bench.DATA / "restoration" / f"{name}.png")), size)
        hole = np.random.default_rng(dip_bench.MISSING_SEED).random(truth.shape[:2]) < dip_bench.MISSING_FRACTION
        cases[f"missing50 {name}"] = inpaint_row(truth, hole)
    for name, (path, centre) in dip_bench.BLOCK_CASES.items():
        truth = dip_bench.as_float(dip_bench.resized_to(dip_bench.open_photo(path), size))
        cases[f"block {name}"] = inpaint_row(truth, dip_bench.block_hole(truth.shape[:2], centre))
    for row in cases.values():
        row["net_over_biharmonic_db"] = round(row["net"] - row["biharmonic"], 2)
        row["net_8_passes_over_biharmonic_db"] = round(row["net_8_passes"] - row["biharmonic"], 2)
    report[f"dip_bench_cases_{size}"] = cases
    return report


# -- speed: ONNX Runtime vs torch eager --------------------------------------------------------

# glibc hands big freed blocks straight back to the OS, so by default every torch eager run
# page-faults its activations in again (ONNX Runtime keeps its own arena). These two tunables
# keep freed memory in the heap: torch eager at its best. Both settings are reported.
HEAP_KEEPING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


def speed_child(models: Path, sizes: list[int], repeats: int) -> dict[str, Any]:
    """Torch eager vs ONNX Runtime on one CPU process: the same net (the checkpoint's weights
    when onnx_export/checkpoints has them, checked against the ONNX output), same threads,
    timed in interleaved rounds (order alternating) so load on a shared machine hits both."""
    import torch

    from engine.system import available_cpu_threads
    from onnx_export.models import build_model

    report: dict[str, Any] = {}
    for threads in sorted({1, available_cpu_threads()}):
        torch.set_num_threads(threads)
        for side in sizes:
            x = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
            tensor = torch.from_numpy(x)
            for name in ("rdn_x2", "rdn_x4", "sharpen"):
                model = runner.load_model(models / f"{name}.onnx", "cpu", threads=threads)
                arch = model.card["architecture"]
                net = build_model(arch["kind"], arch["params"]).eval()
                checkpoint = REPO / "onnx_export" / "checkpoints" / f"{name}.pt"
                if checkpoint.is_file():
                    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
                runs = {"torch": lambda: net(tensor), "ort": lambda: model.infer(x)}
                times: dict[str, list[float]] = {"torch": [], "ort": []}
                with torch.inference_mode():
                    outputs = {k: np.asarray(fn()) for k, fn in runs.items()}  # warm-up
                    for i in range(repeats):
                        for k in (("torch", "ort") if i % 2 else ("ort", "torch")):
                            times[k].append(timed(runs[k])[1])
                torch_s, ort_s = float(np.median(times["torch"])), float(np.median(times["ort"]))
                report[f"{name}/{side}px/threads_{threads}"] = {
                    "torch_eager_s": round(torch_s, 4), "onnxruntime_s": round(ort_s, 4),
                    "speedup": round(torch_s / ort_s, 2),
                    "torch_weights": "checkpoint" if checkpoint.is_file() else "random (same shapes)",
                    "max_abs_diff_torch_vs_onnx": float(np.abs(outputs["torch"] - outputs["ort"]).max()),
                }
    return report


def bench_speed(models: Path, sizes: list[int], repeats: int) -> dict[str, Any]:
    """``speed_child`` in a fresh process per allocator setting (glibc reads them at start)."""
    report: dict[str, Any] = {"inputs": [f"1×3×{s}×{s}" for s in sizes], "repeats": repeats,
                              "timing": "median of interleaved rounds, after one warm-up run each"}
    for label, extra in (("default_malloc", {}), ("heap_keeping_malloc", HEAP_KEEPING_MALLOC)):
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--speed-child", "--models", str(models),
                               "--speed-sizes", ",".join(map(str, sizes)), "--speed-repeats", str(repeats)],
                              capture_output=True, text=True, env={**os.environ, **extra})
        if done.returncode != 0:
            report[label] = {"error": done.stderr.strip().splitlines()[-1:]}
            continue
        report[label] = {"env": extra, **json.loads(done.stdout)}
    return report


# -- the dialog's time estimates ----------------------------------------------------------------

def bench_estimates(models: Path, side: int, repeats: int = 2) -> dict[str, Any]:
    """What the engine runs for a filter (``runner.run_model``: padding, tiles, blending) on a
    side×side photo, 1 pass, with 1 thread and with every usable core: seconds per megapixel
    (the figures behind ``ops._NET_SECONDS_PER_MEGAPIXEL``) and the engine's estimate beside
    the time (best of ``repeats`` runs after a warm-up)."""
    from engine import ops
    from engine.system import available_cpu_threads
    from PIL import Image

    photo = Image.open(SHARED / "dip" / "sr" / "zebra_GT.png").convert("RGB")
    image = np.asarray(photo.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    megapixels = side * side / 1e6
    report: dict[str, Any] = {"input": f"zebra_GT resized to {side}×{side}, 1 pass",
                              "timing": f"best of {repeats} after a warm-up run"}
    for name in ("rdn_x2", "rdn_x4", "sharpen"):
        for threads in sorted({1, available_cpu_threads()}):
            runner.clear_cache()
            model = runner.load_model(models / f"{name}.onnx", "cpu", threads=threads)
            runner.run_model(model, image[:64, :64], passes=1)  # warm-up (session, arena)
            seconds = min(timed(lambda: runner.run_model(model, image, passes=1))[1] for _ in range(repeats))
            row = {"seconds": round(seconds, 2), "seconds_per_megapixel": round(seconds / megapixels, 2)}
            if threads == available_cpu_threads():
                estimate = ops._net_seconds(name, "cpu", side, side, 1)
                row.update(engine_estimate_s=estimate, estimate_over_measured=round(estimate / seconds, 2))
            report[f"{name}/threads_{threads}"] = row
    # Inpaint: the whole op (smooth fill, then the 4-channel net), a hole whose window is the
    # whole photo (scattered pixels: the estimate is for the whole layer); 1 thread by
    # narrowing this process's CPU affinity, which is what the engine counts.
    mask = (np.random.default_rng(0).random((side, side)) < 0.2).astype(np.float32)
    allowed = os.sched_getaffinity(0)
    for threads in sorted({1, available_cpu_threads()}):
        runner.clear_cache()
        os.sched_setaffinity(0, set(sorted(allowed)[:threads]))
        try:
            run = lambda: ops.run_op("inpaint", image, mask, {"method": "net", "passes": 1, "device": "cpu"})  # noqa: E731
            ops.run_op("inpaint", image[:64, :64], mask[:64, :64], {"method": "net", "passes": 1, "device": "cpu"})
            seconds = min(timed(run)[1] for _ in range(repeats))
            estimate = ops._net_seconds("inpaint", "cpu", side, side, 1)
        finally:
            os.sched_setaffinity(0, allowed)
        row = {"seconds": round(seconds, 2), "seconds_per_megapixel": round(seconds / megapixels, 2)}
        if threads == len(allowed):
            row.update(engine_estimate_s=estimate, estimate_over_measured=round(estimate / seconds, 2))
        report[f"inpaint/threads_{threads}"] = row
    runner.clear_cache()
    return report


# -- big image: peak memory and seams ----------------------------------------------------------

BIG_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])


def peak_mib():
    # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still holds the (large) parent's peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0


from engine import ops
from engine.imageio import from_float
from engine.onnx import runner
from PIL import Image
width, height, models = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Photo-like content at full size without a huge temporary: a real photo, resized.
photo = Image.open(sys.argv[5]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
image = np.asarray(photo, dtype=np.uint8)
del photo
image = image.astype(np.float32) / np.float32(255.0)
before = peak_mib()
started = time.perf_counter()
(layer,) = ops.run_op("upscale", image, None, {"scale": 2, "device": "cpu"})
seconds = time.perf_counter() - started
wire = from_float(layer.pixels, "u8")
peak = peak_mib()
# Seams: an untiled run of a window around the image centre (tile seams cross it) vs the
# tiled result there, ignoring the window's own border (where the untiled run lacks context).
model = runner.load_model(runner.find_model("rdn_x2"), "cpu")
win, margin = 384, 48
y0, x0 = height // 2 - win // 2, width // 2 - win // 2
alone = runner.run_model(model, image[y0:y0 + win, x0:x0 + win], tile=4096)
inner = slice(2 * margin, 2 * (win - margin))
tiled = layer.pixels[2 * y0:2 * (y0 + win), 2 * x0:2 * (x0 + win)]
seam = float(np.abs(alone[inner, inner] - tiled[inner, inner]).max())
print(json.dumps({"size": [width, height], "seconds": round(seconds, 1),
                  "peak_rss_mb": round(peak, 1), "peak_rss_mb_before_upscale": round(before, 1),
                  "result_shape": list(wire.shape), "max_abs_diff_vs_untiled_window": seam}))
"""


def bench_big(models: Path, width: int, height: int) -> dict[str, Any]:
    env = dict(os.environ, NEURAL_RESTORE_MODELS=str(models))
    photo = SHARED / "dip" / "sr" / "zebra_GT.png"
    done = subprocess.run([sys.executable, "-c", BIG_CHILD, str(REPO), str(width), str(height), str(models),
                           str(photo)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout)
    result["limit_mb"] = 2048
    result["within_limit"] = result["peak_rss_mb"] <= 2048
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="model folder (default: the engine's)")
    parser.add_argument("--max-images", type=int, default=None, help="at most N images per set (quick runs)")
    parser.add_argument("--only", default="upscale,sharpen,denoise,inpaint,dejpeg,speed,estimates")
    parser.add_argument("--set", dest="extra_sets", type=parse_set, action="append", default=[],
                        metavar="NAME=DIR", help="also measure on this folder of ground-truth images (repeatable)")
    parser.add_argument("--dejpeg-qualities", default=DEJPEG_QUALITIES,
                        help="dejpeg part: JPEG qualities, comma-separated; none = uncompressed")
    parser.add_argument("--no-cbm3d-oracle", action="store_true",
                        help="dejpeg part: skip the (slow) per-image CBM3D search, e.g. to compare two nets")
    parser.add_argument("--speed-sizes", default="256,512", help="square input sides, comma-separated")
    parser.add_argument("--speed-repeats", type=int, default=9)
    parser.add_argument("--speed-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--estimate-side", type=int, default=1024,
                        help="estimates part: side of the square photo (default 1024, ~1 megapixel)")
    parser.add_argument("--big", action="store_true", help="also the 6000×4000 ×2 memory/seam run")
    parser.add_argument("--big-size", default="6000x4000")
    args = parser.parse_args()
    models = (args.models or runner.models_dir()).resolve()
    sizes = [int(v) for v in args.speed_sizes.split(",")]
    if args.speed_child:
        print(json.dumps(speed_child(models, sizes, args.speed_repeats)))
        return 0
    only = set(args.only.split(","))
    sets = image_sets(args.max_images, dict(args.extra_sets))
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "device": "cpu (ONNX Runtime CPU provider)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus_usable": len(os.sched_getaffinity(0))},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "models": {name: runner.read_card(models / f"{name}.onnx").get("export", {}).get("sha256", "")[:12]
                   for name in NET_NAMES if (models / f"{name}.onnx").is_file()},
        "images": {name: [p.name for p in files] for name, files in sets.items()},
    }
    # The held-out set must be the one each net was validated on (never trained on).
    held_out = {p.name for p in image_sets(None)[SPLIT_SET]}
    report["split_matches_model_cards"] = {
        name: sorted(runner.read_card(models / f"{name}.onnx").get("data", {}).get("validation_files", [])) ==
        sorted(held_out) for name in NET_NAMES if (models / f"{name}.onnx").is_file()}
    if "upscale" in only:
        report["upscale"] = bench_upscale(sets, models)
    if "sharpen" in only:
        report["sharpen"] = bench_sharpen(sets, models)
    if "denoise" in only:
        report["denoise"] = bench_denoise(sets, models)
    if "inpaint" in only:
        report["inpaint"] = bench_inpaint(sets, models)
    if "dejpeg" in only:
        report["dejpeg"] = bench_dejpeg(sets, models, args.dejpeg_qualities, not args.no_cbm3d_oracle)
    if "upscale_jpeg" in only:
        report["upscale_jpeg"] = bench_upscale_jpeg(sets, models)
    if "dejpeg_spread" in only:
        report["dejpeg_spread"] = bench_dejpeg_spread(sets, models)
    if "upscale_other" in only:
        report["upscale_other"] = bench_upscale_other(sets, models)
    if "jpeg_resave" in only:
        report["jpeg_resave"] = bench_jpeg_resave(sets, models)
    if "speed" in only:
        report["speed"] = bench_speed(models, sizes, args.speed_repeats)
    if "estimates" in only:
        report["estimates"] = bench_estimates(models, args.estimate_side)
    if args.big:
        width, height = (int(v) for v in args.big_size.lower().split("x"))
        report["big"] = bench_big(models, width, height)
    report["peak_rss_mb_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
