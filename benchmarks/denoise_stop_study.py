"""Where should a DIP denoise run stop? Record the averaged output's path, then score stopping
rules on the recorded paths (one run serves every rule).

    python benchmarks/denoise_stop_study.py record --images F16,122048,135069 --sizes 64,128 \
        --seeds 0,1,2 --out /tmp/paths.jsonl
    python benchmarks/denoise_stop_study.py score /tmp/paths.jsonl
    python benchmarks/denoise_stop_study.py record --images F16 --sizes 512 --seeds 0 \
        --settings quality-gpu --device cuda --per-side 14 --out /tmp/paths-gpu.jsonl   # on a GPU

``record`` runs the ``fast`` denoise settings (the light net, one fit, the automatic stop off;
``--settings quality-gpu``: the paper's net) for ``--per-side`` iterations per pixel of side
(default 26, about twice where the light net's averaged output peaks), and writes one JSON
line per run: every 25 iterations (the rule's check interval) the averaged output's PSNR
against the clean image, the rule's change measure ‖A_t − A_{t−25}‖ / ‖A_t‖, and the RMS
residual ‖y − A_t‖ / √N against the noisy input y (both on the average as previews get it,
clipped to [0, 1]; the live rule sees it unclipped); plus the noise level the engine
estimates in y.
``--noise`` picks Gaussian (``white``) or signal-dependent (``shot``: σ² = a·x + b, σ = the given
level at mid-grey) noise.

``score`` estimates the noise level again with the engine's estimator as it is now (the noisy
inputs are reproducible), replays each rule's decisions check by check (the live rule reads its state one
check late; replaying that lag changes nothing but the stop by one check, so it is ignored)
and reports, per rule, how far below the run's best averaged output the returned one is. The
rules see each path only up to where the CPU's iteration cap would end the run
(``--cpu-budget N``: N iterations at 256², default the engine's; 0 = no cap, as on a GPU);
the best is that of the path up to ``--max-per-side``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dip_bench  # noqa: E402

CHECK_EVERY = 25


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent).stdout.strip()


def _cpu_model() -> str:
    """The CPU's model name and its widest vector extension (Linux; paths differ by SIMD width)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "CPU model unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {vector}"


