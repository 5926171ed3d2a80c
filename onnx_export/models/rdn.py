"""Residual Dense Network (Zhang et al. 2018) laid out as ISR's Keras RDN, so ISR weights load.

Parameters (ISR's names): ``C`` conv layers per residual dense block (RDB), ``D`` RDBs,
``G`` growth (output channels of each conv inside an RDB), ``G0`` feature channels between
blocks, ``scale`` the upscaling factor. ISR's upsampling head is kept as is:

    F_m1 (k×k, 3→G0), F_0 (k×k, G0→G0)                 shallow features (no activation)
    RDB d = 1..D: F_{d}_{c} (k×k → G, ReLU), each output concatenated to its input,
                  LFF_{d} (1×1 → G0), plus the block's input (local residual)
    GFF_1 (1×1, D·G0 → G0), GFF_2 (k×k), plus F_m1      global feature fusion + residual
    UPN1 (5×5 → 64, ReLU), UPN2 (3×3 → 32, ReLU), UPN3 (3×3 → 3·scale²)
    "ups":     nearest ×scale upsampling of all 3·scale² channels, then SR (3×3, 3·scale² → 3)
    "shuffle": pixel shuffle (3·scale² → 3 channels), then SR (3×3, 3 → 3)

ISR's released weights use "ups" ("old weights" in its source); "shuffle" is the cheaper
head for nets we train ourselves. ``input_skip=True`` (our addition, off for ISR weights) adds
the bilinearly enlarged input to the output, so the net learns only the missing detail (the
VDSR trick): training starts near interpolation quality instead of from a black image, which
matters when training runs are short. ISR's depth_to_space orders channels DCR while torch's
PixelShuffle is CRD; ``isr_convert`` permutes UPN3's output channels to match.

Tensors: input N×3×H×W RGB in [0, 1] (ISR divides 0–255 values by 255, the same thing);
output N×3×(scale·H)×(scale·W), *not* clipped (training wants the gradient; the runner clips).

Size rules: any H, W ≥ 1. Every conv is stride 1 with "same" zero padding (k // 2, which is
what Keras' padding="same" does for odd k), so the output is exactly scale·H × scale·W.
Each output pixel depends on input pixels up to ``receptive_radius()`` away; far-away ones
matter little, which is why tiles need only a modest overlap.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

UPSCALINGS = ("ups", "shuffle")


@dataclass(frozen=True)
class RDNConfig:
    C: int = 3
    D: int = 10
    G: int = 64
    G0: int = 64
    scale: int = 2
    kernel_size: int = 3
    upscaling: str = "shuffle"
    input_skip: bool = False  # not in ISR; see the module docstring

    def __post_init__(self) -> None:
        if min(self.C, self.D, self.G, self.G0, self.scale) < 1:
            raise ValueError(f"RDN parameters must be ≥ 1: {self}")
        if self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd ('same' padding)")
        if self.upscaling not in UPSCALINGS:
            raise ValueError(f"upscaling must be one of {UPSCALINGS}, got {self.upscaling!r}")

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResidualDenseBlock(nn.Module):
    def __init__(self, C: int, G: int, G0: int, k: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(G0 + c * G, G, k) for c in range(C))
        self.lff = nn.Conv2d(G0 + C * G, G0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for conv in self.convs:
            # ISR concatenates [input, new] in that order; the channel order matters for
            # loading its weights.
            features = torch.cat([features, torch.relu(conv(features))], dim=1)
        return self.lff(features) + x


class RDN(nn.Module):
    """See the module docstring; ``RDN(RDNConfig(...))``."""

    size_multiple = 1  # any H, W ≥ 1

    def __init__(self, config: RDNConfig | None = None) -> None:
        super().__init__()
        cfg = config or RDNConfig()
        self.config = cfg
        k, s = cfg.kernel_size, cfg.scale
        self.scale = s
        self.f_m1 = _conv(3, cfg.G0, k)
        self.f_0 = _conv(cfg.G0, cfg.G0, k)
        self.rdbs = nn.ModuleList(ResidualDenseBlock(cfg.C, cfg.G, cfg.G0, k) for _ in range(cfg.D))
        self.gff_1 = nn.Conv2d(cfg.D * cfg.G0, cfg.G0, 1)
        self.gff_2 = _conv(cfg.G0, cfg.G0, k)
        self.upn1 = _conv(cfg.G0, 64, 5)
        self.upn2 = _conv(64, 32, 3)
        self.upn3 = _conv(32, 3 * s * s, 3)
        if cfg.upscaling == "shuffle":
            self.upsample: nn.Module = nn.PixelShuffle(s)
            self.sr = _conv(3, 3, k)
        else:
            self.upsample = nn.Upsample(scale_factor=s, mode="nearest")
            self.sr = _conv(3 * s * s, 3, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_m1 = self.f_m1(x)
        h = self.f_0(f_m1)
        outs = []
        for rdb in self.rdbs:
            h = rdb(h)
            outs.append(h)
        h = self.gff_2(self.gff_1(torch.cat(outs, dim=1))) + f_m1
        h = torch.relu(self.upn1(h))
        h = torch.relu(self.upn2(h))
        out = self.sr(self.upsample(self.upn3(h)))
        if self.config.input_skip:
            out = out + F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        return out

    def receptive_radius(self) -> int:
        """Input pixels on each side that can influence one output pixel."""
        r = self.config.kernel_size // 2
        convs_k = 2 + self.config.D * self.config.C + 1  # F_m1, F_0, RDB convs, GFF_2
        # UPN1 (5×5) + UPN2 + UPN3 at input resolution; SR at output resolution.
        return convs_k * r + 2 + 1 + 1 + -(-r // self.scale)

    def activation_floats_per_px(self) -> int:
        """Rough peak of live activations per *input* pixel (for the tiler's memory budget):
        the D block outputs kept for GFF_1, one block's growing concat, a few G0 maps, and
        the head at scale² resolution."""
        c, s = self.config, self.scale
        body = c.D * c.G0 + (c.G0 + c.C * c.G) + 3 * c.G0
        head = 64 + 32 + 3 * s * s + (3 * s * s + 3) * s * s
        return body + head


def block_count(state: dict[str, torch.Tensor]) -> int:
    """How many residual dense blocks an RDN state dict holds (0 for another net's)."""
    return 1 + max((int(k.split(".")[1]) for k in state if k.startswith("rdbs.")), default=-1)


def deepen_state(source: dict[str, torch.Tensor], model: RDN) -> dict[str, torch.Tensor]:
    """Weights for ``model`` that compute exactly what ``source`` (an RDN with fewer blocks,
    otherwise the same shape) computes: a deeper net that starts where a trained one stopped.

    The source's blocks fill the first ones; each added block's LFF is zeroed, so with its
    local residual it passes its input through unchanged; GFF_1 reads the source's block
    outputs with the source's weights and the added blocks' outputs with zero weights. The
    added blocks' inner convs keep their random start: the first step gives GFF_1's new
    columns a gradient (they multiply the added blocks' outputs), the next ones the added
    LFFs (the block's features times what flows back through those columns); had the convs
    been zeroed too, every added weight would stay stuck at zero.
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = block_count(source)
    if blocks > model.config.D:
        raise ValueError(f"the source has {blocks} blocks, more than this net's {model.config.D}")
    for key, value in source.items():
        if key == "gff_1.weight":
            continue
        if key not in state or state[key].shape != value.shape:
            raise ValueError(f"{key}: the source's tensor does not fit this net (only D may differ)")
        state[key] = value.clone()
    for d in range(blocks, model.config.D):
        state[f"rdbs.{d}.lff.weight"].zero_()
        state[f"rdbs.{d}.lff.bias"].zero_()
    gff = source["gff_1.weight"]
    state["gff_1.weight"].zero_()
    state["gff_1.weight"][:, : gff.shape[1]] = gff
    return state


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
