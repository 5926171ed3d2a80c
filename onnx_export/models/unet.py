"""pix2pix-style U-Net generator for blind sharpening, sized for CPU, plus a PatchGAN critic.

Generator (``UNet``): a full-resolution stem (3×3, 3→base), ``depth`` down steps (4×4 stride-2
conv, LeakyReLU 0.2), a 3×3 bottleneck, and ``depth`` up steps (nearest ×2 + 3×3 conv, ReLU,
concatenation with the encoder features of the same scale, 3×3 fusion conv, ReLU); a 3×3 head
predicts the missing detail, which is *added to the input*: output = input + detail.
Channels at level i: min(base·2^i, max_channels).

Choices and why:
- residual output: a mildly blurred image is already close to the answer, so the net only
  learns the (small) detail; the identity is free, and an untrained net starts as a no-op.
- no normalisation layers: batch/instance statistics would make a tile's output depend on the
  rest of the tile, so tiled and untiled runs would differ (and ONNX would need the stats).
- nearest upsampling + conv instead of transposed convs: no checkerboard in the detail.

Tensors: input N×3×H×W RGB in [0, 1]; output N×3×H×W, not clipped (the runner clips).
``in_channels`` > 3 adds guide channels after the RGB ones (inpainting: the hole, 1 = fill);
the detail is then added to the first three (the pre-filled image).

Size rule: H and W must be multiples of 2**depth (each stride-2 step halves exactly, each
upsampling doubles back, and the skip concatenations need equal sizes). The runner pads
(reflect) to that multiple and aligns tiles to it, because strided convs are not shift-
invariant: a tile that starts off the 2**depth grid would see a different sampling phase.

``PatchDiscriminator``: conditional PatchGAN (pix2pix: input and output concatenated, 6
channels), 4×4 convs with strides 2, 2, 2, 1 and a 1-channel 4×4 conv, LeakyReLU 0.2; one
real/fake logit per ~70×70 patch at the default n_layers=3. Training only, never exported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    base: int = 32
    depth: int = 4
    max_channels: int = 256
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.base < 1 or self.depth < 1 or self.max_channels < self.base or self.in_channels < 3:
            raise ValueError(f"bad U-Net parameters: {self}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UNet(nn.Module):
    scale = 1

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        self.size_multiple = 2 ** cfg.depth
        ch = [min(cfg.base * 2 ** i, cfg.max_channels) for i in range(cfg.depth + 1)]
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)
                                   for i in range(cfg.depth))
        self.bottleneck = nn.Conv2d(ch[-1], ch[-1], 3, padding=1)
        # up step i goes from level i+1 to level i
        self.ups = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(cfg.depth))
        self.fuses = nn.ModuleList(nn.Conv2d(2 * ch[i], ch[i], 3, padding=1) for i in range(cfg.depth))
        self.head = nn.Conv2d(ch[0], 3, 3, padding=1)
        # Start as the identity (output = input): the detail head begins at zero.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2)
        skips = [h]
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.2)
            skips.append(h)
        h = F.relu(self.bottleneck(h))
        for i in reversed(range(self.config.depth)):
            h = F.relu(self.ups[i](F.interpolate(h, scale_factor=2.0, mode="nearest")))
            h = F.relu(self.fuses[i](torch.cat([h, skips[i]], dim=1)))
        image = x if self.config.in_channels == 3 else x[:, :3]  # 3 channels: no Slice in the graph
        return image + self.head(h)

    def receptive_radius(self) -> int:
        """Input pixels on each side that can influence one output pixel (upper bound)."""
        r, stride = 1, 1  # stem
        for _ in range(self.config.depth):
            r += 2 * stride  # 4×4 stride-2 conv, padding 1: reaches 2 px (at this level) back
            stride *= 2
        r += stride  # bottleneck
        for _ in range(self.config.depth):
            stride //= 2
            r += 2 * stride  # up conv + fuse conv at each level
        return r + 1  # head

    def activation_floats_per_px(self) -> int:
        """Rough peak of live activations per input pixel (for the tiler's memory budget)."""
        ch = [min(self.config.base * 2 ** i, self.config.max_channels) for i in range(self.config.depth + 1)]
        skips = sum(c / 4 ** i for i, c in enumerate(ch))
        return int(skips + 4 * ch[0] + 6)  # skips + the full-resolution up/fuse/concat maps


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 6, base: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        ch = base
        for i in range(1, n_layers + 1):
            nxt = min(base * 2 ** i, base * 8)
            stride = 2 if i < n_layers else 1
            # Instance norm is fine here: the critic is never tiled or exported.
            layers += [nn.Conv2d(ch, nxt, 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(nxt, affine=True), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, degraded: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([degraded, candidate], dim=1))


def level_channels(config: UNetConfig) -> list[int]:
    return [min(config.base * 2 ** i, config.max_channels) for i in range(config.depth + 1)]


def source_base(state: dict[str, torch.Tensor]) -> int:
    """The ``base`` of the U-Net a state dict was saved from (its stem's output channels)."""
    return int(state["stem.weight"].shape[0])


def source_in_channels(state: dict[str, torch.Tensor]) -> int:
    return int(state["stem.weight"].shape[1])


def widen_state(source: dict[str, torch.Tensor], model: UNet) -> dict[str, torch.Tensor]:
    """Weights for ``model`` that compute exactly what ``source`` (a U-Net of the same depth
    with fewer channels per level, or fewer input channels) computes: a wider net that starts
    where a trained one stopped. Added input channels (an inpainting net's hole, grown from a
    denoise net) are read with zero weights like added level channels.

    At every level the source's channels come first. Each conv's source rows (outputs) read the
    source's input channels with the source's weights and the added input channels with zero
    weights, so the source's activations are reproduced exactly; the added rows (the new
    channels) keep their random start, and the head reads them with zero weights, so the output
    is unchanged. Training then grows them: the first step gives the head's zero columns a
    gradient (they multiply the new channels' non-zero activations), and through them the new
    channels; had the new rows been zeroed too, every added weight would stay stuck at zero.
    The fusion convs read [up-sampled features, skip] concatenated: both halves are mapped.
    """
    cfg = model.config
    old_base, old_in = source_base(source), source_in_channels(source)
    if f"downs.{cfg.depth - 1}.weight" not in source or f"downs.{cfg.depth}.weight" in source:
        raise ValueError(f"the source does not fit this net (depth {cfg.depth}): "
                         "only a narrower net of the same depth can be widened")
    # Read from the tensors, not from a config: the source may have had another max_channels.
    src_ch = [old_base] + [int(source[f"downs.{i}.weight"].shape[0]) for i in range(cfg.depth)]
    dst_ch = level_channels(cfg)
    if any(s > d for s, d in zip(src_ch, dst_ch)) or old_in > cfg.in_channels:
        raise ValueError(f"the source (channels {src_ch}) does not fit this net (channels {dst_ch}): "
                         "only a narrower net of the same depth can be widened")

    def place(name: str, rows: list[int], cols: list[int]) -> None:
        """Copy the source conv into the source rows/columns; zero the rest of those rows."""
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        old_w, old_b = source[f"{name}.weight"], source[f"{name}.bias"]
        rows_t = torch.tensor(rows)
        weight[rows_t] = 0.0
        weight[rows_t[:, None], torch.tensor(cols)[None, :]] = old_w
        bias[rows_t] = old_b

    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = lambda n: list(range(n))  # noqa: E731 - the source's channels lead each level
    place("stem", first(src_ch[0]), first(old_in))
    for i in range(cfg.depth):
        place(f"downs.{i}", first(src_ch[i + 1]), first(src_ch[i]))
        place(f"ups.{i}", first(src_ch[i]), first(src_ch[i + 1]))
        place(f"fuses.{i}", first(src_ch[i]), first(src_ch[i]) + [dst_ch[i] + c for c in range(src_ch[i])])
    place("bottleneck", first(src_ch[-1]), first(src_ch[-1]))
    place("head", [0, 1, 2], first(src_ch[0]))
    return state