def noisy_case(image: str, size: int, sigma: float, noise: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean, _ = dip_bench.denoise_case(image, size, sigma)
    rng = np.random.default_rng(seed)
    if noise == "white":
        std = np.full(clean.shape, sigma)
    else:  # shot + read noise with the given σ at mid-grey, a third of the variance from read noise
        variance = sigma ** 2 * (2 / 3 * clean / 0.5 + 1 / 3)
        std = np.sqrt(variance)
    return clean, np.clip(clean + rng.normal(0.0, 1.0, clean.shape) * std, 0, 1).astype(np.float32)


def record(args) -> None:
    import torch

    from engine.dip import loop, presets
    from engine.noise_level import estimate_noise_sigma

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = f"{platform.machine()}, {os.cpu_count()} cores ({_cpu_model()})"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    settings = presets.QUALITY["denoise"] if args.settings == "quality-gpu" else presets.FAST["denoise"]
    with open(args.out, "a") as out:
        for image in args.images.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for sigma in (float(s) for s in args.sigmas.split(",")):
                    clean, noisy = noisy_case(image, size, sigma / 255, args.noise)
                    target = torch.from_numpy(noisy.transpose(2, 0, 1).copy())[None].to(device)
                    iterations = int(args.per_side * size)
                    for seed in (int(s) for s in args.seeds.split(",")):
                        path: list[dict[str, float]] = []
                        previous: list[np.ndarray] = []
                        seen = [0]

                        def preview(outputs: dict[str, np.ndarray]) -> None:
                            seen[0] += 1
                            if seen[0] % CHECK_EVERY:
                                return
                            averaged = outputs["image"]
                            entry = {"iteration": seen[0], "psnr": dip_bench.psnr(np.clip(averaged, 0, 1), clean),
                                     "residual": float(np.sqrt(np.mean((noisy - averaged) ** 2)))}
                            if previous:
                                entry["change"] = float(np.linalg.norm(averaged - previous[0]) / np.linalg.norm(averaged))
                            previous[:] = [averaged.copy()]
                            path.append(entry)

                        started = time.perf_counter()
                        loop.fit_generators(
                            lambda outputs: torch.nn.functional.mse_loss(outputs["image"], target),
                            [loop.Generator("image", settings.net, 3)], (size, size),
                            iterations=iterations, device=args.device, seed=seed, lr=settings.lr,
                            reg_noise_std=settings.reg_noise_std, ema=settings.ema,
                            preview=preview, preview_interval_s=0.0)
                        best = max(path, key=lambda e: e["psnr"])
                        line = {"image": image, "size": size, "sigma": sigma, "noise": args.noise, "seed": seed,
                                "settings": args.settings, "torch": torch.__version__,
                                "recorded": {"date": time.strftime("%Y-%m-%d"), "commit": _commit()},
                                "machine": machine, "device": device.type, "threads": args.threads, "iterations": iterations,
                                "estimated_sigma": estimate_noise_sigma(noisy) * 255,
                                "noisy_psnr": dip_bench.psnr(noisy, clean),
                                "best": {"iteration": best["iteration"], "psnr": best["psnr"]},
                                "seconds": round(time.perf_counter() - started, 1), "path": path}
                        out.write(json.dumps(line) + "\n")
                        out.flush()
                        print(json.dumps({k: v for k, v in line.items() if k != "path"}), flush=True)


Rule = Callable[[dict[str, Any], list[dict[str, float]]], int]  # → index of the returned check


def plateau_rule(drop: float, patience: int, min_iterations: int = 200) -> Rule:
    """`StoppingRule`'s plateau test: keep the last check that lowered the change by ``drop``;
    stop ``patience`` checks later."""
    def decide(run: dict[str, Any], path: list[dict[str, float]]) -> int:
        lowest, kept, since = float("inf"), 0, 0
        for i, entry in enumerate(path):
            if "change" not in entry:
                continue
            if entry["change"] < lowest * (1 - drop):
                lowest, kept, since = entry["change"], i, 0
            else:
                since += 1
            if since >= patience and entry["iteration"] >= min_iterations:
                return kept
        return kept if since else len(path) - 1
    return decide


def discrepancy_rule(factor: float, fallback: Rule | None = None, min_iterations: int = 200,
                     exponent: float = 0.0, cap: float = 1.0) -> Rule:
    """Morozov's discrepancy principle with the estimated noise level: return the first check
    whose RMS residual to the noisy input is at most f × σ̂ (or ``fallback``'s check,
    whichever comes first; without one, the last check). f = ``factor`` at 64² and
    1 − (1 − factor) · (64 / side) ** ``exponent`` elsewhere, at most ``cap``."""
    def decide(run: dict[str, Any], path: list[dict[str, float]]) -> int:
        scaled = min(cap, 1.0 - (1.0 - factor) * (64 / run["size"]) ** exponent)
        bound = scaled * run["estimated_sigma"] / 255
        other = fallback(run, path) if fallback is not None else len(path) - 1
        for i, entry in enumerate(path[: other + 1]):
            if entry["residual"] <= bound and entry["iteration"] >= min_iterations:
                return i
        return other
    return decide


def score(args) -> None:
    runs = [json.loads(line) for name in args.paths for line in Path(name).read_text().splitlines() if line.strip()]
    from engine.dip import presets
    from engine.noise_level import estimate_noise_sigma

    # The CPU's cap on iterations × pixels (`presets.CPU_PIXEL_ITERATION_BUDGET`), given as
    # iterations at 256²; 0 = none. Paths recorded on a GPU are never cut (no cap there).
    budget = (presets.CPU_PIXEL_ITERATION_BUDGET if args.cpu_budget is None else args.cpu_budget * 256 * 256)
    for run in runs:  # the preset's own maximum, not the recording's
        run["path"] = [e for e in run["path"] if e["iteration"] <= args.max_per_side * run["size"]]
        # Rules are scored against the best of that path; on a CPU they see it only up to the cap.
        run["uncapped"] = run["path"]
        run["best_psnr"] = max(e["psnr"] for e in run["path"])
        if budget and run.get("device", "cpu") == "cpu":
            cap = max(presets.MIN_ITERATIONS, budget / run["size"] ** 2)
            run["path"] = [e for e in run["path"] if e["iteration"] <= cap]
        # The engine's estimate as it is now (the recorded one is the estimator of the day).
        noisy = noisy_case(run["image"], run["size"], run["sigma"] / 255, run["noise"])[1]
        run["estimated_sigma"] = estimate_noise_sigma(noisy) * 255

    def engine_rule(run: dict[str, Any], path: list[dict[str, float]]) -> int:
        """The `fast` preset's own rule for this size, as the engine runs it now."""
        rule = presets.FAST["denoise"].stopping_rule(run["size"] ** 2)
        assert rule is not None
        fallback = None if rule.patience is None else plateau_rule(rule.min_relative_drop, rule.patience,
                                                                   rule.min_iterations)
        if rule.discrepancy_factor is None:
            assert fallback is not None
            return fallback(run, path)
        return discrepancy_rule(rule.discrepancy_factor, fallback, rule.min_iterations)(run, path)

    rules: dict[str, Rule] = {"engine (fast preset)": engine_rule, "plateau 1% 8 (before)": plateau_rule(0.01, 8)}
    for drop in (0.01, 0.02, 0.03, 0.05):
        for patience in (4, 6, 8, 12):
            rules[f"plateau {drop:.0%} {patience}"] = plateau_rule(drop, patience)
    for factor in (0.9, 0.93, 0.94, 0.95, 0.96, 0.97, 1.0):
        rules[f"discrepancy {factor}"] = discrepancy_rule(factor)
        for patience in (8, 12, 16):
            rules[f"discrepancy {factor} or plateau 1% {patience}"] = discrepancy_rule(
                factor, plateau_rule(0.01, patience))
    for exponent in (0.5, 0.66, 1.0):
        for cap in (0.975, 0.98, 1.0):
            rules[f"discrepancy 0.95 × (64/side)^{exponent} ≤ {cap} or plateau 1% 12"] = discrepancy_rule(
                0.95, plateau_rule(0.01, 12), exponent=exponent, cap=cap)
    report: dict[str, Any] = {"runs": len(runs), "rules": {}}
    for name, rule in rules.items():
        short = []
        for run in runs:
            path = run["path"]
            short.append(run["best_psnr"] - path[rule(run, path)]["psnr"])
        report["rules"][name] = {"mean_short_db": round(float(np.mean(short)), 3),
                                 "worst_short_db": round(float(np.max(short)), 3),
                                 "short_db": [round(v, 2) for v in short]}
    report["runs_at_best"] = [
        {"case": f"{r['image']} {r['size']} σ{r['sigma']:g} {r['noise']} seed {r['seed']}",
         "estimated_sigma": round(r["estimated_sigma"], 2),
         "best_iteration": max(r["uncapped"], key=lambda e: e["psnr"])["iteration"],
         "best_psnr": round(r["best_psnr"], 2),
         "residual_over_estimate_at_best": round(
             max(r["uncapped"], key=lambda e: e["psnr"])["residual"] * 255 / r["estimated_sigma"], 3),
         "cpu_cap": r["path"][-1]["iteration"] if budget and r.get("device", "cpu") == "cpu" else None}
        for r in runs]
    recorded_on = sorted({f"{r.get('machine', 'machine not recorded')}, torch {r.get('torch', '?')}" for r in runs})
    print(json.dumps({"runs": report["runs"], "files": [str(n) for n in args.paths], "recorded_on": recorded_on, "scored": {
        "date": time.strftime("%Y-%m-%d"), "commit": _commit(), "max_iterations_per_side": args.max_per_side,
        "cpu_budget_iterations_at_256": round(budget / (256 * 256)) if budget else None}},
        ensure_ascii=False))
    for name, scored in report["rules"].items():
        print(json.dumps({"rule": name, **scored}, ensure_ascii=False))
    for run in report["runs_at_best"]:
        print(json.dumps(run, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--images", default="F16,122048,135069")
    rec.add_argument("--sizes", default="64,128")
    rec.add_argument("--sigmas", default="25")
    rec.add_argument("--seeds", default="0,1,2")
    rec.add_argument("--noise", choices=("white", "shot"), default="white")
    rec.add_argument("--per-side", type=float, default=26.0, help="iterations per pixel of side")
    rec.add_argument("--threads", type=int, default=1)
    rec.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the fit's device; every check's "
                     "averaged output is copied to the host, so a GPU run is slower than the engine's)")
    rec.add_argument("--settings", choices=("fast", "quality-gpu"), default="fast",
                     help="quality-gpu: the paper's net, as `quality` runs it on a GPU")
    rec.add_argument("--out", required=True)
    score_parser = sub.add_parser("score")
    score_parser.add_argument("paths", nargs="+")
    score_parser.add_argument("--max-per-side", type=float, default=22.0,
                              help="the preset's iteration maximum per pixel of side (fast: 22)")
    score_parser.add_argument("--cpu-budget", type=int, default=None,
                              help="the CPU's iteration cap as iterations at 256² (default: the engine's; "
                                   "0 = none, as on a GPU); paths are cut there")
    args = parser.parse_args()
    record(args) if args.command == "record" else score(args)


if __name__ == "__main__":
    main()
