"""Back-in-Time Diffusion scoring: the residual of one reverse diffusion step from the clean patch.

x = 2·patch − 1 is taken as the diffusion state at step t (no noise is added); the U-Net predicts ε,
x₀ = (x − √(1−ᾱ_t)·ε)/√ᾱ_t (clamped to [−1, 1] by default, as 1.8.3's `p_sample`), and
x₋₁ = coef1_t·x₀ + coef2_t·x is the posterior mean. At t = 0, coef1 = 1 and coef2 = 0, so x₋₁ = x₀.
The score is mean((x − x₋₁)²) over the patch (or its centre, or the top-k pixels).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from medfake.detect.config import PRECISIONS, ScoreOptions
from medfake.nn.ddpm import GaussianDiffusion
from medfake.nn.fast import fast_unet

DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))
__all__ = ["BTDScorer", "ScoreOptions", "batched", "reduce_maps", "reference_scores"]


def batched(patches01: np.ndarray, batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor],
            empty_shape: tuple, workers: int = 1) -> np.ndarray:
    """`fn` applied to `patches01` in torch batches of `batch_size`, results concatenated as numpy
    (`empty_shape` float32 zeros when there are no patches). With `workers` > 1 the batches run on that many
    threads at once, each with one torch thread (data parallelism instead of splitting every operation)."""
    def run(start):
        return fn(torch.from_numpy(np.ascontiguousarray(patches01[start: start + batch_size]))).cpu().numpy()

    starts = range(0, len(patches01), batch_size)
    if workers > 1 and len(starts) > 1:
        threads = torch.get_num_threads()
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            out = list(pool.map(run, starts))
        torch.set_num_threads(threads)  # torch also keeps the last setting as the default of new threads
    else:
        out = [run(start) for start in starts]
    return np.concatenate(out) if out else np.zeros(empty_shape, np.float32)


def reduce_maps(maps: np.ndarray, options: ScoreOptions) -> np.ndarray:
    """(N, P, P) per-pixel anomaly maps → (N,) scores (region, then mean or mean of the top-k fraction)."""
    if options.region == "centre":
        p = maps.shape[-1]
        lo = max(0, p // 2 - options.centre // 2)
        maps = maps[:, lo: lo + options.centre, lo: lo + options.centre]
    flat = maps.reshape(len(maps), -1)
    if options.reduce == "mean":
        return flat.mean(axis=1)
    k = max(1, int(round(options.topk * flat.shape[1])))
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1)


class BTDScorer:
    """Batched, inference-mode BTD residuals for a `GaussianDiffusion`; bf16/fp16 run a converted copy of the
    U-Net in channels_last layout (the step arithmetic stays fp32). On CPU in fp32 with `options.fast`, a copy
    with Winograd/matmul convolutions (nn/fast.py; a snapshot of the weights when the scorer is built); on
    CPU, batches run on `cpu_workers` threads at once."""

    def __init__(self, diffusion: GaussianDiffusion, options: ScoreOptions | None = None, device=None):
        self.options = options or ScoreOptions()
        if not 0 <= self.options.t < diffusion.num_timesteps:
            raise ValueError(f"t must be in 0..{diffusion.num_timesteps - 1}, not {self.options.t}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.diffusion = diffusion.eval().to(self.device)
        self.dtype = DTYPES[self.options.precision]
        on_cpu = self.device.type == "cpu"
        if self.dtype != torch.float32:
            net = copy.deepcopy(diffusion.model).to(self.dtype)
        elif self.options.fast and on_cpu:
            net = fast_unet(diffusion.model)
        else:
            net = diffusion.model
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)
        self.workers = (self.options.cpu_workers or torch.get_num_threads()) if on_cpu else 1

    def _step_coefficients(self):
        d, t = self.diffusion, self.options.t
        return (d.sqrt_recip_alphas_cumprod[t], d.sqrt_recipm1_alphas_cumprod[t],
                d.posterior_mean_coef1[t], d.posterior_mean_coef2[t])

    @torch.inference_mode()
    def residual(self, patches01: torch.Tensor) -> torch.Tensor:
        """x − x₋₁ (in [−1, 1] units, float32) for a batch (B, C, P, P) of [0, 1] patches."""
        x = (patches01.to(self.device, torch.float32) * 2 - 1)
        t = torch.full((x.shape[0],), self.options.t, device=self.device, dtype=torch.long)
        eps = self.net(x.to(self.dtype).contiguous(memory_format=torch.channels_last), t).float()
        recip, recipm1, coef1, coef2 = self._step_coefficients()
        x_start = recip * x - recipm1 * eps
        if self.options.clamp:
            x_start = x_start.clamp(-1.0, 1.0)
        return x - (coef1 * x_start + coef2 * x)

    def anomaly_maps(self, patches01: np.ndarray) -> np.ndarray:
        """(N, P, P) squared residuals (mean over channels)."""
        return batched(patches01, self.options.batch_size, lambda x: (self.residual(x) ** 2).mean(dim=1),
                       (0,) + patches01.shape[2:], self.workers)

    def scores(self, patches01: np.ndarray) -> np.ndarray:
        return reduce_maps(self.anomaly_maps(patches01), self.options)


def reference_scores(diffusion: GaussianDiffusion, patches01: np.ndarray) -> np.ndarray:
    """The reference loop, as BTD's notebook presumably runs it: one patch at a time, fp32,
    `p_sample(x, t=0)` and mean((x − x₋₁)²)."""
    diffusion = diffusion.eval()
    scores = []
    for patch in patches01:
        x = diffusion.normalize(torch.from_numpy(patch[None]).to(diffusion.device))
        x_prev, _ = diffusion.p_sample(x, 0)
        scores.append(float(((x - x_prev) ** 2).mean()))
    return np.asarray(scores)
