"""Peak memory of the engine's commands on large photos (JSON on stdout): the trained
networks by default, Decompose's modes with ``--ops decompose_segment,...``.

    python benchmarks/memory_bench.py [--sizes 2000x1500,4000x3000] [--ops denoise,sharpen,...]
        [--budget-mb N]

Each run is the whole command a user types, ``python -m engine OP IN.png -o OUT.png`` (PNG in,
16-bit PNG out: reading, the op, writing), in its own process, measured by ``/usr/bin/time``'s
maximum resident set size. The input is a real photo (the DIP paper's zebra) resized to each
size, 8-bit RGB. ``--budget-mb`` sets ``NEURAL_RESTORE_MEMORY_BUDGET_MB`` for the runs (what the
engine is told is free), to see the tiles shrink and the refusals.

Reported per op and size: peak RSS, seconds, the engine's own prediction of its peak
(``engine.budget.working_bytes``, which the GIMP dialog compares with what is free; the
memory check refuses when even the smallest tiles would not fit)
and whether the prediction covered the measured peak. A tiny run gives the fixed part (Python,
numpy, ONNX Runtime, the model).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from engine import budget  # noqa: E402

# op label → (engine op, extra CLI arguments, the op's params for the prediction)
OPS = {
    "denoise": ("denoise", [], {"method": "net"}),
    "sharpen": ("sharpen", [], {}),
    "dejpeg": ("dejpeg", [], {"method": "net"}),
    "inpaint": ("inpaint", ["--mask", "{mask}"], {"method": "net"}),
    "upscale2": ("upscale", ["--scale", "2"], {"scale": 2, "method": "rdn"}),
    "upscale4": ("upscale", ["--scale", "4"], {"scale": 4, "method": "rdn"}),
    "upscale8": ("upscale", ["--scale", "8"], {"scale": 8, "method": "rdn"}),
    # Decompose: 25 iterations (the fit's memory does not grow with them); the mask is the hint.
    **{f"decompose_{mode}": ("decompose", ["--mode", mode, "--iterations", "25", "--device", "cpu",
                                            *(["--hint", "{mask}"] if mode in ("segment", "watermark") else [])],
                             {"mode": mode, "device": "cpu", "preset": "auto"})
       for mode in ("segment", "transparency", "dehaze", "watermark")},
}
# Run only when asked (--ops): the trained nets are the default set.
DEFAULT_OPS = ("denoise", "sharpen", "dejpeg", "inpaint", "upscale2", "upscale4", "upscale8")
# Upscale's input sizes are divided by this (its result is scale² larger).
UPSCALE_SHRINK = {"upscale2": 2, "upscale4": 4, "upscale8": 8}


def photo(width: int, height: int, folder: Path) -> tuple[Path, Path]:
    """The zebra photo at width×height (8-bit PNG) and a mask with a 96² hole in the middle."""
    image = Image.open(SHARED / "dip" / "sr" / "zebra_GT.png").convert("RGB").resize(
        (width, height), Image.Resampling.BICUBIC)
    path = folder / f"photo-{width}x{height}.png"
    image.save(path, compress_level=1)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 2 - 48:height // 2 + 48, width // 2 - 48:width // 2 + 48] = 255
    mask_path = folder / f"mask-{width}x{height}.png"
    Image.fromarray(mask).save(mask_path)
    return path, mask_path


def measure(label: str, width: int, height: int, folder: Path, env: dict[str, str]) -> dict:
    op, extra, params = OPS[label]
    image, mask = photo(width, height, folder)
    out = folder / ("layers" if op == "decompose" else "out.png")  # decompose writes a folder
    command = [sys.executable, "-m", "engine", op, str(image), "-o", str(out),
               *[a.format(mask=mask) for a in extra]]
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    predicted = budget.working_bytes(op, {**params, "passes": 0}, height, width)  # what the dialog is told
    row = {"op": label, "input": [width, height], "returncode": done.returncode,
           "peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(seconds, 1),
           "predicted_mb": round(predicted / 2**20, 1) if predicted else None}
    if predicted:
        row["prediction_covers_peak"] = predicted >= peak_kb * 1024
    if done.returncode != 0:
        engine_part = re.split(r"^(?:Command exited|\tCommand being timed)", done.stderr, flags=re.M)[0]
        row["error"] = engine_part.strip().splitlines()[-1:]  # the engine's last line, before time's report
    shutil.rmtree(out, ignore_errors=True)
    for path in (image, mask, out):
        path.unlink(missing_ok=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64x64,2000x1500,4000x3000",
                        help="input sizes WxH, comma-separated (Upscale's are divided by its scale)")
    parser.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"any of {', '.join(OPS)}")
    parser.add_argument("--budget-mb", type=float, default=None)
    args = parser.parse_args()
    if args.budget_mb:  # for the runs and for the predictions made here
        os.environ[budget.BUDGET_ENV] = str(args.budget_mb)
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.ops.split(","):
            for size in args.sizes.split(","):
                width, height = (int(v) for v in size.split("x"))
                shrink = UPSCALE_SHRINK.get(label, 1)
                width, height = max(16, width // shrink), max(16, height // shrink)
                rows.append(measure(label, width, height, Path(tmp), env))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({"benchmark": "peak memory of the engine's commands", "date": dt.date.today().isoformat(),
                      "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                      "command": " ".join(sys.argv), "budget_mb": args.budget_mb, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
