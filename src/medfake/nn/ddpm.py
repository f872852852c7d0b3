"""DDPM U-Net + Gaussian diffusion, module-for-module compatible with denoising-diffusion-pytorch 1.8.3.

A checkpoint written by that package (`torch.load(f)['model']`, e.g. BTD's CT_model.pt / MRI_model.pt) loads
into `GaussianDiffusion` with `strict=True` and computes the same numbers: the state-dict keys, shapes, the
registration order and the forward pass follow lucidrains' code (GroupNorm blocks, RMSNorm attention, linear
attention at all but the last level, space-to-depth downsampling, sigmoid beta schedule). Only what the
`pred_noise` objective needs is kept; no einops, no torchvision.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# width presets: `btd` is the published BTD model (9,190,977 U-Net parameters)
PRESETS = {
    "btd": dict(dim=32, dim_mults=(1, 2, 4, 8)),
    "cpu-small": dict(dim=16, dim_mults=(1, 2, 4, 8), attn_heads=2, attn_dim_head=16),
    "tiny": dict(dim=8, dim_mults=(1, 2, 4), attn_heads=1, attn_dim_head=16),  # tests
}


# --- small helper modules ---------------------------------------------------------------------------------

class SpaceToDepth(nn.Module):
    """einops `b c (h p1) (w p2) -> b (c p1 p2) h w` with p1 = p2 = 2 (channel index c*4 + p1*2 + p2)."""

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2)


def Upsample(dim, dim_out):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


def Downsample(dim, dim_out):
    return nn.Sequential(SpaceToDepth(), nn.Conv2d(dim * 4, dim_out, 1))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.g * (x.shape[1] ** 0.5)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim, theta=10000):
        super().__init__()
        self.dim = dim
        self.theta = theta

    def forward(self, x):
        half_dim = self.dim // 2
        emb = math.log(self.theta) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=x.device) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


# --- building blocks --------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, dim, dim_out, groups=8):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.proj(x)
        if scale_shift is None:
            return F.silu(self.norm(x), inplace=True)
        # norm(x) * (scale + 1) + shift with the GroupNorm affine folded in: one pass over x instead of three
        scale, shift = scale_shift
        gain = self.norm.weight[:, None, None] * (scale + 1)
        bias = self.norm.bias[:, None, None] * (scale + 1) + shift
        x = F.group_norm(x, self.norm.num_groups, None, None, self.norm.eps)
        return F.silu(torch.addcmul(bias, x, gain), inplace=True)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, *, time_emb_dim, groups=8):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift=scale_shift)
        h = self.block2(h)
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), RMSNorm(dim))

    def forward(self, x):
        # 1.8.3's maths (q softmax over features, k softmax over positions) on a b,n,(3·heads·d) view of
        # channels_last activations: per-head matrix products on strided views need no copies, and k's
        # softmax normaliser is applied to the small context instead of the large k
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, -1)
        q, k, v = qkv.unbind(2)
        q = q.softmax(dim=-1) * self.scale
        k = (k - k.amax(dim=1, keepdim=True)).exp_()
        norm = k.sum(dim=1).unsqueeze(-1)  # b, heads, d, 1
        heads = [torch.matmul(q[:, :, i], torch.matmul(k[:, :, i].transpose(1, 2), v[:, :, i]) / norm[:, i])
                 for i in range(self.heads)]
        out = torch.stack(heads, dim=2)  # b, n, heads, e
        return self.to_out(out.reshape(b, h, w, -1).permute(0, 3, 1, 2))


class Attention(nn.Module):
    """Full softmax attention (1.8.3's `Attend` without flash, dropout 0, scale dim_head^-0.5)."""

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in qkv)  # b heads n d
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


# --- the U-Net --------------------------------------------------------------------------------------------

