"""Networks for the segmentation audit (after Chen et al. 2019): the 2-D U-Net target, the field generator
(shared encoder, two decoders with VAE latents: a dense deformation u and a bias field b) and the WGAN-GP critic.

Network definitions only: the transform, losses and training live in `medfake.attack`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_unet(classes: int, channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 1,
               num_res_units: int = 1) -> nn.Module:
    """MONAI's 2-D U-Net (strides of 2 between levels, batch norm), `classes` output logits per pixel."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=classes, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm="batch")


def conv_block(c_in: int, c_out: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class FieldDecoder(nn.Module):
    """Latent map (at 1/2^depth of the image) → a coarse field at 1/`coarse` of the image, each 2× upsampling
    joined by the shared encoder's features at that scale (U-Net skips: the field can follow the organ
    boundaries); the caller's bilinear upsampling makes it smooth (its gradient is bounded by the cell size)."""

    def __init__(self, latent: int, width: int, out_channels: int, skip_widths: list[int]):
        super().__init__()
        self.inlet = conv_block(latent, width)
        self.ups = nn.ModuleList(conv_block(width + w, width) for w in skip_widths)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # start at the identity transform
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        h = self.inlet(z)
        for block, skip in zip(self.ups, skips):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)


class FieldGenerator(nn.Module):
    """x (B,C,H,W: the intensity-normalised image, optionally with more channels, e.g. the target's clean
    class probabilities) → u (B,2,H,W, pixels, (dx, dy)), b (B,1,H,W, normalised units), KL.

    A shared encoder downsamples by 2^depth; two Gaussian latents (μ, log σ²) per position, one for u and
    one for b; two decoders of the same architecture with separate weights bring them up to 1/`coarse` of
    the image, with the encoder's features at each scale; tanh bounds them to ±max_disp pixels and ±max_bias,
    and bilinear upsampling gives full resolution. Sampling the latents gives different adversarial examples
    for one image."""

    def __init__(self, width: int = 32, latent: int = 8, depth: int = 4, coarse: int = 8,
                 max_disp: float = 4.0, max_bias: float = 1.0, in_channels: int = 1):
        super().__init__()
        if coarse > 2 ** depth or coarse & (coarse - 1):
            raise ValueError("coarse must be a power of two ≤ 2**depth")
        self.depth, self.coarse, self.max_disp, self.max_bias = depth, coarse, max_disp, max_bias
        self.in_channels = in_channels
        widths = [min(width * 2 ** i, 4 * width) for i in range(depth)]
        stages, c_in = [], in_channels
        for w in widths:
            stages.append(nn.Sequential(conv_block(c_in, w, stride=2), conv_block(w, w)))
            c_in = w
        self.encoder = nn.ModuleList(stages)
        self.to_latent_u = nn.Conv2d(c_in, 2 * latent, 1)
        self.to_latent_b = nn.Conv2d(c_in, 2 * latent, 1)
        ups = depth - coarse.bit_length() + 1  # the encoder stages between the latent and the coarse grid
        self.skip_stages = list(range(depth - 2, depth - 2 - ups, -1))
        self.decode_u = FieldDecoder(latent, width, 2, [widths[i] for i in self.skip_stages])
        self.decode_b = FieldDecoder(latent, width, 1, [widths[i] for i in self.skip_stages])

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this."""
        return 2 ** self.depth

    @staticmethod
    def sample(stats: torch.Tensor, stochastic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = stats.chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        kl = 0.5 * torch.mean(mu ** 2 + logvar.exp() - 1 - logvar)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if stochastic else mu
        return z, kl

    def forward(self, x: torch.Tensor, stochastic: bool = True):
        features, h = [], x
        for stage in self.encoder:
            h = stage(h)
            features.append(h)
        skips = [features[i] for i in self.skip_stages]
        z_u, kl_u = self.sample(self.to_latent_u(h), stochastic)
        z_b, kl_b = self.sample(self.to_latent_b(h), stochastic)
        size = x.shape[-2:]
        u = F.interpolate(self.max_disp * torch.tanh(self.decode_u(z_u, skips)), size=size, mode="bilinear",
                          align_corners=False)
        b = F.interpolate(self.max_bias * torch.tanh(self.decode_b(z_b, skips)), size=size, mode="bilinear",
                          align_corners=False)
        return u, b, kl_u + kl_b


class Critic(nn.Module):
    """WGAN-GP critic: strided convolutions with LeakyReLU and no batch norm (the gradient penalty is per
    sample), global mean → one realism score per image."""

    def __init__(self, width: int = 16, depth: int = 4):
        super().__init__()
        layers, c_in = [], 1
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            layers.append(conv_block(c_in, c_out, stride=2, norm=False))
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))
