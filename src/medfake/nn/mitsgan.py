"""MITS-GAN's networks (Pasqualino et al. 2024, reference code `generator.py`/`discriminator.py`), 2-D per
slice, for the protection benchmark's baseline. Noise net: five 1×1 convs (1→2→4→4→2→1) with BatchNorm +
ReLU; generator: concat(noise, slice) → conv 3×3 (2→64) + ReLU → 3 residual blocks → conv 1×1 → tanh (the
full protected slice, not a residual, no budget); discriminator: DCGAN with ndf = 1, sigmoid."""

from __future__ import annotations

import torch
from torch import nn


class NoiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        chans = (1, 2, 4, 4, 2, 1)
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 1), nn.BatchNorm2d(b), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, noise):
        return self.body(noise)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class MitsGanGenerator(nn.Module):
    def __init__(self, channels: int = 64):
        super().__init__()
        self.noise = NoiseNet()
        self.body = nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(),
                                  *[ResBlock(channels) for _ in range(3)], nn.Conv2d(channels, 1, 1), nn.Tanh())

    def forward(self, x):
        """x: (B, 1, H, W) in [-1, 1]; uniform noise is redrawn on every call (as the reference)."""
        return self.body(torch.cat([self.noise(torch.rand_like(x)), x], dim=1))


class MitsGanDiscriminator(nn.Module):
    def __init__(self, size: int = 512):
        super().__init__()
        chans = [1, 1, 2, 4, 8, 8, 8, 8]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False))
            if i:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2))
        layers += [nn.Conv2d(chans[-1], 1, size // 2 ** 7), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x).flatten(1)
