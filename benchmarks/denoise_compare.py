"""Two denoise nets side by side on many kinds of noise, and on clean inputs (JSON out).

    python benchmarks/denoise_compare.py --models DIR [--baseline DIR] [--max-images N]

The engine's denoise op (method net, strength 100 %, 1 pass) with the models in --baseline
(default: the shipped ones) and in --models, on the held-out training split and the DIP
paper's photos (192² centre crops, as `nets_bench.py`): mean PSNR per noise kind for each, the
mean and the worst per-photo difference. Besides the noise `nets_bench.py` measures, it
covers what a change to the training noise can cost — clean and JPEG'd inputs, light noise —
and noise of other makings: blurred (correlated) noise, JPEG'd white noise, camera-like and
phone-like noise at three levels. Needs ../shared/data and the dev environment.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nets_bench as nb  # noqa: E402  (the sets, crops and noise makers)
from onnx_export import degrade  # noqa: E402
from onnx_export.data import psnr  # noqa: E402

Noise = Callable[[np.ndarray, str], np.ndarray]


def blurred_noise(sigma: float, blur: float, quality: int | None = None) -> Noise:
    """White noise of σ blurred ``blur`` px (not rescaled: blurring weakens it), maybe JPEG'd."""
    def make(truth: np.ndarray, name: str) -> np.ndarray:
        noise = np.random.default_rng(nb.seed_of(name)).normal(0, sigma / 255, truth.shape).astype(np.float32)
        noisy = np.clip(truth + degrade.gaussian_blur(noise, blur), 0, 1).astype(np.float32)
        return degrade.jpeg(noisy, quality) if quality else noisy
    return make


KINDS: dict[str, Noise] = {
    "clean": lambda t, n: t.astype(np.float32),
    "jpeg_q75": lambda t, n: degrade.jpeg(t, 75),
    "jpeg_q90": lambda t, n: degrade.jpeg(t, 90),
    "white_5": lambda t, n: nb.noisy_copy(t, 5, n),
    "white_15": lambda t, n: nb.noisy_copy(t, 15, n),
    "white_25": lambda t, n: nb.noisy_copy(t, 25, n),
    "white_50": lambda t, n: nb.noisy_copy(t, 50, n),
    "grey_grain_25": lambda t, n: nb.grey_grain(t, 25, n),
    "white_25_jpeg_q90": lambda t, n: degrade.jpeg(nb.noisy_copy(t, 25, n), 90),
    "blurred_0.6px_35": blurred_noise(35, 0.6),
    "blurred_1px_50_jpeg_q90": blurred_noise(50, 1.0, 90),
    **{f"camera_like_{s}": (lambda s: lambda t, n: nb.camera_like_noise(t, s, n))(s) for s in (20, 35, 50)},
    **{f"phone_like_{s}": (lambda s: lambda t, n: nb.phone_like_noise(t, s, n))(s) for s in (10, 20, 30)},
}


def denoised(noisy: np.ndarray, models: Path) -> np.ndarray:
    os.environ["NEURAL_RESTORE_MODELS"] = str(models)  # the op finds its nets there (sessions cached per file)
    return nb.run_denoise_net(noisy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder with the candidate denoise.onnx")
    parser.add_argument("--baseline", type=Path, default=nb.REPO / "engine" / "models")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()
    sets = nb.image_sets(args.max_images)
    report: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=nb.REPO,
                                             capture_output=True, text=True).stdout.strip(),
                    "command": "python benchmarks/denoise_compare.py " + " ".join(sys.argv[1:]),
                    "baseline": str(args.baseline), "models": str(args.models),
                    "measure": "PSNR (dB) of the denoise op, method net, strength 100 %, 1 pass, 192² centre crops",
                    "results": {}}
    for set_name in (nb.SPLIT_SET, "dip"):
        crops = list(nb.centre_crops(sets[set_name]))
        for kind, make in KINDS.items():
            base, cand = [], []
            for path, truth in crops:
                noisy = make(truth, path.name)
                base.append(psnr(denoised(noisy, args.baseline), truth))
                cand.append(psnr(denoised(noisy, args.models), truth))
            diff = np.array(cand) - np.array(base)
            row = {"images": len(crops), "psnr_baseline": nb.mean(base), "psnr_models": nb.mean(cand),
                   "difference_mean": round(float(diff.mean()), 3), "difference_worst": round(float(diff.min()), 3)}
            report["results"][f"{set_name}/{kind}"] = row
            print(set_name, kind, row, file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
