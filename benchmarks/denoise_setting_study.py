"""How do the denoise settings change a DIP fit? One fit per value (``--fits K``: K averaged),
automatic stop, σ=25 Gaussian noise (seed 0) on a centre crop; one JSON line each.

    python benchmarks/denoise_setting_study.py 135069 --size 128 --reg-noise 0.0333,0.0667,0.1,0.0167,0
    python benchmarks/denoise_setting_study.py 135069 --size 128 --settings quality-gpu
    python benchmarks/denoise_setting_study.py 135069 --size 128 --sigma 10 --tv-weight 0,0.01

``--settings fast`` (default) is the CPU's preset; ``quality-gpu`` runs what ``auto`` and
``quality`` run on a GPU (the paper's net with our automatic stop) here on the CPU, one
thread per fit, to check that stop with the paper-sized net where no GPU is lent.

``--tv-weight`` tries total-variation weights (``TaskPreset.tv_weight``: the weight at σ=25,
scaled by the squared ratio of the noise level the engine estimates in the image, which is
reported); ``--sigma`` sets the added noise (in 1/255, default 25).

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
from engine import noise_level  # noqa: E402
from engine.dip import loop, presets, tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reg-noise", default="", help="values to try (default: the settings' own)")
    parser.add_argument("--settings", choices=("fast", "quality-gpu"), default="fast")
    parser.add_argument("--tv-weight", default="", help="TV weights to try (default: the settings' own)")
    parser.add_argument("--sigma", type=float, default=25.0, help="added noise σ in 1/255 (default 25)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--fits", type=int, default=1, help="fits averaged per run (side by side on a "
                        "multi-core CPU, as `quality` does with 4)")
    args = parser.parse_args()
    clean, noisy = dip_bench.denoise_case(args.image, args.size, args.sigma / 255)  # the benchmark's own case
    # The study swaps in its settings as `fast`'s denoise entry and runs `fast` (one fit).
    original = presets.FAST["denoise"]
    settings = presets.QUALITY["denoise"] if args.settings == "quality-gpu" else original
    values = [float(v) for v in args.reg_noise.split(",")] if args.reg_noise else [settings.reg_noise_std]
    tv_weights = [float(v) for v in args.tv_weight.split(",")] if args.tv_weight else [settings.tv_weight]
    runs = [(reg, tv) for reg in values for tv in tv_weights]
    noise_estimate = noise_level.estimate_noise_sigma(noisy)
    try:
        for reg, tv in runs:
            presets.FAST["denoise"] = replace(settings, reg_noise_std=reg, tv_weight=tv, fits=args.fits)
            stats = loop.FitStats()
            started = time.perf_counter()
            seen: list[tuple[float, float]] = []  # (PSNR, seconds) of each preview (~every 5 s)

            def preview(so_far, seen=seen, started=started) -> None:
                seen.append((dip_bench.psnr(so_far, clean), time.perf_counter() - started))

            out = tasks.denoise(noisy, preset="fast", fits=args.fits, device=args.device, stats=stats, preview=preview)
            best = max(seen, default=(float("nan"), 0.0))
            print(json.dumps({"image": args.image, "size": args.size, "settings": args.settings,
                              "sigma": args.sigma, "estimated_sigma": round(noise_estimate * 255, 2),
                              "device": args.device, "fits": args.fits, "reg_noise_std": reg, "tv_weight_at_sigma_25": tv,
                              "tv_weight_used": presets.FAST["denoise"].total_variation_weight(noise_estimate),
                              "psnr": round(dip_bench.psnr(out, clean), 2), "iterations": stats.iterations_run,
                              "result_iteration": stats.result_iteration, "stopped": stats.stopped_early,
                              "best_previewed_psnr": round(best[0], 2), "best_previewed_at_s": round(best[1], 1),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    finally:
        presets.FAST["denoise"] = original


if __name__ == "__main__":
    main()
