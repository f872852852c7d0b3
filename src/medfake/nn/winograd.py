"""Inference-only fast paths for the U-Net's convolutions on CPU (fp32).

`WinogradConv2d` computes a 3×3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4×4, 3×3)
(Lavin & Gray 2016, the algorithm cuDNN and oneDNN call "winograd"): 36 multiplies per 4×4 output tile and
channel pair instead of 144, done as 36 batched matrix products; the input and output transforms are small
matrix products too. The transforms are exact in real arithmetic; in fp32 the outputs differ from direct
convolution by ~1e-5 relative. `PointwiseConv2d` runs a 1×1 convolution as one matrix product on the
channels_last layout (no im2col, no layout copies).

`fast_unet(unet)` returns a copy of a U-Net with these swapped in. Winograd runs where it pays on a CPU core:
inputs with at least 96 channels or at most 24 pixels a side (measured per layer on the `btd` preset); at 96²
and 48² with 32-64 channels the transforms' memory traffic outweighs the saved multiplies.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

TILE, TAPS = 4, 6  # output tile m, input tile m + r − 1
B_T = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
A_T = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) filters → (36, C, K) transformed filters G g Gᵀ (computed in float64)."""
    u = torch.einsum("ik,ockl,jl->ijco", G, weight.detach().double().cpu(), G)
    return u.reshape(TAPS * TAPS, weight.shape[1], weight.shape[0])


class WinogradConv2d(nn.Module):
    """A 3×3, stride-1, padding-1 convolution that runs by Winograd F(4×4, 3×3) on inputs with at least
    `min_channels` channels or at most `max_side` pixels a side (sides divisible by 4), directly otherwise."""

    def __init__(self, conv: nn.Conv2d, min_channels: int = 96, max_side: int = 24):
        super().__init__()
        if not is_winograd_shape(conv):
            raise ValueError("WinogradConv2d replaces 3×3, stride 1, padding 1 convolutions only")
        self.min_channels, self.max_side = min_channels, max_side
        weight = conv.weight.detach()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.register_buffer("u", winograd_weights(weight).to(weight.device, weight.dtype).contiguous())
        self.register_buffer("b_t", B_T.to(weight.device, weight.dtype))
        self.register_buffer("a_t", A_T.to(weight.device, weight.dtype))

    def uses_winograd(self, x) -> bool:
        h, w = x.shape[-2:]
        return (h % TILE == 0 and w % TILE == 0
                and (x.shape[1] >= self.min_channels or max(h, w) <= self.max_side))

    def forward(self, x):
        if not self.uses_winograd(x):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return self.winograd(x)

    def winograd(self, x):
        b, c, h, w = x.shape
        nh, nw, k = h // TILE, w // TILE, self.weight.shape[0]
        tiles = b * nh * nw
        padded = x.new_zeros(b, h + 2, w + 2, c)
        padded[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
        s = padded.stride()  # 6×6 input tiles at a stride of 4, as a view: (row, column, image, tile row, tile column, c)
        d = padded.as_strided((TAPS, TAPS, b, nh, nw, c), (s[1], s[2], s[0], TILE * s[1], TILE * s[2], 1))
        v = (self.b_t @ d.reshape(TAPS, -1)).view(TAPS, TAPS, -1)  # Bᵀ d B: rows, then columns
        v = torch.matmul(self.b_t, v).view(TAPS * TAPS, tiles, c)
        m = torch.bmm(v, self.u).view(TAPS, TAPS * tiles * k)
        y = (self.a_t @ m).view(TILE, TAPS, tiles * k)  # Aᵀ m A
        y = torch.matmul(self.a_t, y).view(TILE, TILE, b, nh, nw, k)
        y = y.permute(2, 3, 0, 4, 1, 5).reshape(b, h, w, k)
        if self.bias is not None:
            y = y + self.bias
        return y.permute(0, 3, 1, 2)


class PointwiseConv2d(nn.Module):
    """A 1×1 convolution as `F.linear` over the channels of a channels_last view."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1


def is_winograd_shape(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.groups == 1 and conv.dilation == (1, 1))


def fast_unet(unet: nn.Module, pointwise: bool = True, **winograd) -> nn.Module:
    """A copy of `unet` (fp32, for inference) with its 3×3 convolutions as `WinogradConv2d` and, if
    `pointwise`, its 1×1 convolutions as `PointwiseConv2d`."""
    fast = copy.deepcopy(unet).eval()
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and is_winograd_shape(child):
                setattr(module, name, WinogradConv2d(child, **winograd))
            elif isinstance(child, nn.Conv2d) and pointwise and is_pointwise(child):
                setattr(module, name, PointwiseConv2d(child))
    return fast
