"""The Deep Image Prior "skip" encoder-decoder (Ulyanov, Vedaldi, Lempitsky 2018).

Architecture, per level ``i`` (0 = full resolution, ``depth`` levels in all)::

    x ──┬── skip_i:  conv k_skip (c_in -> skip[i])                     ──┐
        │                                                               concat → BN → conv k_up → (1×1 conv) → out_i
        └── down_i:  conv k_down stride 2 (c_in -> down[i]) → conv k_down  │
                     → level i+1 (if any) → upsample ×2                ──┘

Every conv is followed by BatchNorm and LeakyReLU(0.2); convs pad by reflection; a final
1×1 conv and a sigmoid map level 0's output to image channels in [0, 1].

Padding and upsampling are written with slicing and concatenation instead of
``nn.ReflectionPad2d`` / ``F.interpolate(mode="bilinear")`` because the CUDA backward passes
of those two ops accumulate with atomics and are not reproducible run to run; slices and
concatenations have deterministic gradients on every device (and are exact copies of the
same arithmetic on CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

UpsampleMode = Literal["bilinear", "nearest"]


@dataclass(frozen=True)
class NetConfig:
    """Shape of a skip encoder-decoder; the image's channel count is given at build time.

    Size rule: the network input's height and width must both be multiples of
    ``size_multiple`` (= 2**depth, so every stride-2 conv halves exactly and every ×2
    upsample lands on its skip branch's size) and at least ``min_side`` (so the deepest
    maps are still larger than the reflection padding). Callers pad to satisfy it;
    ``padded_side`` gives the smallest valid side for a given one.
    """

    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)
    input_channels: int = 32
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    upsample_mode: UpsampleMode = "bilinear"
    # The paper's nets add a 1×1 conv after each decoder conv.
    extra_1x1_up: bool = True

    def __post_init__(self) -> None:
        depth = len(self.channels_down)
        if depth == 0 or len(self.channels_up) != depth or len(self.channels_skip) != depth:
            raise ValueError("channels_down, channels_up and channels_skip need one entry per level")
        if min(self.channels_down + self.channels_up) < 1 or min(self.channels_skip) < 0:
            raise ValueError("channel counts must be positive (skip may be 0 = no skip branch)")
        for kernel in (self.kernel_down, self.kernel_up, self.kernel_skip):
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError("kernel sizes must be odd and positive")
        if self.upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"unknown upsample mode {self.upsample_mode!r}")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (2**depth)."""
        return 2**self.depth

    @property
    def min_side(self) -> int:
        """Smallest valid input side: the deepest maps (side / 2**depth) must exceed the
        reflection padding of the convs that run on them."""
        deepest_pad = self.kernel_down // 2
        return self.size_multiple * max(1, deepest_pad + 1)

    def padded_side(self, side: int) -> int:
        """Smallest valid input side that is >= ``side``."""
        multiple = self.size_multiple
        return max(self.min_side, -(-side // multiple) * multiple)

    def activation_floats_per_pixel(self) -> float:
        """Activations a training step keeps per input pixel (floats), counted from the
        channel counts: each conv block's padded input, conv, BatchNorm and activation
        outputs, the upsampling and concatenation, at each level's resolution (1/4 per
        level). A rough count, meant for ratios between nets (memory planning)."""
        total = float(self.input_channels)
        c_in = self.input_channels
        for level in range(self.depth):
            here, below = 4.0**-level, 4.0 ** -(level + 1)
            c_skip, c_down, c_up = (self.channels_skip[level], self.channels_down[level],
                                    self.channels_up[level])
            c_deeper = c_down if level == self.depth - 1 else self.channels_up[level + 1]
            total += here * (c_in + 3 * c_skip) if c_skip else 0.0  # skip block
            total += here * c_in + below * 7 * c_down  # the two down blocks
            total += here * 3 * c_deeper  # ×2 upsampling and its intermediates
            total += here * 3 * (c_skip + c_deeper) + here * 3 * c_up  # concat, BN, up block
            if self.extra_1x1_up:
                total += here * 4 * c_up
            c_in = c_down
        return total

    def parameter_count(self, out_channels: int = 3) -> int:
        return sum(p.numel() for p in build_net(self, out_channels).parameters())


# The paper's settings (reference notebooks): denoising uses 128 channels everywhere with
# 4-channel skips and bilinear upsampling; inpainting uses 128-channel skips and nearest.
PAPER_DENOISE = NetConfig()
PAPER_INPAINT = NetConfig(channels_skip=(128,) * 5, upsample_mode="nearest")

# CPU presets: the same five-level topology (so the same receptive field and size rule) with
# channel counts that grow with depth. Most of the paper net's cost sits in its full- and
# half-resolution 128-channel convs; narrowing those is what makes CPU runs bearable.
LIGHT_DENOISE = NetConfig(
    channels_down=(16, 32, 64, 64, 128),
    channels_up=(16, 32, 64, 64, 128),
    channels_skip=(4, 4, 4, 4, 4),
)
LIGHT_INPAINT = NetConfig(
    channels_down=(16, 32, 64, 64, 128),
    channels_up=(16, 32, 64, 64, 128),
    channels_skip=(16, 16, 16, 16, 16),
    upsample_mode="nearest",
)


class ReflectionPad(nn.Module):
    """Reflection padding (edge pixel not repeated) built from slices, so its gradient is
    deterministic on CUDA too."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p == 0:
            return x
        # Rows: [p..1] mirrored above, [-2..-p-1] mirrored below.
        top = x[:, :, 1 : p + 1].flip(2)
        bottom = x[:, :, -p - 1 : -1].flip(2)
        x = torch.cat((top, x, bottom), dim=2)
        left = x[:, :, :, 1 : p + 1].flip(3)
        right = x[:, :, :, -p - 1 : -1].flip(3)
        return torch.cat((left, x, right), dim=3)


class Upsample2x(nn.Module):
    """×2 upsampling, nearest or bilinear (half-pixel centres, edges clamped — the same
    result as ``F.interpolate(scale_factor=2, align_corners=False)``), with deterministic
    gradients."""

    def __init__(self, mode: UpsampleMode) -> None:
        super().__init__()
        self.mode = mode

    @staticmethod
    def _bilinear_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
        # Output 2i sits at input coordinate i - 1/4, output 2i+1 at i + 1/4.
        n = x.shape[dim]
        previous = torch.cat((x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)), dim=dim)
        following = torch.cat((x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)), dim=dim)
        even = 0.75 * x + 0.25 * previous
        odd = 0.75 * x + 0.25 * following
        interleaved = torch.stack((even, odd), dim=dim + 1)
        shape = list(x.shape)
        shape[dim] = 2 * n
        return interleaved.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            b, c, h, w = x.shape
            return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
        return self._bilinear_1d(self._bilinear_1d(x, 2), 3)


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        ReflectionPad(kernel // 2),
        nn.Conv2d(c_in, c_out, kernel, stride=stride),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    ]


class _Level(nn.Module):
    """One encoder-decoder level; holds the deeper levels inside its ``down`` branch."""

    def __init__(self, config: NetConfig, level: int, c_in: int) -> None:
        super().__init__()
        c_down = config.channels_down[level]
        c_up = config.channels_up[level]
        c_skip = config.channels_skip[level]
        is_deepest = level == config.depth - 1

        self.skip = nn.Sequential(*_conv_block(c_in, c_skip, config.kernel_skip)) if c_skip else None
        down: list[nn.Module] = [
            *_conv_block(c_in, c_down, config.kernel_down, stride=2),
            *_conv_block(c_down, c_down, config.kernel_down),
        ]
        if not is_deepest:
            down.append(_Level(config, level + 1, c_down))
        down.append(Upsample2x(config.upsample_mode))
        self.down = nn.Sequential(*down)

        c_deeper = c_down if is_deepest else config.channels_up[level + 1]
        up: list[nn.Module] = [
            nn.BatchNorm2d(c_skip + c_deeper),
            *_conv_block(c_skip + c_deeper, c_up, config.kernel_up),
        ]
        if config.extra_1x1_up:
            up += _conv_block(c_up, c_up, 1)
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deeper = self.down(x)
        if self.skip is not None:
            deeper = torch.cat((self.skip(x), deeper), dim=1)
        return self.up(deeper)


class SkipNet(nn.Module):
    def __init__(self, config: NetConfig, out_channels: int) -> None:
        super().__init__()
        self.config = config
        self.body = _Level(config, 0, config.input_channels)
        self.head = nn.Sequential(nn.Conv2d(config.channels_up[0], out_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_net(config: NetConfig, out_channels: int) -> SkipNet:
    """A freshly initialised net (draws from torch's global CPU generator; seed it first)."""
    if out_channels < 1:
        raise ValueError("out_channels must be positive")
    return SkipNet(config, out_channels)
