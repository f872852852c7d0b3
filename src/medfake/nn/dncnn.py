"""A small DnCNN-style noise estimator (Zhang et al. 2017; the Noiseprint idea): 2.5-D input (neighbouring
slices as channels), the estimated noise of the centre slice as output. Plain convolutions, no batch norm, so
a patch's output never depends on the rest of its batch."""

from __future__ import annotations

from torch import nn


class NoiseEstimator(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class HighPass(nn.Module):
    """x − its 5×5 local mean (×`gain`): the noise-scale residual a residual classifier sees instead of content."""

    def __init__(self, gain: float = 10.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        local = nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
        return (x - local) * self.gain