class Unet(nn.Module):
    def __init__(self, dim, init_dim=None, out_dim=None, dim_mults=(1, 2, 4, 8), channels=3,
                 resnet_block_groups=8, full_attn=None, attn_heads=4, attn_dim_head=32):
        super().__init__()
        self.channels = channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False
        init_dim = init_dim or dim
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        full_attn = tuple(full_attn) if full_attn is not None else (False,) * (len(dim_mults) - 1) + (True,)
        block_klass = partial(ResnetBlock, groups=resnet_block_groups)
        # heads/dim_head are fixed at 4×32 in 1.8.3; 1.8.4+ made them arguments (same keys, same defaults)
        attention = partial(Attention, heads=attn_heads, dim_head=attn_dim_head)
        linear_attention = partial(LinearAttention, heads=attn_heads, dim_head=attn_dim_head)

        time_dim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))

        # `ups` is registered before the middle blocks, as in 1.8.3 (keeps the state-dict order)
        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        for ind, ((dim_in, dim_out), layer_full_attn) in enumerate(zip(in_out, full_attn)):
            is_last = ind >= len(in_out) - 1
            attn_klass = attention if layer_full_attn else linear_attention
            self.downs.append(nn.ModuleList([
                block_klass(dim_in, dim_in, time_emb_dim=time_dim),
                block_klass(dim_in, dim_in, time_emb_dim=time_dim),
                attn_klass(dim_in),
                Downsample(dim_in, dim_out) if not is_last else nn.Conv2d(dim_in, dim_out, 3, padding=1),
            ]))

        mid_dim = dims[-1]
        self.mid_block1 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)
        self.mid_attn = attention(mid_dim)
        self.mid_block2 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)

        for ind, ((dim_in, dim_out), layer_full_attn) in enumerate(zip(*map(reversed, (in_out, full_attn)))):
            is_last = ind == len(in_out) - 1
            attn_klass = attention if layer_full_attn else linear_attention
            self.ups.append(nn.ModuleList([
                block_klass(dim_out + dim_in, dim_out, time_emb_dim=time_dim),
                block_klass(dim_out + dim_in, dim_out, time_emb_dim=time_dim),
                attn_klass(dim_out),
                Upsample(dim_out, dim_in) if not is_last else nn.Conv2d(dim_out, dim_in, 3, padding=1),
            ]))

        self.out_dim = out_dim or channels
        self.final_res_block = block_klass(dim * 2, dim, time_emb_dim=time_dim)
        self.final_conv = nn.Conv2d(dim, self.out_dim, 1)

    @property
    def downsample_factor(self):
        return 2 ** (len(self.downs) - 1)

    def forward(self, x, time):
        if any(d % self.downsample_factor for d in x.shape[-2:]):
            raise ValueError(f"image sides {tuple(x.shape[-2:])} must be divisible by {self.downsample_factor}")
        x = self.init_conv(x)
        r = x.clone()
        sinusoid = self.time_mlp[0](time)  # computed in fp32 even when the weights are bf16
        t = self.time_mlp[1:](sinusoid.to(x.dtype))

        h = []
        for block1, block2, attn, downsample in self.downs:
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            x = attn(x) + x
            h.append(x)
            x = downsample(x)

        x = self.mid_block1(x, t)
        x = self.mid_attn(x) + x
        x = self.mid_block2(x, t)

        for block1, block2, attn, upsample in self.ups:
            x = block1(torch.cat((x, h.pop()), dim=1), t)
            x = block2(torch.cat((x, h.pop()), dim=1), t)
            x = attn(x) + x
            x = upsample(x)

        x = self.final_res_block(torch.cat((x, r), dim=1), t)
        return self.final_conv(x)


# --- diffusion --------------------------------------------------------------------------------------------

def sigmoid_beta_schedule(timesteps, start=-3, end=3, tau=1):
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.tensor(start / tau).sigmoid()
    v_end = torch.tensor(end / tau).sigmoid()
    alphas_cumprod = (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


def linear_beta_schedule(timesteps):
    scale = 1000 / timesteps
    return torch.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=torch.float64)


