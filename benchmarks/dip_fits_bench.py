"""Averaged fits one after the other vs side by side on a CPU (JSON on stdout).

    python benchmarks/dip_fits_bench.py [--sizes 128,256] [--fits 4] [--iterations 200] [--cores 2]

The same `tasks.denoise` call (F16 σ=25 centre crop, ``fits`` fits, a fixed iteration count so
both runs do the same work) runs in two child processes, one after the other: with
``OMP_NUM_THREADS=1`` the engine plans one fit at a time on one thread (what a 2-core machine
did before fits ran side by side: one core is left free for a single fit), with
``OMP_NUM_THREADS=<cores>`` it runs ``min(fits, cores)`` fits side by side, one thread each
(`loop.cpu_fit_plan`). Reported per size: wall seconds of each, the speed-up, and whether the
two results are identical (they should be: each fit runs on one thread either way).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
F16 = REPO.parent / "shared" / "data" / "dip" / "denoising" / "F16_GT.png"

CHILD = r"""
import json, sys, time
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from engine.dip import loop, tasks
from engine.dip.loop import FitStats
size, fits, iterations, out = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
image = np.asarray(Image.open(sys.argv[6]).convert("RGB"), dtype=np.float32) / 255.0
y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
clean = image[y:y + size, x:x + size]
noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
stats = FitStats()
started = time.perf_counter()
result = tasks.denoise(noisy, iterations=iterations, fits=fits, device="cpu", preset="fast", stats=stats)
seconds = time.perf_counter() - started
np.save(out, result)
psnr = float(10 * np.log10(1 / np.mean((result.astype(np.float64) - clean) ** 2)))
print(json.dumps({"seconds": round(seconds, 2), "side_by_side": stats.side_by_side,
                  "threads_per_fit": loop.cpu_fit_plan(fits)[1], "psnr_db": round(psnr, 3)}))
"""


def run_child(cores: int, size: int, fits: int, iterations: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(cores)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(size), str(fits), str(iterations),
                           str(out), str(F16)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256", help="square crop sides, comma-separated")
    parser.add_argument("--fits", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=200, help="per fit (fixed: no automatic stop)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="cores the side-by-side run may use (default: all usable)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
                    "device": "cpu",
                    "machine": {"platform": platform.platform(), "cpus_usable": len(os.sched_getaffinity(0))},
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "task": f"denoise F16 σ=25, preset fast, {args.fits} fits × {args.iterations} iterations",
                    "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            one, beside = Path(scratch, f"one_{size}.npy"), Path(scratch, f"beside_{size}.npy")
            one_at_a_time = run_child(1, size, args.fits, args.iterations, one)
            side_by_side = run_child(args.cores, size, args.fits, args.iterations, beside)
            report["results"][f"{size}px"] = {
                "one_at_a_time": one_at_a_time, "side_by_side": side_by_side,
                "speedup": round(one_at_a_time["seconds"] / side_by_side["seconds"], 2),
                "identical_results": bool(np.array_equal(np.load(one), np.load(beside))),
            }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
