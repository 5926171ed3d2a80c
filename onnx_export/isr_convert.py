"""ISR (idealo image-super-resolution) Keras RDN weights (.hdf5) → our torch RDN → ONNX + card.

    python -m onnx_export.isr_convert rdn-C6-D20-G64-G064-x2_weights.hdf5 -o rdn_x2.onnx

Layer names in ISR's RDN: F_m1, F_0, F_{d}_{c} (d = 1..D blocks, c = 1..C convs), LFF_{d},
GFF_1, GFF_2, UPN1, UPN2, UPN3, SR. The file may be a ``save_weights`` file (layer groups at
the root) or a whole saved model (under ``model_weights``; ``optimizer_weights`` is ignored);
datasets are found by walking the file, so Keras' nesting (``F_m1/F_m1/kernel:0``) does not
matter. C, D, G, G0, kernel size and scale are read from the weights themselves:
G0 = F_m1's outputs, G = F_1_1's outputs, D and C = the largest indices present,
scale = sqrt(UPN3 outputs / 3), and the head variant from SR's inputs (3·scale² → "ups",
nearest UpSampling2D; 3 → "shuffle", depth_to_space).

Keras kernels are (kh, kw, in, out); torch wants (out, in, kh, kw). TensorFlow's
depth_to_space reads channel (i·s + j)·3 + c for sub-pixel (i, j) of colour c (DCR order),
torch's PixelShuffle reads c·s² + i·s + j (CRD), so for the "shuffle" head UPN3's output
channels are permuted. ISR feeds RGB/255 and its output is RGB in [0, 1] before ×255 —
exactly our convention, so no rescaling is needed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.onnx.runner import file_sha256

from .export import DEFAULT_TOLERANCE, export_with_card
from .models.rdn import RDN, RDNConfig

_LAYER = re.compile(r"^(F_m1|F_0|F_\d+_\d+|LFF_\d+|GFF_[12]|UPN[123]|SR)$")


def read_isr_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {"kernel": array, "bias": array}} for every RDN layer in the file."""
    import h5py

    layers: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            parts = name.split("/")
            if parts[0] == "optimizer_weights":
                return
            layer = next((p for p in parts[:-1] if _LAYER.match(p)), None)
            leaf = parts[-1].split(":")[0]
            if layer is None or leaf not in ("kernel", "bias"):
                return
            if leaf in layers.setdefault(layer, {}):
                raise ValueError(f"{path}: {layer}/{leaf} appears twice")
            layers[layer][leaf] = np.asarray(obj, dtype=np.float32)

        root.visititems(visit)
    if not layers:
        raise ValueError(f"{path}: no ISR RDN layers (F_m1, F_0, F_d_c, …) found")
    return layers


def infer_config(layers: dict[str, dict[str, np.ndarray]]) -> RDNConfig:
    for name in ("F_m1", "F_0", "GFF_1", "GFF_2", "UPN1", "UPN2", "UPN3", "SR", "F_1_1"):
        if name not in layers or "kernel" not in layers[name]:
            raise ValueError(f"ISR weights lack layer {name} (is this an RDN, not an RRDN?)")
    kh, kw, c_in, g0 = layers["F_m1"]["kernel"].shape
    if kh != kw or c_in != 3:
        raise ValueError(f"F_m1 kernel {layers['F_m1']['kernel'].shape}: expected k×k×3×G0")
    dc = [tuple(map(int, n.split("_")[1:])) for n in layers if re.fullmatch(r"F_\d+_\d+", n)]
    D, C = max(d for d, _ in dc), max(c for _, c in dc)
    missing = [f"F_{d}_{c}" for d in range(1, D + 1) for c in range(1, C + 1) if (d, c) not in set(dc)]
    missing += [f"LFF_{d}" for d in range(1, D + 1) if f"LFF_{d}" not in layers]
    if missing:
        raise ValueError(f"ISR weights incomplete: missing {', '.join(missing[:5])}")
    G = int(layers["F_1_1"]["kernel"].shape[3])
    upn3_out = int(layers["UPN3"]["kernel"].shape[3])
    scale = int(round((upn3_out / 3) ** 0.5))
    if 3 * scale * scale != upn3_out:
        raise ValueError(f"UPN3 has {upn3_out} outputs, not 3·scale²")
    sr_in = int(layers["SR"]["kernel"].shape[2])
    upscaling = "ups" if sr_in == upn3_out else "shuffle"
    if upscaling == "shuffle" and sr_in != 3:
        raise ValueError(f"SR has {sr_in} inputs: neither 3·scale² (ups) nor 3 (shuffle)")
    return RDNConfig(C=C, D=D, G=G, G0=int(g0), scale=scale, kernel_size=int(kh), upscaling=upscaling)


def _dcr_to_crd(scale: int, colours: int = 3) -> np.ndarray:
    """perm[torch channel] = TF channel for the same (colour, sub-pixel)."""
    perm = np.empty(colours * scale * scale, dtype=np.int64)
    for c in range(colours):
        for i in range(scale):
            for j in range(scale):
                perm[c * scale * scale + i * scale + j] = (i * scale + j) * colours + c
    return perm


def to_state_dict(layers: dict[str, dict[str, np.ndarray]], cfg: RDNConfig) -> dict[str, torch.Tensor]:
    names = {"F_m1": "f_m1", "F_0": "f_0", "GFF_1": "gff_1", "GFF_2": "gff_2",
             "UPN1": "upn1", "UPN2": "upn2", "UPN3": "upn3", "SR": "sr"}
    for d in range(1, cfg.D + 1):
        names[f"LFF_{d}"] = f"rdbs.{d - 1}.lff"
        for c in range(1, cfg.C + 1):
            names[f"F_{d}_{c}"] = f"rdbs.{d - 1}.convs.{c - 1}"
    state: dict[str, torch.Tensor] = {}
    for keras_name, ours in names.items():
        kernel = layers[keras_name]["kernel"].transpose(3, 2, 0, 1)  # (kh,kw,in,out) → (out,in,kh,kw)
        bias = layers[keras_name].get("bias", np.zeros(kernel.shape[0], np.float32))
        if keras_name == "UPN3" and cfg.upscaling == "shuffle":
            perm = _dcr_to_crd(cfg.scale)
            kernel, bias = kernel[perm], bias[perm]
        state[f"{ours}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{ours}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return state


def load_isr_rdn(path: Path) -> RDN:
    layers = read_isr_weights(path)
    cfg = infer_config(layers)
    model = RDN(cfg)
    model.load_state_dict(to_state_dict(layers, cfg), strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onnx_export.isr_convert", description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path, help="ISR RDN .hdf5")
    p.add_argument("-o", "--output", type=Path, required=True, help="model.onnx (card: model.json)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = p.parse_args(argv)
    model = load_isr_rdn(args.weights)
    cfg = model.config
    card = {
        "name": args.output.stem,
        "source": {"kind": "ISR (idealo/image-super-resolution) Keras RDN weights",
                   "file": args.weights.name, "sha256": file_sha256(args.weights),
                   "command": "python -m onnx_export.isr_convert " + " ".join(sys.argv[1:] if argv is None else argv)},
    }
    try:
        card = export_with_card(model, "rdn", args.output, card, tolerance=args.tolerance)
    except AssertionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"RDN C={cfg.C} D={cfg.D} G={cfg.G} G0={cfg.G0} ×{cfg.scale} ({cfg.upscaling}) → {args.output}; "
          f"parity max abs diff {card['export']['parity']['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
