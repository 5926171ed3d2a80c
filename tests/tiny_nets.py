"""Tiny nets with a known output, exported as the engine's shipped model names, for tests.

``rdn_x2`` / ``rdn_x4``: RDNs whose detail head is zero, so they return exactly the bilinear
enlargement of their input (the input skip): a test can check geometry, tiling, alpha and
dtypes against ``bilinear(image, scale)``. ``sharpen``, ``dejpeg`` and ``noise_probe`` (the
blind denoise net the engine measures noise levels with): U-Nets with their (default) zero
head, i.e. the identity (so the measured level is 0). ``denoise``: the same with the noise level as a fourth input channel (as
shipped), still the identity. ``inpaint``: the same with the hole as the fourth channel, so
it returns its input's pre-filled RGB: the hole comes back as ``engine.fill``'s
smooth fill. The trained nets' quality is measured by benchmarks/nets_bench.py. Needs torch + onnx (the export tools).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MODEL_NAMES = ("rdn_x2", "rdn_x4", "sharpen", "noise_probe", "denoise", "inpaint", "dejpeg")


def export_tiny_nets(folder: Path) -> Path:
    import torch

    from onnx_export.export import export_with_card
    from onnx_export.models import RDN, RDNConfig, UNet, UNetConfig

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for scale in (2, 4):
        net = RDN(RDNConfig(C=1, D=1, G=4, G0=8, scale=scale, upscaling="shuffle", input_skip=True))
        torch.nn.init.zeros_(net.sr.weight)
        torch.nn.init.zeros_(net.sr.bias)
        export_with_card(net.eval(), "rdn", folder / f"rdn_x{scale}.onnx")
    for name, task in (("sharpen", "sharpen"), ("noise_probe", "denoise"), ("dejpeg", "dejpeg")):
        export_with_card(UNet(UNetConfig(base=4, depth=2, max_channels=8)).eval(), "unet", folder / f"{name}.onnx",
                         card={"task": task})
    for task in ("denoise", "inpaint"):  # denoise: + the noise level; inpaint: + the hole
        export_with_card(UNet(UNetConfig(base=4, depth=2, max_channels=8, in_channels=4)).eval(), "unet",
                         folder / f"{task}.onnx", card={"task": task})
    return folder


def bilinear(image: np.ndarray, scale: int) -> np.ndarray:
    """What the tiny RDNs compute: torch's bilinear (half-pixel centres, edge clamped), H×W×C."""
    h, w = image.shape[:2]

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n * scale) + 0.5) / scale - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (src - lo).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = axis(h), axis(w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def checkout_engine_python(folder: Path, repo: Path) -> Path:
    """An "engine Python" for the plug-in client that runs *this checkout's* engine.

    The client starts ``python -I -m engine serve``; -I ignores PYTHONPATH, so a test venv
    whose editable install points at another checkout would run that one. This wrapper drops
    the -I and puts ``repo`` first on the path.
    """
    import sys

    wrapper = folder / "engine-python"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = "-I" ] && shift\nPYTHONPATH="{repo}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper
