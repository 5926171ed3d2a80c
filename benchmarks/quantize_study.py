"""Would 8-bit (int8) versions of the shipped nets pay? One JSON on stdout: each net as shipped
(float32) beside its int8 version, in one run — ONNX Runtime seconds per run (CPU, one thread,
interleaved rounds) and PSNR on the held-out split of the training folders.

    python benchmarks/quantize_study.py [--nets sharpen,rdn_x2,rdn_x4,denoise] [--side 256]
                                        [--calibration-degradation training|test] [--max-images N] [--out DIR]

int8 here is ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``):
QDQ format, weights int8 per output channel, activations uint8 with ranges calibrated (min/max)
on ``--calibration`` crops of the *training* split degraded as in training
(``onnx_export.degrade``: bicubic downscale for the RDNs, the blind blur / noise mixes for
sharpen / denoise). ``--out DIR`` keeps the int8 files with a copy of each card (its checksum
and a ``quantization`` entry updated), so ``nets_bench.py --models DIR`` can measure them too.

PSNR protocol (``nets_bench.py``'s, one pass): upscale Y-PSNR with ``scale`` px shaved against
the antialiased bicubic LR; sharpen on 192² centre crops blurred with Gaussian σ = 1.6; denoise
on 192² centre crops with white Gaussian σ = 25 (the net is blind).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nets_bench  # noqa: E402
from engine.onnx import runner  # noqa: E402
from onnx_export import degrade  # noqa: E402
from onnx_export.data import list_images, psnr, split_files  # noqa: E402

NETS = ("sharpen", "rdn_x2", "rdn_x4", "denoise")
CALIBRATION_SIDE = 192  # side of each calibration crop before degradation (a ×4 net sees 48²)


def calibration_inputs(name: str, count: int, degradation: str = "training") -> list[np.ndarray]:
    """``count`` N×C×H×W net inputs from the training split, degraded as the net was trained
    (``degradation="test"``: as the PSNR below measures it — σ=1.6 blur, white σ=25 noise)."""
    train, _ = split_files(list_images(nets_bench.TRAIN_FOLDERS), nets_bench.VAL_FRACTION)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(train), size=min(count, len(train)), replace=False)
    scale = int(name[-1]) if name.startswith("rdn_x") else 1
    side = CALIBRATION_SIDE
    inputs = []
    for index in chosen:
        image = nets_bench.as_float(train[index])
        h, w = image.shape[:2]
        if min(h, w) < side:
            continue
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = image[y:y + side, x:x + side]
        if scale > 1:
            degraded = degrade.bicubic_downscale(crop, scale)
        elif degradation == "test":
            degraded = (np.clip(degrade.gaussian_blur(crop, nets_bench.BLUR_SIGMA), 0.0, 1.0) if name == "sharpen"
                        else degrade.validation_noise(crop, rng))
        elif name == "sharpen":
            degraded = degrade.sharpen_degradation(crop, rng)
        else:
            degraded = degrade.denoise_degradation(crop, rng)
        inputs.append(np.ascontiguousarray(degraded.transpose(2, 0, 1)[None], dtype=np.float32))
    return inputs


def quantize(name: str, source: Path, target: Path, calibration: int, degradation: str) -> dict[str, Any]:
    """Write the int8 model and its card next to it; return the card's quantization entry."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = runner.load_model(source, "cpu", threads=1)
    feeds = iter([{model.input_name: x} for x in calibration_inputs(name, calibration, degradation)])

    class Feeds(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Dynamic H×W: the symbolic shape pass cannot finish, ONNX's own inference suffices.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Feeds(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
    entry = {"method": "onnxruntime quantize_static, QDQ, int8 per-channel weights, uint8 activations, MinMax",
             "calibration_crops": calibration, "calibration_side": CALIBRATION_SIDE,
             "calibration_degradation": degradation,
             "float32_sha256": runner.file_sha256(source)}
    card = runner.read_card(source)
    card.setdefault("export", {})["sha256"] = runner.file_sha256(target)
    card["quantization"] = entry
    target.with_suffix(".json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return entry


def held_out_psnr(name: str, model: runner.OnnxModel, files: list[Path]) -> float:
    values = []
    if name.startswith("rdn_x"):
        scale = int(name[-1])
        for path in files:
            hr = degrade.modcrop(nets_bench.as_float(path), scale)
            values.append(psnr(runner.run_model(model, degrade.bicubic_downscale(hr, scale)), hr, scale, y_only=True))
        return nets_bench.mean(values)
    for path, truth in nets_bench.centre_crops(files):
        if name == "sharpen":
            degraded = np.clip(degrade.gaussian_blur(truth, nets_bench.BLUR_SIGMA), 0.0, 1.0)
        else:
            degraded = nets_bench.noisy_copy(truth, 25.0, path.name)
        values.append(psnr(runner.run_model(model, degraded), truth))
    return nets_bench.mean(values)


def seconds_per_run(models: dict[str, runner.OnnxModel], side: int, rounds: int) -> dict[str, float]:
    """Median seconds of one run at side² per variant, rounds interleaved (order alternating)."""
    x = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    for model in models.values():
        model.infer(x)  # warm-up: arena, kernels
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(rounds):
        for key in (list(models) if i % 2 else list(reversed(models))):
            started = time.perf_counter()
            models[key].infer(x)
            times[key].append(time.perf_counter() - started)
    return {k: round(float(np.median(v)), 4) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--side", type=int, default=256, help="input side for the timing (default 256)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calibration", type=int, default=64, help="calibration crops per net")
    parser.add_argument("--calibration-degradation", choices=("training", "test"), default="training",
                        help="degrade the calibration crops as in training (default) or as the PSNR test does")
    parser.add_argument("--max-images", type=int, default=None, help="at most N held-out images")
    parser.add_argument("--out", type=Path, default=None, help="keep the int8 models and cards here")
    args = parser.parse_args()
    _, held_out = split_files(list_images(nets_bench.TRAIN_FOLDERS), nets_bench.VAL_FRACTION)
    files = held_out[:args.max_images]
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=nets_bench.REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": platform.platform(), "onnxruntime": runner._ort().__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timing": f"ONNX Runtime, CPU, 1 thread, {args.side}² input, median of {args.rounds} interleaved rounds",
        "held_out_images": len(files), "nets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.nets.split(","):
            source = runner.find_model(name)
            target = out / f"{name}.onnx"
            entry = quantize(name, source, target, args.calibration, args.calibration_degradation)
            variants = {"float32": runner.load_model(source, "cpu", threads=1),
                        "int8": runner.load_model(target, "cpu", threads=1)}
            seconds = seconds_per_run(variants, args.side, args.rounds)
            quality = {k: held_out_psnr(name, m, files) for k, m in variants.items()}
            report["nets"][name] = {
                "seconds": seconds, "int8_speedup": round(seconds["float32"] / seconds["int8"], 2),
                "psnr": quality, "int8_minus_float32_db": round(quality["int8"] - quality["float32"], 3),
                "megabytes": {"float32": round(source.stat().st_size / 1e6, 2),
                              "int8": round(target.stat().st_size / 1e6, 2)},
                "quantization": {k: v for k, v in entry.items() if k != "float32_sha256"},
            }
            print(json.dumps({name: report["nets"][name]}), file=sys.stderr, flush=True)
            runner.clear_cache()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
