"""Would adapting the trained denoise net to the user's own image pay? One JSON on stdout.

    python benchmarks/denoise_adapt_study.py [--cases F16:256,122048:128,135069:128]
        [--noises clipped25,white25,shot] [--steps 400] [--evaluate-at 0,100,200,400]
        [--lr 3e-5] [--alpha 0.5] [--crop 128] [--threads 2]

The idea (not shipped): the shipped blind net loses 0.7 dB to CBM3D on F16 and more on other
smooth pictures, where a per-image method (DIP, CBM3D) adapts to what it sees. Fine-tuning the
net on the noisy image alone with the Recorrupted-to-Recorrupted loss (Pang et al., CVPR
2021: input y + α·z, target y − z/α, z ~ N(0, σ²); for white Gaussian noise of std σ its
expected loss is the loss against the clean image plus a constant) needs no clean data and,
on a CPU, a few hundred small steps. σ is the engine's own estimate
(``engine.noise_level.estimate_noise_sigma``) unless ``--oracle-sigma``.

Each case (the DIP benchmark's images and centre crops, ``dip_bench.denoise_case``) is run
under each noise: ``clipped25`` is dip_bench's own input (σ 25/255, clipped to [0, 1] as an
8-bit file is), ``white25`` the same noise unclipped, ``shot`` signal-dependent noise
(variance 0.01·x + (5/255)², a camera's shot + read noise). Reported per evaluation step:
PSNR of the adapted net with 1 and 8 passes, and the seconds spent adapting so far.
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
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from dip_bench import denoise_case  # noqa: E402
from engine.noise_level import estimate_noise_sigma  # noqa: E402
from onnx_export.models import build_model  # noqa: E402


def noisy_input(kind: str, clean: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "clipped25":
        return clipped
    if kind == "white25":
        return (clean + rng.standard_normal(clean.shape) * 25 / 255).astype(np.float32)
    if kind == "shot":
        std = np.sqrt(0.01 * clean + (5 / 255) ** 2)
        return (clean + rng.standard_normal(clean.shape) * std).astype(np.float32)
    raise SystemExit(f"unknown noise {kind!r}")


def shipped_denoise_net() -> torch.nn.Module:
    card = json.loads((REPO / "engine/models/denoise.json").read_text())
    net = build_model(card["architecture"]["kind"], card["architecture"]["params"])
    weights = torch.load(REPO / "onnx_export/checkpoints/denoise.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(weights["model"])
    return net


def eight_passes(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean of the net over the 8 flips/transposes, each turned back (the engine's passes)."""
    outputs = []
    for t in range(8):
        v = x.transpose(2, 3) if t & 4 else x
        v = v.flip(3) if t & 1 else v
        v = v.flip(2) if t & 2 else v
        o = net(v)
        o = o.flip(2) if t & 2 else o
        o = o.flip(3) if t & 1 else o
        outputs.append(o.transpose(2, 3) if t & 4 else o)
    return torch.stack(outputs).mean(0)


def adapt(case: str, size: int, noise: str, args: argparse.Namespace) -> dict[str, Any]:
    clean, clipped = denoise_case(case, size)
    noisy = noisy_input(noise, clean, clipped)
    sigma = args.oracle_sigma / 255 if args.oracle_sigma else estimate_noise_sigma(np.clip(noisy, 0, 1))
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()  # noqa: E731
    y, truth = as_tensor(noisy), as_tensor(clean)

    def psnr(out: torch.Tensor) -> float:
        return round(float(10 * torch.log10(1 / (out.clamp(0, 1) - truth).square().mean())), 3)

    net = shipped_denoise_net()
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    evaluate_at = {int(v) for v in args.evaluate_at.split(",")}
    height, width = y.shape[2:]
    crop = min(args.crop, height, width)
    row: dict[str, Any] = {"case": f"{case} {size}²", "noise": noise, "sigma_used_255": round(sigma * 255, 2),
                           "psnr_noisy": psnr(y), "by_step": {}}
    spent = 0.0
    for step in range(args.steps + 1):
        if step in evaluate_at:
            with torch.no_grad():
                row["by_step"][step] = {"net": psnr(net(y)), "net_8_passes": psnr(eight_passes(net, y)),
                                        "adapt_seconds": round(spent, 1)}
        if step == args.steps:
            break
        start = time.perf_counter()
        z = torch.randn(y.shape, generator=generator) * sigma
        i = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
        j = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
        window = (..., slice(i, i + crop), slice(j, j + crop))
        loss = (net((y + args.alpha * z)[window]) - (y - z / args.alpha)[window]).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        spent += time.perf_counter() - start
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="F16:256,122048:128,135069:128", help="IMAGE:SIDE, comma-separated")
    parser.add_argument("--noises", default="clipped25,white25,shot")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--evaluate-at", default="0,100,200,400")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--crop", type=int, default=128, help="side of the random training window")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--oracle-sigma", type=float, default=0.0, help="σ in /255 instead of the estimate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases.split(","):
        name, side = case.split(":")
        for noise in args.noises.split(","):
            rows.append(adapt(name, int(side), noise, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({"study": "denoise net adapted to one image (R2R loss)", "date": dt.date.today().isoformat(),
                      "commit": commit, "machine": f"{platform.machine()}, torch {torch.__version__}, "
                                                   f"{args.threads} threads",
                      "command": " ".join(sys.argv), "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
