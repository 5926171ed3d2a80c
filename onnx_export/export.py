"""Checkpoint → ONNX with dynamic N/H/W, checked against torch, plus the model card the engine reads.

    python -m onnx_export.export CHECKPOINT -o model.onnx [--opset 17] [--tolerance 1e-4]

The net is exported with the TorchScript exporter (``dynamo=False``): it takes ``dynamic_axes``
and needs neither onnx nor onnxscript at export time; the dynamo exporter is the fallback.
Then ONNX Runtime (CPU) and torch run the same random inputs at several sizes (each obeying
the net's size rule, odd sizes included where allowed); the export fails unless the largest
absolute difference is below the tolerance. The card (``model.json`` beside ``model.onnx``)
is the training card extended with an ``export`` section (parity numbers, sha256, versions)
and a ``runtime`` section: what ``engine.onnx.runner`` needs (scale, size rule, overlap).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.onnx.runner import file_sha256

from .models import TASKS, build_model, model_params, runtime_facts

INPUT_NAME, OUTPUT_NAME = "input", "output"
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
# Tile overlap in input px: ~16 is what tiled upscalers use; a net whose size rule is coarser
# needs its overlap on its grid, and a deep U-Net reaches further, so it gets more.
BASE_OVERLAP = 16


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(state["kind"], state["params"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def recommended_overlap(model: nn.Module) -> int:
    multiple = int(getattr(model, "size_multiple", 1))
    want = BASE_OVERLAP if multiple == 1 else max(BASE_OVERLAP, 2 * multiple)
    return -(-want // multiple) * multiple


def parity_sizes(model: nn.Module) -> list[tuple[int, int]]:
    m = int(getattr(model, "size_multiple", 1))
    if m == 1:
        return [(1, 1), (7, 13), (32, 32), (45, 61)]
    return [(m, m), (2 * m, 3 * m), (4 * m, 5 * m)]


def export_onnx(model: nn.Module, out: Path, opset: int = DEFAULT_OPSET) -> str:
    """Write ``out``; returns which exporter wrote it."""
    model = model.eval()
    m = int(getattr(model, "size_multiple", 1))
    example = torch.rand(1, input_channels(model), max(2, m) * 2, max(2, m) * 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
            torch.onnx.export(
                model, (example,), str(out), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "n", 2: "h", 3: "w"},
                              OUTPUT_NAME: {0: "n", 2: "out_h", 3: "out_w"}},
            )
        return "torchscript"
    except Exception as legacy_error:  # the legacy exporter may vanish in a later torch
        dim = torch.export.Dim
        h = dim("h", min=1) * m if m > 1 else dim("h", min=1)
        w = dim("w", min=1) * m if m > 1 else dim("w", min=1)
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({2: h, 3: w},))
            program.save(str(out))  # type: ignore[union-attr]
        except Exception as dynamo_error:
            raise RuntimeError(f"ONNX export failed: legacy: {legacy_error}; dynamo: {dynamo_error}") from None
        return "dynamo"


def input_channels(model: nn.Module) -> int:
    """3 (RGB), or 4 for an inpainting U-Net (RGB + the hole)."""
    return int(getattr(getattr(model, "config", None), "in_channels", 3))


def check_parity(model: nn.Module, onnx_path: Path, sizes: list[tuple[int, int]] | None = None,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Max |torch − ORT| at each size, same random input (CPU, float32)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    results = []
    for h, w in sizes or parity_sizes(model):
        x = torch.rand(1, input_channels(model), h, w, generator=gen)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != want.shape:
            raise AssertionError(f"ONNX output shape {got.shape} ≠ torch {want.shape} at {h}×{w}")
        results.append({"height": h, "width": w, "max_abs_diff": float(np.max(np.abs(got - want)))})
    return results


def export_with_card(model: nn.Module, kind: str, out: Path, card: dict[str, Any] | None = None,
                     opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE,
                     sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Export, check parity (raises if over tolerance), write ``out.with_suffix('.json')``."""
    import onnxruntime as ort

    model = model.eval()
    exporter = export_onnx(model, out, opset)
    parity = check_parity(model, out, sizes)
    worst = max(r["max_abs_diff"] for r in parity)
    card = copy.deepcopy(card or {})
    facts = runtime_facts(model, (card or {}).get("task", TASKS[kind]))
    card.setdefault("name", out.stem)
    card.setdefault("task", TASKS[kind])  # a U-Net's card says whether it sharpens or denoises
    card.setdefault("architecture", {"kind": kind, "params": model_params(model), **facts})
    card["runtime"] = {
        "format": 1,
        "task": card["task"],
        "scale": facts["scale"],
        "size_multiple": facts["size_multiple"],
        "tile_overlap": recommended_overlap(model),
        "activation_floats_per_px": facts["activation_floats_per_px"],
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_range": [0.0, 1.0],
        "channels": "RGB",
        "input_channels": facts["input_channels"],
    }
    card["export"] = {
        "file": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
        "opset": opset, "exporter": exporter, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "parity": {"tolerance": tolerance, "max_abs_diff": worst, "sizes": parity},
    }
    if worst >= tolerance:
        raise AssertionError(f"ONNX/torch parity failed: max abs diff {worst:.3g} ≥ {tolerance:g} ({parity})")
    card_file = out.with_suffix(".json")
    tmp = card_file.with_name(card_file.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, card_file)
    return card


