"""Torch definitions of the exported nets; one architecture per file, each stating its size rules.

``build_model(kind, params)`` is what checkpoints and the converter use, so a checkpoint only
needs to store ``kind`` and ``params`` to rebuild its net.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .rdn import RDN, RDNConfig
from .unet import PatchDiscriminator, UNet, UNetConfig

KINDS = ("rdn", "unet")
TASKS = {"rdn": "upscale", "unet": "sharpen"}  # each kind's default task
# What each kind can be trained for (the U-Net: blind sharpening, blind denoising, blind
# JPEG-artefact removal, or inpainting, which gives it a fourth input channel: the hole).
KIND_TASKS = {"rdn": ("upscale",), "unet": ("sharpen", "denoise", "inpaint", "dejpeg")}
TASK_IN_CHANNELS = {"inpaint": 4}  # the others read RGB (denoise optionally 4: + the noise level)


def build_model(kind: str, params: dict[str, Any]) -> nn.Module:
    if kind == "rdn":
        return RDN(RDNConfig(**params))
    if kind == "unet":
        return UNet(UNetConfig(**params))
    raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def model_params(model: nn.Module) -> dict[str, Any]:
    return model.config.as_dict()  # type: ignore[union-attr,operator]


# What a net's input channels are, by count (and task where a count means two things).
_INPUTS = {
    3: "N×3×H×W float32 RGB in [0, 1]",
    4: "N×4×H×W float32: RGB in [0, 1] with the hole pre-filled, then the hole (1 = fill)",
    (4, "denoise"): "N×4×H×W float32: noisy RGB in [0, 1], then the noise level to remove as a constant "
                    "plane (level / (50/255), engine.noise_level.level_plane; the level: the RMS of what the "
                    "blind net noise_probe removes, engine.noise_level.probe_noise_level)",
}


def runtime_facts(model: nn.Module, task: str | None = None) -> dict[str, Any]:
    """What the engine's runner needs to know about a net (goes into the model card)."""
    channels = int(getattr(getattr(model, "config", None), "in_channels", 3))
    return {
        "scale": int(getattr(model, "scale")),
        "size_multiple": int(getattr(model, "size_multiple")),
        "receptive_radius": int(model.receptive_radius()),  # type: ignore[operator]
        "activation_floats_per_px": int(model.activation_floats_per_px()),  # type: ignore[operator]
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_channels": channels,
        "input": _INPUTS.get((channels, task), _INPUTS.get(channels, f"N×{channels}×H×W float32")),
        "output": "N×3×(scale·H)×(scale·W) float32 RGB, clip to [0, 1]",
    }


__all__ = ["KINDS", "TASKS", "KIND_TASKS", "TASK_IN_CHANNELS", "RDN", "RDNConfig", "UNet", "UNetConfig", "PatchDiscriminator",
           "build_model", "model_params", "runtime_facts"]
