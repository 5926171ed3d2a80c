"""DIP benchmark: PSNR and wall time of our DIP against CBM3D / biharmonic, side by side, one run.

    python benchmarks/dip_bench.py [--device cpu|cuda] [--size 256] [--only denoise,inpaint]
                                   [--paper-iterations N] > benchmarks/results/<name>.json

Images come from the DIP paper's own set (../shared/data/dip): F16 with Gaussian noise
σ = 25 (fixed seed) for denoising; kate / library / vase with their masks for inpainting
(the masks are black where pixels are missing; our API takes True = fill). ``--size`` centre-
crops (denoise) or resizes (inpaint) so a CPU run stays affordable.

Modes: ``auto`` is what users get (default net and iteration count for the device);
``paper`` is the paper's net with its iteration count. On a CPU the paper mode is far too
slow to run to the end (≈ 2 s/iteration at 256² here), so unless --paper-iterations is
given it runs 20 iterations, reports the measured s/iteration and the projected time, and
marks the entry ``"projected": true`` with no PSNR.
Baselines: CBM3D (``bm3d`` package, told the true σ) and skimage's biharmonic inpainting,
both benchmark-only dependencies.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "dip"

from engine.dip import nets, tasks  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = (np.clip(a, 0, 1).astype(np.float64) - b) ** 2
    mse = diff[where].mean() if where is not None else diff.mean()
    return round(float(10 * np.log10(1.0 / mse)), 2)


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y:y + size, x:x + size]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - started, 2)


def paper_entry(run, iterations_full: int, paper_iterations: int | None) -> dict:
    if paper_iterations is not None:
        out, seconds = timed(lambda: run(paper_iterations))
        return {"out": out, "seconds": seconds, "iterations": paper_iterations}
    probe = 20
    _, seconds = timed(lambda: run(probe))
    per_iteration = seconds / probe
    return {"projected": True, "iterations": iterations_full, "probe_iterations": probe,
            "seconds_per_iteration": round(per_iteration, 3),
            "seconds": round(per_iteration * iterations_full, 1)}


def bench_denoise(size: int, device: str, paper_iterations: int | None) -> dict:
    import bm3d

    clean = centre_crop(load_rgb(DATA / "denoising" / "F16_GT.png"), size)
    sigma = 25 / 255
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
    result = {"image": f"F16 centre {clean.shape[1]}x{clean.shape[0]}, sigma 25", "noisy_psnr": psnr(noisy, clean)}
    out, seconds = timed(lambda: bm3d.bm3d_rgb(noisy, sigma))
    result["cbm3d"] = {"psnr": psnr(out, clean), "seconds": seconds}
    out, seconds = timed(lambda: tasks.denoise(noisy, device=device))
    result["auto"] = {"psnr": psnr(out, clean), "seconds": seconds}
    entry = paper_entry(lambda n: tasks.denoise(noisy, iterations=n, device=device, net=nets.PAPER_DENOISE),
                        3000, paper_iterations)
    if "out" in entry:
        entry["psnr"] = psnr(entry.pop("out"), clean)
    result["paper"] = entry
    return result


def bench_inpaint(name: str, size: int, device: str, paper_iterations: int | None) -> dict:
    from skimage.restoration import inpaint_biharmonic

    image = Image.open(DATA / "inpainting" / f"{name}.png").convert("RGB")
    mask = Image.open(DATA / "inpainting" / f"{name}_mask.png").convert("L")
    scale = size / max(image.size)
    if scale < 1:
        new = (round(image.width * scale), round(image.height * scale))
        image, mask = image.resize(new, Image.LANCZOS), mask.resize(new, Image.NEAREST)
    truth = np.asarray(image, dtype=np.float32) / 255.0
    hole = np.asarray(mask) < 128  # black = missing in the paper's masks
    damaged = truth.copy()
    damaged[hole] = 0.0
    result = {"image": f"{name} {truth.shape[1]}x{truth.shape[0]}", "hole_fraction": round(float(hole.mean()), 3)}
    out, seconds = timed(lambda: inpaint_biharmonic(damaged, hole, channel_axis=-1))
    result["biharmonic"] = {"psnr": psnr(out, truth), "psnr_in_hole": psnr(out, truth, hole), "seconds": seconds}
    out, seconds = timed(lambda: tasks.inpaint(damaged, hole, device=device))
    result["auto"] = {"psnr": psnr(out, truth), "psnr_in_hole": psnr(out, truth, hole), "seconds": seconds}
    entry = paper_entry(lambda n: tasks.inpaint(damaged, hole, iterations=n, device=device, net=nets.PAPER_INPAINT),
                        5000, paper_iterations)
    if "out" in entry:
        out = entry.pop("out")
        entry.update(psnr=psnr(out, truth), psnr_in_hole=psnr(out, truth, hole))
    result["paper"] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--only", default="denoise,inpaint")
    parser.add_argument("--inpaint-images", default="kate,library,vase")
    parser.add_argument("--paper-iterations", type=int, default=None)
    args = parser.parse_args()
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    report = {
        "benchmark": "dip_bench", "date": dt.date.today().isoformat(), "commit": commit,
        "command": " ".join(["python", "benchmarks/dip_bench.py", *sys.argv[1:]]),
        "device": args.device,
        "machine": (torch.cuda.get_device_name(0) if args.device == "cuda"
                    else f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"),
        "torch": torch.__version__, "results": {},
    }
    wanted = args.only.split(",")
    if "denoise" in wanted:
        report["results"]["denoise_f16"] = bench_denoise(args.size, args.device, args.paper_iterations)
    if "inpaint" in wanted:
        for name in args.inpaint_images.split(","):
            report["results"][f"inpaint_{name}"] = bench_inpaint(name, args.size, args.device, args.paper_iterations)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
