"""Inference-only fast paths for the U-Net's convolutions and linear attention on CPU (fp32).

`WinogradConv2d` computes a 3×3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4×4, 3×3)
(Lavin & Gray 2016, the algorithm cuDNN and oneDNN call "winograd"): 36 multiplies per 4×4 output tile and
channel pair instead of 144, done as 36 batched matrix products; the input and output transforms are small
matrix products too. The transforms are exact in real arithmetic; in fp32 the outputs differ from direct
convolution by ~1e-5 relative. `PointwiseConv2d` runs a 1×1 convolution as one matrix product on the
channels_last layout (no im2col, no layout copies).

`fast_unet(unet)` returns a copy of a U-Net with these swapped in. Winograd runs where it pays on a CPU core
(measured per layer on the `btd` preset, 2 patches a batch): up to 24² always, at 48² from 64 channels; at 96²
(32-64 channels) the transforms' memory traffic outweighs the saved multiplies. `FoldedLinearAttention`
re-associates the linear attention's products so that its full-resolution intermediates are never stored.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medfake.nn.ddpm import LinearAttention

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
    """A 3×3, stride-1, padding-1 convolution that runs by Winograd F(4×4, 3×3) on inputs of at most `max_side`
    pixels a side, or twice that with at least `min_channels` channels (sides divisible by 4), directly
    otherwise."""

    def __init__(self, conv: nn.Conv2d, min_channels: int = 64, max_side: int = 24):
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
        side = max(h, w)
        return (h % TILE == 0 and w % TILE == 0
                and (side <= self.max_side or (side <= 2 * self.max_side and x.shape[1] >= self.min_channels)))

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
        s = padded.stride()  # the 6×6 input tiles at a stride of 4 as a view: row, column, image, tile y, tile x, c
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


class FoldedLinearAttention(nn.Module):
    """`ddpm.LinearAttention` with its matrix products re-associated (exact in real arithmetic): v and the
    output convolution are folded into the small per-image context, so neither v nor the attention output
    (heads·d channels at full resolution) is ever materialised. For each image and head:
    context = softmax_n(k)ᵀ·(x̂·W_vᵀ) = (exp(k − max)ᵀ·x̂)·W_vᵀ / Σ_n exp(k − max), and
    out = W_o·(contextᵀ·q) = q·(context·W_oᵀ), with q = scale·softmax_d(q). Positions are visited in chunks
    that stay in cache, with the running maximum of k rescaling the sums (as flash attention's online softmax):
    one pass for the context, one for the output."""

    chunk_values = 1 << 18  # floats of q or k per chunk (1 MiB, an L2 cache)

    def __init__(self, attention: LinearAttention):
        super().__init__()
        heads, hidden = attention.heads, attention.to_qkv.weight.shape[0] // 3
        w_qkv = attention.to_qkv.weight.detach()[:, :, 0, 0]
        conv_out, norm_out = attention.to_out
        self.heads, self.scale = heads, attention.scale
        self.register_buffer("w_q", w_qkv[:hidden].clone())
        self.register_buffer("w_k", w_qkv[hidden: 2 * hidden].clone())
        self.register_buffer("w_v", w_qkv[2 * hidden:].reshape(heads, hidden // heads, -1).clone())  # h, e, c
        self.register_buffer("w_o", conv_out.weight.detach()[:, :, 0, 0].reshape(-1, heads, hidden // heads)
                             .permute(1, 2, 0).clone())  # h, e, c_out
        self.register_buffer("b_o", conv_out.bias.detach().clone())
        self.register_buffer("g_in", attention.norm.g.detach().flatten() * attention.norm.g.shape[1] ** 0.5)
        self.register_buffer("g_out", norm_out.g.detach().flatten() * norm_out.g.shape[1] ** 0.5)

    def forward(self, x):
        b, c, h, w = x.shape
        x_hat = F.normalize(x.permute(0, 2, 3, 1).reshape(b, h * w, c), dim=-1) * self.g_in  # b, n, c
        step = max(64, self.chunk_values // (b * self.w_q.shape[0]))
        chunks = [x_hat[:, start: start + step] for start in range(0, h * w, step)]
        summary, total = self.key_statistics(chunks)  # b, heads·d, c and b, heads·d
        context = torch.matmul(summary.unflatten(1, (self.heads, -1)), self.w_v.transpose(1, 2))
        context = context / total.unflatten(1, (self.heads, -1, 1))
        folded = torch.matmul(context * self.scale, self.w_o).flatten(1, 2)  # b, heads·d, c_out
        out = x.new_empty(b, h * w, folded.shape[-1])
        for start, chunk in zip(range(0, h * w, step), chunks):
            q = F.linear(chunk, self.w_q).unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(2)
            o = torch.baddbmm(self.b_o, q, folded)
            torch.mul(F.normalize(o, dim=-1), self.g_out, out=out[:, start: start + step])
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)

    def key_statistics(self, chunks):
        """Σ_n exp(k − max)·x̂ᵀ and Σ_n exp(k − max) per image and key feature, chunk by chunk."""
        top = summary = total = None
        for chunk in chunks:
            k = F.linear(chunk, self.w_k)  # b, step, heads·d
            chunk_top = k.amax(dim=1, keepdim=True)
            if top is None:
                top = chunk_top
                e = k.sub_(top).exp_()
                summary, total = torch.matmul(e.transpose(1, 2), chunk), e.sum(dim=1)
                continue
            new_top = torch.maximum(top, chunk_top)
            rescale = (top - new_top).exp_()  # b, 1, heads·d
            e = k.sub_(new_top).exp_()
            summary = torch.baddbmm(summary * rescale.transpose(1, 2), e.transpose(1, 2), chunk)
            total = torch.addcmul(e.sum(dim=1), total, rescale[:, 0])
            top = new_top
        return summary, total


def fast_unet(unet: nn.Module, pointwise: bool = True, attention: bool = True, **winograd) -> nn.Module:
    """A copy of `unet` (fp32, for inference) with its 3×3 convolutions as `WinogradConv2d`, and, if asked,
    its 1×1 convolutions as `PointwiseConv2d` and its linear attention as `FoldedLinearAttention`."""
    fast = copy.deepcopy(unet).eval()
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if attention and isinstance(child, LinearAttention):
                setattr(module, name, FoldedLinearAttention(child))
            elif isinstance(child, nn.Conv2d) and is_winograd_shape(child):
                setattr(module, name, WinogradConv2d(child, **winograd))
            elif isinstance(child, nn.Conv2d) and pointwise and is_pointwise(child):
                setattr(module, name, PointwiseConv2d(child))
    return fast
