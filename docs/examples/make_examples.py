"""Make the README's before/after pictures with our own CLI, and record the exact commands.

    python docs/examples/make_examples.py [denoise] [inpaint]   # needs ../shared/data (the DIP paper's images)

Writes the inputs, runs ``python -m engine denoise/inpaint`` on them exactly as a user would,
then writes side-by-side pictures and docs/examples/results.json (commands, PSNR, seconds).
"""
from __future__ import annotations

import json
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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def run(*args: str) -> tuple[str, float]:
    command = [sys.executable, "-m", "engine", *args]
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True)
    shown = "python -m engine " + " ".join(shlex.quote(a) for a in args)
    return shown, round(time.monotonic() - started, 1)


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
    wanted = set(sys.argv[1:]) or {"denoise", "inpaint"}
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    if "denoise" in wanted:
        results["denoise"] = make_denoise(rel)
    if "inpaint" in wanted:
        results["inpaint"] = make_inpaint(rel)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def make_denoise(rel) -> dict:
    # Denoise: a 192×192 crop of the DIP paper's F16 with Gaussian noise σ = 25.
    clean = np.asarray(Image.open(DATA / "denoising" / "F16_GT.png").convert("RGB"))[150:342, 150:342]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(HERE / "f16-clean.png")
    Image.fromarray(noisy).save(HERE / "f16-noisy.png")
    command, seconds = run("denoise", rel(HERE / "f16-noisy.png"), "-o", rel(HERE / "f16-denoised.png"),
                           "--seed", "0")
    denoised = np.asarray(Image.open(HERE / "f16-denoised.png").convert("RGB"))
    side_by_side([HERE / "f16-noisy.png", HERE / "f16-denoised.png"], HERE / "denoise-before-after.png")
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
                           "-o", rel(HERE / "kate-inpainted.png"), "--seed", "0", "--iterations", "800")
    filled = np.asarray(Image.open(HERE / "kate-inpainted.png").convert("RGB"))
    side_by_side([HERE / "kate-text.png", HERE / "kate-inpainted.png"], HERE / "inpaint-before-after.png")
    return {"command": command, "seconds": seconds,
            "psnr_damaged": round(psnr(damaged, np.asarray(truth)), 2),
            "psnr_inpainted": round(psnr(filled, np.asarray(truth)), 2),
            "hole_fraction": round(float(hole.mean()), 3)}


if __name__ == "__main__":
    main()
