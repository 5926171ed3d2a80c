"""Where should inpainting stop? Records, every 25 iterations of one `fast` inpaint run, the
averaged output's PSNR inside the hole (against the truth) and the signals a stopping rule
can see without the truth: the relative change of the averaged output over the whole window
and inside the hole only. Prints one JSON (the trajectory, and for each candidate rule where
it stops and the hole PSNR there vs the run's best).

    python benchmarks/inpaint_stop_study.py kate --size 96 --iterations 2000
    python benchmarks/inpaint_stop_study.py vase --size 96 --iterations 2000
    python benchmarks/inpaint_stop_study.py block_barbara_tablecloth --size 128 --iterations 1000

Images and masks as in dip_bench (../shared/data/dip/inpainting, black = missing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "dip" / "inpainting"

from engine.dip import loop, tasks  # noqa: E402

CHECK = 25


def load(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith(("block_", "missing50_")):  # dip_bench's other inpainting cases
        sys.path.insert(0, str(REPO / "benchmarks"))
        from inpaint_net_study import load_case

        return load_case(name, size)
    image = Image.open(DATA / f"{name}.png").convert("RGB")
    mask = Image.open(DATA / f"{name}_mask.png").convert("L")
    scale = size / max(image.size)
    if scale < 1:
        new = (round(image.width * scale), round(image.height * scale))
        image, mask = image.resize(new, Image.LANCZOS), mask.resize(new, Image.NEAREST)
    return np.asarray(image, dtype=np.float32) / 255.0, np.asarray(mask) < 128


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def record(name: str, size: int, iterations: int, seed: int) -> dict:
    truth, hole = load(name, size)
    damaged = truth.copy()
    damaged[hole] = 0.0
    checks: list[dict] = []
    raw: list[np.ndarray] = []  # the loop's averaged net output (the window), what its rule sees
    count = [0]

    def preview(filled: np.ndarray) -> None:
        # Called every iteration (interval 0) with the finished image; raw[-1] is its window.
        count[0] += 1
        if count[0] % CHECK:
            return
        window = raw[-1]
        entry = {"iteration": count[0], "psnr_hole": round(psnr(filled[hole], truth[hole]), 3),
                 "_image": filled.copy(), "_window": window.copy()}
        if checks:
            last, last_window = checks[-1]["_image"], checks[-1]["_window"]
            entry["change_all"] = float(np.linalg.norm(window - last_window) / np.linalg.norm(window))
            entry["change_hole"] = float(np.linalg.norm(filled[hole] - last[hole]) / np.linalg.norm(filled[hole]))
        checks.append(entry)

    real_fit = tasks.fit

    def fit_spy(*args, **kwargs):
        finished_preview = kwargs["preview"]

        def spy(outputs):
            raw.append(outputs["image"])
            del raw[:-1]
            finished_preview(outputs)

        kwargs["preview"] = spy
        return real_fit(*args, **kwargs)

    defaults = loop.fit_generators.__kwdefaults__
    saved = defaults["preview_interval_s"]
    defaults["preview_interval_s"] = 0.0
    tasks.fit = fit_spy
    try:
        tasks.inpaint(damaged, hole, iterations=iterations, seed=seed, device="cpu", preset="fast",
                      preview=preview)
    finally:
        defaults["preview_interval_s"] = saved
        tasks.fit = real_fit
    for entry in checks:
        del entry["_image"], entry["_window"]
    return {"image": name, "size": list(truth.shape[:2]), "hole_fraction": round(float(hole.mean()), 3),
            "checks": checks}


def plateau_stop(changes: list[float], patience: int, drop: float, min_iteration: int) -> int | None:
    """Index of the kept check of the loop's plateau rule (`StoppingRule`) on a series."""
    lowest, kept, since = float("inf"), 0, 0
    for index, change in enumerate(changes):
        if change < lowest * (1 - drop):
            lowest, kept, since = change, index, 0
        else:
            since += 1
        if since >= patience and (index + 1) * CHECK >= min_iteration:
            return kept
    return None


def threshold_stop(changes: list[float], threshold: float, min_iteration: int) -> int | None:
    for index, change in enumerate(changes):
        if change < threshold and (index + 1) * CHECK >= min_iteration:
            return index
    return None


def evaluate(run: dict) -> dict:
    checks = run["checks"][1:]  # the first check has no change yet
    best = max(checks, key=lambda c: c["psnr_hole"])
    out = {"best": {"iteration": best["iteration"], "psnr_hole": best["psnr_hole"]},
           "last": {"iteration": checks[-1]["iteration"], "psnr_hole": checks[-1]["psnr_hole"]}}
    for signal in ("change_all", "change_hole"):
        series = [c[signal] for c in checks]
        for patience in (4, 8):
            kept = plateau_stop(series, patience, 0.01, 200)
            out[f"plateau_{signal}_p{patience}"] = (None if kept is None else
                                                    {"iteration": checks[kept]["iteration"],
                                                     "psnr_hole": checks[kept]["psnr_hole"]})
        for threshold in (8e-3, 6e-3, 4e-3, 3e-3, 2e-3, 1.5e-3, 1e-3, 7e-4, 5e-4):
            index = threshold_stop(series, threshold, 200)
            out[f"below_{signal}_{threshold:g}"] = (None if index is None else
                                                    {"iteration": checks[index]["iteration"],
                                                     "psnr_hole": checks[index]["psnr_hole"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="kate, vase, library, or dip_bench's block_<name> / missing50_<name>")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = record(args.image, args.size, args.iterations, args.seed)
    print(json.dumps({**run, "rules": evaluate(run)}, indent=1))


if __name__ == "__main__":
    main()