def with_initial_card(card: dict[str, Any], initial: dict[str, Any], source: str) -> dict[str, Any]:
    """``card`` extended with the history of the weights its training started from: their
    commands before this training's, their steps added to ``steps_including_initial_weights``
    and their validation history as ``history_of_initial_weights``."""
    card = copy.deepcopy(card)
    commands = list(card.get("commands", []))
    # The last marker is this training's own start: the weights it began from may themselves
    # have been initialised from others (their chain came with a full or commented checkpoint).
    marker = max((i for i, c in enumerate(commands) if c.startswith("# then, initialised from")), default=None)
    mine = commands[marker:] if marker is not None else [f"# then, initialised from {source}:", *commands]
    card["commands"] = [*initial.get("commands", []), *mine]
    weights = commands[marker].removeprefix("# then, initialised from ").rstrip(":") if marker is not None else None
    card["initialised_from"] = card.get("initialised_from") or weights or source
    # The earlier card may be overwritten by this one (same name): name its model by hash.
    card["initial_card"] = {"file": source, "onnx_sha256": initial.get("export", {}).get("sha256")}
    initial_steps = initial.get("training", {}).get("steps_including_initial_weights",
                                                    initial.get("training", {}).get("steps", 0))
    training = card.setdefault("training", {})
    training["steps_including_initial_weights"] = int(initial_steps) + int(training.get("steps", 0))
    card.setdefault("validation", {})["history_of_initial_weights"] = initial.get("validation", {}).get("history", [])
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onnx_export.export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="model.onnx (card: model.json)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    p.add_argument("--initial-card", type=Path,
                   help="the card of the weights training started from (--init-from a slim checkpoint, "
                        "which keeps no history): its commands, steps and validation go into this card")
    args = p.parse_args(argv)
    model, state = load_checkpoint(args.checkpoint)
    training_card_file = args.checkpoint.with_suffix(".json")
    card = json.loads(training_card_file.read_text(encoding="utf-8")) if training_card_file.exists() else {}
    card["name"] = args.output.stem
    card["source_checkpoint"] = {"file": args.checkpoint.name, "step": state.get("step")}
    if args.initial_card is not None:
        card = with_initial_card(card, json.loads(args.initial_card.read_text(encoding="utf-8")),
                                 str(args.initial_card))
    try:
        card = export_with_card(model, state["kind"], args.output, card, args.opset, args.tolerance)
    except AssertionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    par = card["export"]["parity"]
    print(f"wrote {args.output} ({card['export']['bytes'] / 1e6:.1f} MB) and {args.output.with_suffix('.json')}; "
          f"parity max abs diff {par['max_abs_diff']:.2e} over {len(par['sizes'])} sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
