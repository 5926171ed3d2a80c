"""Make the README's before/after pictures with our own CLI, and record the exact commands.

    python docs/examples/make_examples.py [denoise] [denoise_net] [denoise_real] [inpaint] [inpaint_net] [remove_object] [upscale] [sharpen] [dejpeg]
    # needs ../shared/data (the DIP paper's images) and the dev environment (onnx_export)

Writes the inputs, runs ``python -m engine denoise/inpaint/upscale/sharpen/dejpeg`` on them exactly
as a user would (automatic settings), then writes side-by-side pictures and
docs/examples/results.json (commands, PSNR, seconds).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "dip"
sys.path.insert(0, str(REPO))
from onnx_export import degrade  # noqa: E402  (the benchmarks' degradations)
from onnx_export.data import psnr as y_psnr  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def run(*args: str) -> tuple[str, float]:
    command = [sys.executable, "-m", "engine", *args]
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True)
    shown = "python -m engine " + " ".join(shlex.quote(a) for a in args)
    return shown, round(time.monotonic() - started, 1)


def provenance(name: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return {"made_by": f"python docs/examples/make_examples.py {name}", "commit": commit,
            "date": time.strftime("%Y-%m-%d"), "device": f"cpu ({os.cpu_count()} cores)",
            # seconds depend on what else ran: > cores means a busy machine
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


def side_by_side(paths: list[Path], out: Path) -> None:
    images = [Image.open(p).convert("RGB") for p in paths]
    width = sum(i.width for i in images) + 8 * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(i.height for i in images)), (255, 255, 255))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + 8
    canvas.save(out)


def main() -> None:
    wanted = set(sys.argv[1:]) or {"denoise", "denoise_net", "denoise_real", "inpaint", "inpaint_net", "remove_object",
                                   "upscale", "sharpen", "dejpeg"}
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    makers = {"denoise": make_denoise, "denoise_net": make_denoise_net, "denoise_real": make_denoise_real,
              "inpaint": make_inpaint,
              "inpaint_net": make_inpaint_net, "remove_object": make_remove_object, "upscale": make_upscale, "sharpen": make_sharpen,
              "dejpeg": make_dejpeg}
    for name, make in makers.items():
        if name in wanted:
            results[name] = {**make(rel), **provenance(name)}
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def make_denoise(rel) -> dict:
    # Denoise: a 192×192 crop of the DIP paper's F16 with Gaussian noise σ = 25.
    clean = np.asarray(Image.open(DATA / "denoising" / "F16_GT.png").convert("RGB"))[150:342, 150:342]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(HERE / "f16-clean.png")
    Image.fromarray(noisy).save(HERE / "f16-noisy.png")
    command, seconds = run("denoise", rel(HERE / "f16-noisy.png"), "-o", rel(HERE / "f16-denoised.png"),
                           "--method", "dip", "--seed", "0")  # DIP (before the trained net, the default)
    denoised = np.asarray(Image.open(HERE / "f16-denoised.png").convert("RGB"))
    side_by_side([HERE / "f16-noisy.png", HERE / "f16-denoised.png"], HERE / "denoise-before-after.png")
    return {"command": command, "seconds": seconds, "psnr_noisy": round(psnr(noisy, clean), 2),
            "psnr_denoised": round(psnr(denoised, clean), 2)}


def make_denoise_real(rel) -> dict:
    # Real noise (no clean truth): the DIP paper's no-flash photo, taken in a dim cellar — a
    # camera JPEG's noise, demosaiced, colour-smeared and compressed. A crop at 1:1, saved
    # losslessly as decoded, then the default command; and a 2× detail of both.
    photo = Image.open(DATA / "flash_no_flash" / "cave01_01_noflash.jpg").convert("RGB")
    photo.crop((200, 60, 520, 316)).save(HERE / "cellar-noisy.png")
    command, seconds = run("denoise", rel(HERE / "cellar-noisy.png"), "-o", rel(HERE / "cellar-denoised-net.png"))
    side_by_side([HERE / "cellar-noisy.png", HERE / "cellar-denoised-net.png"], HERE / "denoise-real-before-after.png")
    details = []
    for name in ("cellar-noisy.png", "cellar-denoised-net.png"):
        detail = Image.open(HERE / name).crop((40, 60, 168, 188)).resize((256, 256), Image.NEAREST)
        details.append(HERE / f"detail-{name}")
        detail.save(details[-1])
    side_by_side(details, HERE / "denoise-real-detail.png")
    for path in details:
        path.unlink()
    return {"command": command, "seconds": seconds, "input": "cave01_01_noflash.jpg, crop x 200-520, y 60-316"}


def make_denoise_net(rel) -> dict:
    # Denoise with the default method (the trained net) on the same noisy crop as make_denoise.
    if not (HERE / "f16-noisy.png").exists():
        make_denoise(rel)
    clean = np.asarray(Image.open(HERE / "f16-clean.png").convert("RGB"))
    noisy = np.asarray(Image.open(HERE / "f16-noisy.png").convert("RGB"))
    command, seconds = run("denoise", rel(HERE / "f16-noisy.png"), "-o", rel(HERE / "f16-denoised-net.png"))
    denoised = np.asarray(Image.open(HERE / "f16-denoised-net.png").convert("RGB"))
    side_by_side([HERE / "f16-noisy.png", HERE / "f16-denoised-net.png", HERE / "f16-denoised.png"],
                 HERE / "denoise-net-before-after.png")
    return {"command": command, "seconds": seconds, "psnr_noisy": round(psnr(noisy, clean), 2),
            "psnr_denoised": round(psnr(denoised, clean), 2)}


def make_inpaint(rel) -> dict:
    # Inpaint: the paper's "kate" text overlay at 160×160; our masks are white where to fill.
    size = (160, 160)
    truth = Image.open(DATA / "inpainting" / "kate.png").convert("RGB").resize(size, Image.LANCZOS)
    keep = np.asarray(Image.open(DATA / "inpainting" / "kate_mask.png").convert("L").resize(size, Image.NEAREST)) > 127
    hole = ~keep
    damaged = np.asarray(truth).copy()
    damaged[hole] = 255
    Image.fromarray(damaged).save(HERE / "kate-text.png")
    Image.fromarray((hole * 255).astype(np.uint8)).save(HERE / "kate-text-mask.png")
    command, seconds = run("inpaint", rel(HERE / "kate-text.png"), "--mask", rel(HERE / "kate-text-mask.png"),
                           "-o", rel(HERE / "kate-inpainted.png"), "--method", "dip",
                           "--seed", "0")  # DIP (before the trained net, the default)
    filled = np.asarray(Image.open(HERE / "kate-inpainted.png").convert("RGB"))
    side_by_side([HERE / "kate-text.png", HERE / "kate-inpainted.png"], HERE / "inpaint-before-after.png")
    return {"command": command, "seconds": seconds,
            "psnr_damaged": round(psnr(damaged, np.asarray(truth)), 2),
            "psnr_inpainted": round(psnr(filled, np.asarray(truth)), 2),
            "hole_fraction": round(float(hole.mean()), 3)}


def make_inpaint_net(rel) -> dict:
    # Inpaint with the default method (the trained net) on the same text overlay as make_inpaint.
    if not (HERE / "kate-text.png").exists():
        make_inpaint(rel)
    size = (160, 160)
    truth = np.asarray(Image.open(DATA / "inpainting" / "kate.png").convert("RGB").resize(size, Image.LANCZOS))
    damaged = np.asarray(Image.open(HERE / "kate-text.png").convert("RGB"))
    hole = np.asarray(Image.open(HERE / "kate-text-mask.png").convert("L")) > 127
    command, seconds = run("inpaint", rel(HERE / "kate-text.png"), "--mask", rel(HERE / "kate-text-mask.png"),
                           "-o", rel(HERE / "kate-inpainted-net.png"))
    filled = np.asarray(Image.open(HERE / "kate-inpainted-net.png").convert("RGB"))
    side_by_side([HERE / "kate-text.png", HERE / "kate-inpainted-net.png", HERE / "kate-inpainted.png"],
                 HERE / "inpaint-net-before-after.png")
    return {"command": command, "seconds": seconds, "psnr_damaged": round(psnr(damaged, truth), 2),
            "psnr_inpainted": round(psnr(filled, truth), 2), "hole_fraction": round(float(hole.mean()), 3)}


# The jet in the DIP paper's F16, outlined as a user would with Free Select (a polygon on the
# picture at 256², grown by a few pixels so that no edge of the jet is left).
JET_OUTLINE = [(10, 60), (41, 60), (62, 91), (180, 94), (200, 97), (242, 117), (240, 127), (200, 135),
               (180, 142), (100, 147), (72, 146), (62, 156), (36, 156), (12, 132), (7, 110)]


def make_remove_object(rel) -> dict:
    # Removing an object: the jet from F16 at 384², with the trained net alone (--method net)
    # and with the default method (texture from the image). No truth behind the jet: no PSNR.
    from PIL import ImageDraw, ImageFilter

    size = 384
    photo = Image.open(DATA / "denoising" / "F16_GT.png").convert("RGB").resize((size, size), Image.LANCZOS)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([(x * size / 256, y * size / 256) for x, y in JET_OUTLINE], fill=255)
    mask = mask.filter(ImageFilter.MaxFilter(9))
    photo.save(HERE / "f16-jet.png")
    mask.save(HERE / "f16-jet-mask.png")
    shown = np.asarray(photo, np.float32)
    selected = np.asarray(mask)[..., None] > 127
    marked = np.where(selected, 0.5 * shown + 0.5 * np.array([255.0, 40.0, 40.0]), shown)
    Image.fromarray(np.round(marked).astype(np.uint8)).save(HERE / "f16-jet-selected.png")
    records = {}
    for method, name in (("net", "f16-jet-removed-net.png"), ("patch", "f16-jet-removed-patch.png")):
        extra = ("--method", "net") if method == "net" else ()
        command, seconds = run("inpaint", rel(HERE / "f16-jet.png"), "--mask", rel(HERE / "f16-jet-mask.png"),
                               "-o", rel(HERE / name), *extra)
        records[method] = {"command": command, "seconds": seconds}
    side_by_side([HERE / "f16-jet-selected.png", HERE / "f16-jet-removed-net.png", HERE / "f16-jet-removed-patch.png"],
                 HERE / "remove-object-before-after.png")
    (HERE / "f16-jet-selected.png").unlink()
    return {**records, "hole_fraction": round(float(selected.mean()), 3)}


def to_float(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float32) / 255.0


def to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def make_upscale(rel) -> dict:
    # Upscale ×4: a 192×192 crop of the DIP paper's zebra (never trained on), reduced to 48×48
    # the way the benchmark does (antialiased bicubic), enlarged again by bicubic and by the net.
    scale = 4
    truth = np.asarray(Image.open(DATA / "sr" / "zebra_GT.png").convert("RGB"))[150:342, 380:572]
    small8 = to_u8(degrade.bicubic_downscale(to_float(truth), scale))
    Image.fromarray(truth).save(HERE / "zebra-original.png")
    Image.fromarray(small8).save(HERE / "zebra-small.png")
    size = (truth.shape[1], truth.shape[0])
    Image.fromarray(small8).resize(size, Image.NEAREST).save(HERE / "zebra-small-zoomed.png")
    bicubic = Image.fromarray(small8).resize(size, Image.BICUBIC)
    bicubic.save(HERE / "zebra-bicubic.png")
    command, seconds = run("upscale", rel(HERE / "zebra-small.png"), "-o", rel(HERE / "zebra-upscaled.png"),
                           "--scale", str(scale))
    upscaled = np.asarray(Image.open(HERE / "zebra-upscaled.png").convert("RGB"))
    side_by_side([HERE / "zebra-small-zoomed.png", HERE / "zebra-bicubic.png", HERE / "zebra-upscaled.png",
                  HERE / "zebra-original.png"], HERE / "upscale-before-after.png")
    return {"command": command, "seconds": seconds,
            "image": "zebra_GT.png (DIP paper) crop [150:342, 380:572], antialiased bicubic ÷4 (48×48)",
            "y_psnr_bicubic": round(y_psnr(to_float(bicubic), to_float(truth), scale, y_only=True), 2),
            "y_psnr_upscaled": round(y_psnr(to_float(upscaled), to_float(truth), scale, y_only=True), 2)}


def make_sharpen(rel) -> dict:
    # Sharpen: a 192×192 crop of the DIP paper's library photo (never trained on) under a
    # Gaussian blur of σ = 1.6, the benchmark's first case.
    truth = np.asarray(Image.open(DATA / "inpainting" / "library.png").convert("RGB"))[100:292, 280:472]
    blurred8 = to_u8(degrade.gaussian_blur(to_float(truth), 1.6))
    Image.fromarray(truth).save(HERE / "library-original.png")
    Image.fromarray(blurred8).save(HERE / "library-blurred.png")
    command, seconds = run("sharpen", rel(HERE / "library-blurred.png"), "-o", rel(HERE / "library-sharpened.png"))
    sharpened = np.asarray(Image.open(HERE / "library-sharpened.png").convert("RGB"))
    side_by_side([HERE / "library-blurred.png", HERE / "library-sharpened.png", HERE / "library-original.png"],
                 HERE / "sharpen-before-after.png")
    return {"command": command, "seconds": seconds,
            "image": "library.png (DIP paper) crop [100:292, 280:472], Gaussian blur sigma 1.6",
            "psnr_blurred": round(psnr(blurred8, truth), 2), "psnr_sharpened": round(psnr(sharpened, truth), 2)}


def make_dejpeg(rel) -> dict:
    # Remove JPEG Artifacts: a 192×192 crop of the DIP paper's kate (face and hair; never
    # trained on) saved by Pillow at quality 10, then the default (the trained net) and DIP.
    truth = Image.open(DATA / "restoration" / "kate.png").convert("RGB").crop((160, 60, 352, 252))
    truth.save(HERE / "kate-face-original.png")
    truth.save(HERE / "kate-face-q10.jpg", quality=10)
    original = np.asarray(truth)
    blocky = np.asarray(Image.open(HERE / "kate-face-q10.jpg").convert("RGB"))
    Image.fromarray(blocky).save(HERE / "kate-face-q10.png")  # for the side-by-side picture
    command, seconds = run("dejpeg", rel(HERE / "kate-face-q10.jpg"), "-o", rel(HERE / "kate-face-dejpeg-net.png"))
    net = np.asarray(Image.open(HERE / "kate-face-dejpeg-net.png").convert("RGB"))
    dip_command, dip_seconds = run("dejpeg", rel(HERE / "kate-face-q10.jpg"), "-o",
                                   rel(HERE / "kate-face-dejpeg-dip.png"), "--method", "dip", "--seed", "0")
    dip = np.asarray(Image.open(HERE / "kate-face-dejpeg-dip.png").convert("RGB"))
    side_by_side([HERE / "kate-face-q10.png", HERE / "kate-face-dejpeg-net.png", HERE / "kate-face-dejpeg-dip.png",
                  HERE / "kate-face-original.png"], HERE / "dejpeg-before-after.png")
    return {"command": command, "seconds": seconds, "dip_command": dip_command, "dip_seconds": dip_seconds,
            "image": "kate.png (DIP paper, restoration) crop [60:252, 160:352], Pillow JPEG quality 10",
            "psnr_jpeg": round(psnr(blocky, original), 2), "psnr_net": round(psnr(net, original), 2),
            "psnr_dip": round(psnr(dip, original), 2)}


if __name__ == "__main__":
    main()
