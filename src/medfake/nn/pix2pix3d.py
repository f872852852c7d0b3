"""3D pix2pix for in-painting cubes (CT-GAN's networks, ported from Keras to PyTorch).

Generator: U-Net whose encoder halves the cube with 4³ stride-2 convolutions and whose decoder doubles it
with nearest-neighbour upsampling + a 4³ convolution (not a transposed convolution), with skip connections,
dropout and batch norm. Discriminator: 3D PatchGAN on the channel concatenation (image, condition).

Keras details kept so the `paper` filters give the reference's parameter counts: activation *before* batch
norm in every block, Keras 'same' padding (even kernel, stride 1 pads one voxel before and two after),
BN momentum 0.8 in Keras = 0.2 in PyTorch, Glorot-uniform weights with zero biases.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

BN_MOMENTUM = 0.2  # Keras momentum 0.8
BN_EPS = 1e-3  # Keras default


class Down(nn.Module):
    """Conv 4³ stride 2 → LeakyReLU(0.2) → (BatchNorm)."""

    def __init__(self, cin: int, cout: int, norm: bool = True):
        super().__init__()
        layers = [nn.Conv3d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        if norm:
            layers.append(nn.BatchNorm3d(cout, momentum=BN_MOMENTUM, eps=BN_EPS))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class Up(nn.Module):
    """Nearest ×2 → conv 4³ ('same') → ReLU → Dropout → BatchNorm, then concatenate the skip."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            same_conv(cin, cout),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.BatchNorm3d(cout, momentum=BN_MOMENTUM, eps=BN_EPS),
        )

    def forward(self, x, skip):
        return torch.cat([self.block(x), skip], dim=1)


class UNetGenerator3D(nn.Module):
    """In-painting U-Net: (B,1,S,S,S) masked cube in [-1,1] → (B,1,S,S,S) full cube (tanh).

    `filters` are the encoder widths (paper: 100-200-400-800-800); S must be divisible by 2**len(filters)."""

    def __init__(self, filters: Sequence[int] = (100, 200, 400, 800, 800), dropout: float = 0.5, channels: int = 1):
        super().__init__()
        filters = list(filters)
        self.downsampling = 2 ** len(filters)
        ins = [channels] + filters[:-1]
        self.downs = nn.ModuleList(Down(i, o, norm=k > 0) for k, (i, o) in enumerate(zip(ins, filters)))
        ups, cin = [], filters[-1]
        for k in range(len(filters) - 2, -1, -1):
            ups.append(Up(cin, filters[k], dropout))
            cin = 2 * filters[k]
        self.ups = nn.ModuleList(ups)
        self.out = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                 same_conv(cin, channels), nn.Tanh())
        init_like_keras(self)

    def forward(self, x):
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = up(x, skip)
        return self.out(x)


class PatchDiscriminator3D(nn.Module):
    """PatchGAN: (B,1,S³) image + (B,1,S³) condition → (B,1,S/16,S/16,S/16) real/fake scores (linear)."""

    def __init__(self, filters: Sequence[int] = (100, 200, 400, 800), channels: int = 1):
        super().__init__()
        filters = list(filters)
        ins = [2 * channels] + filters[:-1]
        self.body = nn.Sequential(*(Down(i, o, norm=k > 0) for k, (i, o) in enumerate(zip(ins, filters))))
        self.head = same_conv(filters[-1], 1)
        init_like_keras(self)

    def forward(self, image, condition):
        return self.head(self.body(torch.cat([image, condition], dim=1)))


def same_conv(cin: int, cout: int) -> nn.Sequential:
    """4³ stride-1 convolution with Keras 'same' padding: one voxel before, two after on every axis."""
    return nn.Sequential(nn.ConstantPad3d((1, 2, 1, 2, 1, 2), 0.0), nn.Conv3d(cin, cout, 4))


def init_like_keras(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
