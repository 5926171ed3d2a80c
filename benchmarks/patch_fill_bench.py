"""Inpaint's texture fill (engine/patch_fill.py): seconds by hole and photo size, split into
OpenCV's copying, finding each copy's source and blending the seams, beside the dialog's
estimate (JSON on stdout).

    python benchmarks/patch_fill_bench.py [--cases 774x706:100,1548x1412:100,…] > benchmarks/results/patch-fill.json

The photo: the DIP paper's flash photo of a cellar (../shared/data/dip), enlarged bicubically
to each size; the hole: a centred square of the given side (wide all through, so all of it is
copied). Each case runs in its own process, so its peak memory (ru_maxrss) is its own.
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

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "dip" / "flash_no_flash" / "cave01_00_flash.jpg"
DEFAULT_CASES = "774x706:46,774x706:100,1548x1412:100,3096x2824:100,1548x1412:300,1548x1412:500"

CHILD = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from engine import patch_fill as pf
from engine.ops import hole_window, patch_fill_seconds

width, height, side = (int(v) for v in sys.argv[3:6])
photo = Image.open(sys.argv[2]).convert("RGB").resize((width, height), Image.BICUBIC)
image = np.asarray(photo, np.float32) / 255.0
hole = np.zeros((height, width), bool)
top, left = (height - side) // 2, (width - side) // 2
hole[top:top + side, left:left + side] = True
started = time.perf_counter()
copies = pf.patch_fill(image, hole, seams=False)
copied = time.perf_counter()
window = hole_window(hole, pf.context_for(side))
crop, crop_hole = image[window], hole[window]
rows, cols = pf.copied_from(copies[window], crop, crop_hole)
found = time.perf_counter()
pf.blend_seams(copies[window], crop_hole, rows, cols)
blended = time.perf_counter()
print(json.dumps({
    "photo": f"{width}x{height}", "hole": f"{side}x{side}",
    "window": f"{window[1].stop - window[1].start}x{window[0].stop - window[0].start}",
    "seconds": {"copy": round(copied - started, 2), "find_sources": round(found - copied, 2),
                "blend_seams": round(blended - found, 2), "total": round(blended - started, 2)},
    "estimate_seconds": round(patch_fill_seconds(side, side, side * side), 1),
    "sources_found": round(float((rows[crop_hole] >= 0).mean()), 4),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="WIDTHxHEIGHT:HOLE_SIDE, comma-separated")
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        size, side = case.split(":")
        width, height = size.split("x")
        done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(PHOTO), width, height, side],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit,
        "command": "python benchmarks/patch_fill_bench.py" + ("" if args.cases == DEFAULT_CASES else f" --cases {args.cases}"),
        "device": "cpu", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "cases": rows,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
