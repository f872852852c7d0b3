"""2-D CycleGAN networks: the ResNet generator and the 70×70 PatchGAN of junyanz/pytorch-CycleGAN-and-pix2pix.

Layer for layer as the reference `ResnetGenerator` / `NLayerDiscriminator` with `norm='instance'`: instance
norm without affine parameters (so every convolution keeps its bias), reflection padding, ReLU in the generator,
LeakyReLU 0.2 in the discriminator, tanh output. The parameter counts therefore equal the reference's for the
same channels (tests keep them as facts: 11,378,179 and 2,764,737 for 3 channels, ngf = ndf = 64, 9 blocks).

`upsample="resize"` replaces each stride-2 transposed convolution by nearest-neighbour ×2 then a 3×3
convolution of the same shape (Odena et al. 2016, "Deconvolution and checkerboard artifacts"): same parameter
count, no uneven kernel overlap, hence no grid pattern at the up-sampling periods.
"""

from __future__ import annotations

import torch
from torch import nn

from medfake.nn import UPSAMPLE_MODES


def norm2d(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + (pad, conv 3×3, norm, ReLU, [dropout], pad, conv 3×3, norm)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm2d(channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm2d(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x)


def up_layer(cin: int, cout: int, mode: str) -> list[nn.Module]:
    if mode == "transposed":
        return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)]
    if mode == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
    raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not '{mode}'")


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), n_blocks × R(4ngf), u(2ngf), u(ngf), c7s1-out, tanh.

    Two stride-2 down-samplings: height and width must be multiples of 4 (512×408 is)."""

    downsampling = 4

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, n_blocks: int = 9,
                 upsample: str = "transposed", dropout: float = 0.0):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not '{upsample}'")
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            m = 2 ** i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1), norm2d(ngf * m * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, dropout) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            layers += up_layer(ngf * m, ngf * m // 2, upsample) + [norm2d(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """70×70 PatchGAN (n_layers = 3): C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel map."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1), norm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_normal(module: nn.Module, gain: float = 0.02) -> None:
    """The reference's `init_type='normal'`: weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def receptive_field(n_layers: int = 3) -> int:
    """Receptive field (pixels) of one output of the PatchGAN: 70 for n_layers = 3."""
    field = 1
    for kernel, stride in reversed([(4, 2)] * n_layers + [(4, 1), (4, 1)]):
        field = (field - 1) * stride + kernel
    return field


@torch.no_grad()
def translate(generator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Generator output for (B, C, H, W) images in [-1, 1], any size: padded by reflection to a multiple of 4."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % ResnetGenerator.downsampling, (-w) % ResnetGenerator.downsampling
    if ph or pw:
        images = nn.functional.pad(images, (0, pw, 0, ph), mode="reflect")
    return generator(images)[..., :h, :w]
