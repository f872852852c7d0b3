"""Feed-forward protector (MITS-GAN's idea, TAFIM's residual form): a small fully convolutional 3-D network
whose output, budget·tanh(·), is the perturbation added to the scan. Anisotropic kernels (1×3×3 then 3×3×3)
so it runs on thick-slice CT without mixing distant slices first. No normalisation layer: the scan is
processed in tiles at inference and must give the same result as on the training crops."""

from __future__ import annotations

import torch
from torch import nn

HU_CENTRE, HU_SCALE = -500.0, 500.0  # input normalisation: lung −1000..0 HU → −1..1


class ResidualProtector3D(nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(1, channels, (1, 3, 3), padding=(0, 1, 1)), nn.LeakyReLU(0.2)]
        for _ in range(blocks):
            layers += [nn.Conv3d(channels, channels, 3, padding=1),
                       nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv3d(channels, 1, 1)
        nn.init.zeros_(self.head.bias)

    def forward(self, hu: torch.Tensor, budget_hu: float) -> torch.Tensor:
        """(B, 1, z, y, x) HU → the perturbation in HU, |δ| < budget."""
        x = ((hu - HU_CENTRE) / HU_SCALE).clamp(-3.0, 3.0)
        return budget_hu * torch.tanh(self.head(self.body(x)))
