"""Which net should fill which hole? Runs `fast` inpainting (automatic stop) with candidate
nets side by side on dip_bench's inpainting cases and prints one JSON line per run: PSNR
inside the hole where the run stopped, the best averaged output seen on the way (every 100
iterations), iterations, seconds, and biharmonic's PSNR in the hole.

    python benchmarks/inpaint_net_study.py --size 128 --nets skip16,noskip5,noskip6 \\
        --cases vase,library,kate,block_barbara_tablecloth,block_library_shelves

Cases: the paper's masks (``vase``, ``library``, ``kate``), dip_bench's block holes
(``block_<name>``) and 50 % missing pixels (``missing50_<name>``). Nets: see ``NETS``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import dip_bench  # noqa: E402
from engine.dip import loop, nets, presets, tasks  # noqa: E402

NETS: dict[str, nets.NetConfig] = {
    "skip16": nets.LIGHT_INPAINT,
    # No skip branches, nearest upsampling (the authors' choice for vase / library).
    "noskip5": replace(nets.LIGHT_INPAINT, channels_skip=(0,) * 5),
    "noskip6": nets.NetConfig(channels_down=(16, 32, 64, 64, 128, 128), channels_up=(16, 32, 64, 64, 128, 128),
                              channels_skip=(0,) * 6, upsample_mode="nearest"),
    # The library notebook's net: 5×5 downsampling convs, no 1×1 after the decoder convs.
    "library6": nets.NetConfig(channels_down=(16, 32, 64, 128, 128, 128), channels_up=(16, 32, 64, 128, 128, 128),
                               channels_skip=(0,) * 6, kernel_down=5, upsample_mode="nearest",
                               extra_1x1_up=False),
    # Scattered holes (missing pixels): bilinear upsampling, a smoother prior. The authors'
    # restoration net for kate (supplement fig. 14): no skips, 16–128 channels.
    "noskip5_bilinear": nets.NetConfig(channels_down=(16, 32, 64, 128, 128), channels_up=(16, 32, 64, 128, 128),
                                       channels_skip=(0,) * 5, upsample_mode="bilinear"),
    # Denoising's light net (4-channel skips, bilinear).
    "denoise_light": nets.LIGHT_DENOISE,
}
# Variants that also change preset fields: name -> (net, TaskPreset overrides).
VARIANTS: dict[str, tuple[str, dict]] = {
    **{name: (name, {}) for name in NETS},
    "noskip5_ema995": ("noskip5", {"ema": 0.995}),
    "noskip5_ema998": ("noskip5", {"ema": 0.998}),
    "noskip5_fixed200": ("noskip5", {"stop": None, "min_iterations": 200, "max_iterations": 200}),
    "noskip5_fixed300": ("noskip5", {"stop": None, "min_iterations": 300, "max_iterations": 300}),
    "skip16_fixed300": ("skip16", {"stop": None, "min_iterations": 300, "max_iterations": 300}),
}


def load_case(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith("block_"):
        path, centre = dip_bench.BLOCK_CASES[name[len("block_"):]]
        truth = dip_bench.as_float(dip_bench.resized_to(dip_bench.open_photo(path), size))
        return truth, dip_bench.block_hole(truth.shape[:2], centre)
    if name.startswith("missing50_"):
        path = dip_bench.DATA / "restoration" / f"{name[len('missing50_'):]}.png"
        truth = dip_bench.centre_crop(dip_bench.as_float(dip_bench.open_photo(path)), size)
        rng = np.random.default_rng(dip_bench.MISSING_SEED)
        return truth, rng.random(truth.shape[:2]) < dip_bench.MISSING_FRACTION
    image = dip_bench.resized_to(Image.open(dip_bench.DATA / "inpainting" / f"{name}.png").convert("RGB"), size)
    mask = Image.open(dip_bench.DATA / "inpainting" / f"{name}_mask.png").convert("L").resize(image.size, Image.NEAREST)
    return dip_bench.as_float(image), np.asarray(mask) < 128


def run(case: str, net_name: str, size: int, pin_net: bool) -> dict:
    from skimage.restoration import inpaint_biharmonic

    truth, hole = load_case(case, size)
    damaged = truth.copy()
    damaged[hole] = 0.0
    biharmonic = dip_bench.psnr(inpaint_biharmonic(damaged, hole, channel_axis=-1), truth, hole)
    trajectory: list[tuple[int, float]] = []
    calls = [0]

    def preview(filled: np.ndarray) -> None:
        calls[0] += 1
        if calls[0] % 100 == 0:
            trajectory.append((calls[0], dip_bench.psnr(filled, truth, hole)))

    original = dict(presets.FAST)
    defaults = loop.fit_generators.__kwdefaults__
    saved_interval = defaults["preview_interval_s"]
    if pin_net:  # every hole gets this net (otherwise the engine's own choice runs)
        net_key, overrides = VARIANTS[net_name]
        settings = replace(presets.FAST["inpaint"], net=NETS[net_name if net_name in NETS else net_key], **overrides)
        presets.FAST["inpaint"] = settings
    defaults["preview_interval_s"] = 0.0
    stats = loop.FitStats()
    started = time.perf_counter()
    try:
        out = tasks.inpaint(damaged, hole, device="cpu", preset="fast", stats=stats, preview=preview)
    finally:
        presets.FAST.clear()
        presets.FAST.update(original)
        defaults["preview_interval_s"] = saved_interval
    best = max(trajectory, key=lambda t: t[1]) if trajectory else (None, None)
    result = dip_bench.psnr(out, truth, hole)
    return {"case": case, "size": size, "net": net_name if pin_net else "engine", "psnr_in_hole": result,
            "biharmonic_in_hole": biharmonic, "margin": round(result - biharmonic, 2),
            "iterations": stats.iterations_run, "stopped_automatically": stats.stopped_early,
            "best_every_100": {"iteration": best[0], "psnr_in_hole": best[1]},
            "trajectory_every_100": [value for _, value in trajectory],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--nets", default="skip16,noskip6",
                        help=f"comma-separated, from {','.join(VARIANTS)}, or 'engine' (the engine's own choice)")
    parser.add_argument("--cases", default="vase,library,block_barbara_tablecloth")
    args = parser.parse_args()
    for case in args.cases.split(","):
        for net_name in args.nets.split(","):
            print(json.dumps(run(case, net_name, args.size, pin_net=net_name != "engine")), flush=True)


if __name__ == "__main__":
    main()