def extract(a, t, x_shape):
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class GaussianDiffusion(nn.Module):
    """1.8.3's `GaussianDiffusion` for `objective='pred_noise'` (the BTD setting); buffers as in the package."""

    def __init__(self, model, *, image_size, timesteps=1000, sampling_timesteps=None, beta_schedule="sigmoid",
                 auto_normalize=True):
        super().__init__()
        self.model = model
        self.channels = model.channels
        self.image_size = image_size
        self.objective = "pred_noise"
        betas = {"sigmoid": sigmoid_beta_schedule, "linear": linear_beta_schedule}[beta_schedule](timesteps)

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        self.num_timesteps = int(betas.shape[0])
        self.sampling_timesteps = sampling_timesteps or self.num_timesteps

        def register(name, val):
            self.register_buffer(name, val.to(torch.float32))

        register("betas", betas)
        register("alphas_cumprod", alphas_cumprod)
        register("alphas_cumprod_prev", alphas_cumprod_prev)
        register("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        register("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))
        register("log_one_minus_alphas_cumprod", torch.log(1.0 - alphas_cumprod))
        register("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod))
        register("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod - 1))
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        register("posterior_variance", posterior_variance)
        register("posterior_log_variance_clipped", torch.log(posterior_variance.clamp(min=1e-20)))
        register("posterior_mean_coef1", betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        register("posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod))
        snr = alphas_cumprod / (1 - alphas_cumprod)
        register("loss_weight", snr / snr)

        self.auto_normalize = auto_normalize

    @property
    def device(self):
        return self.betas.device

    def normalize(self, img):
        return img * 2 - 1 if self.auto_normalize else img

    def unnormalize(self, img):
        return (img + 1) * 0.5 if self.auto_normalize else img

    def predict_start_from_noise(self, x_t, t, noise):
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def predict_noise_from_start(self, x_t, t, x0):
        return ((extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    def q_posterior(self, x_start, x_t, t):
        mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return mean, extract(self.posterior_variance, t, x_t.shape), extract(self.posterior_log_variance_clipped, t, x_t.shape)

    def model_predictions(self, x, t, clip_x_start=False, rederive_pred_noise=False):
        """(pred_noise, x_start) for the noisy batch `x` at integer steps `t` (shape [b])."""
        pred_noise = self.model(x, t)
        x_start = self.predict_start_from_noise(x, t, pred_noise)
        if clip_x_start:
            x_start = x_start.clamp(-1.0, 1.0)
            if rederive_pred_noise:
                pred_noise = self.predict_noise_from_start(x, t, x_start)
        return pred_noise, x_start

    def p_mean_variance(self, x, t, clip_denoised=True):
        _, x_start = self.model_predictions(x, t)
        if clip_denoised:
            x_start = x_start.clamp(-1.0, 1.0)
        mean, variance, log_variance = self.q_posterior(x_start, x, t)
        return mean, variance, log_variance, x_start

    @torch.inference_mode()
    def p_sample(self, x, t: int, clip_denoised=True):
        """One reverse step from integer step t → (x_{t-1}, predicted x_0); no noise is added at t = 0."""
        batched_times = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean, _, log_variance, x_start = self.p_mean_variance(x, batched_times, clip_denoised=clip_denoised)
        noise = torch.randn_like(x) if t > 0 else 0.0
        return mean + (0.5 * log_variance).exp() * noise, x_start

    @torch.inference_mode()
    def ddim_sample(self, batch_size, generator=None, eta=0.0):
        """DDIM sampling with `sampling_timesteps` steps (as 1.8.3), returned in [0, 1]."""
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        times = torch.linspace(-1, self.num_timesteps - 1, steps=self.sampling_timesteps + 1)
        times = list(reversed(times.int().tolist()))
        img = torch.randn(shape, device=self.device, generator=generator)
        for time, time_next in zip(times[:-1], times[1:]):
            time_cond = torch.full((batch_size,), time, device=self.device, dtype=torch.long)
            pred_noise, x_start = self.model_predictions(img, time_cond, clip_x_start=True, rederive_pred_noise=True)
            if time_next < 0:
                img = x_start
                continue
            alpha, alpha_next = self.alphas_cumprod[time], self.alphas_cumprod[time_next]
            sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c = (1 - alpha_next - sigma ** 2).sqrt()
            noise = torch.randn(shape, device=self.device, generator=generator)
            img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
        return self.unnormalize(img)

    def q_sample(self, x_start, t, noise):
        return (extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def p_losses(self, x_start, t, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        model_out = self.model(self.q_sample(x_start, t, noise), t)
        loss = F.mse_loss(model_out.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * extract(self.loss_weight, t, loss.shape)).mean()

    def forward(self, img, generator=None):
        """Training loss for a batch in [0, 1] (normalised to [-1, 1] inside, like 1.8.3)."""
        b, _, h, w = img.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"height and width of image must be {self.image_size}")
        t = torch.randint(0, self.num_timesteps, (b,), device=img.device, generator=generator).long()
        noise = torch.randn(img.shape, device=img.device, generator=generator)
        return self.p_losses(self.normalize(img), t, noise)


def build_diffusion(preset: str = "btd", image_size: int = 96, channels: int = 1, **unet_overrides) -> GaussianDiffusion:
    """The BTD configuration (pred_noise, sigmoid schedule, 1000 steps, 250 DDIM sampling steps) at a width preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    unet = Unet(**{**PRESETS[preset], **unet_overrides}, channels=channels)
    return GaussianDiffusion(unet, image_size=image_size, timesteps=1000, sampling_timesteps=250)
