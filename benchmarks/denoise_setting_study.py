"""How does the input perturbation (``reg_noise_std``) change `fast` denoising? One fit per
value, automatic stop, σ=25 Gaussian noise (seed 0) on a centre crop; one JSON line each.

    python benchmarks/denoise_setting_study.py 135069 --size 128 --reg-noise 0.0333,0.0667,0.1,0.0167,0

Images: ``F16`` (the DIP paper's) or a Berkeley photo's name in ../shared/data/train/bsd200.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dip_bench  # noqa: E402
from engine.dip import loop, presets, tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reg-noise", default="0.0333,0.0667")
    args = parser.parse_args()
    clean, noisy = dip_bench.denoise_case(args.image, args.size)  # the benchmark's own case
    original = presets.FAST["denoise"]
    try:
        for reg in (float(v) for v in args.reg_noise.split(",")):
            presets.FAST["denoise"] = replace(original, reg_noise_std=reg)
            stats = loop.FitStats()
            started = time.perf_counter()
            out = tasks.denoise(noisy, preset="fast", fits=1, device="cpu", stats=stats)
            print(json.dumps({"image": args.image, "size": args.size, "reg_noise_std": reg,
                              "psnr": round(dip_bench.psnr(out, clean), 2), "iterations": stats.iterations_run,
                              "result_iteration": stats.result_iteration,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    finally:
        presets.FAST["denoise"] = original


if __name__ == "__main__":
    main()
