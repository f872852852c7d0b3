"""BTD scoring speed on 2 CPU cores, side by side in one run:

1. the reference loop (BTD's notebook, as we read it): one patch at a time, fp32, `p_sample(x, t=0)`, with
   1.8.3's own linear-attention code (rearrange + einsum on NCHW tensors) swapped in;
2. our batched scorer (inference_mode, channels_last, copy-free linear attention) in fp32 and bf16, over a
   sweep of batch sizes (small batches keep activations in the 2 cores' caches);
all at the `btd` preset (dim 32, 9.19 M parameters) on real 96² lung1 patches, with the scores' relative
difference to the reference. Beside them: the U-Net's FLOPs per patch and this machine's fp32/bf16 matmul
peak, which bound what any implementation can reach. Then whole-scan screening of a 512×512×300 CT (lung1's
48 slices interpolated to 300) with the `cpu-small` preset. The weights are random (seeded): speed does not
depend on them, and score agreement is checked on the same weights. Prints and saves
benchmarks/results/detect_throughput.json. Timings include the machine's current load (recorded)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from medfake.data.samples import sample_path
from medfake.detect.btd import BTDScorer, ScoreOptions, reference_scores
from medfake.detect.detectors import BTDDetector, DetectorConfig
from medfake.detect.patches import lung_mask_or_none, patches_at, to_unit
from medfake.detect.screen import screen_scan
from medfake.io import load_scan
from medfake.nn import ddpm
from medfake.nn.ddpm import build_diffusion
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).resolve().parent / "results"


def lung_patches(scan, n: int, seed: int = 0) -> np.ndarray:
    mask = lung_mask_or_none(scan)
    points = np.argwhere(mask[:, 48:-48:4, 48:-48:4]) * [1, 4, 4] + [0, 48, 48]
    pick = points[np.random.default_rng(seed).choice(len(points), n, replace=False)]
    return patches_at(to_unit(scan), pick, 96)


def linear_attention_183(self, x):
    """denoising_diffusion_pytorch 1.8.3's LinearAttention.forward, verbatim but for einops."""
    b, c, h, w = x.shape
    q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(self.norm(x)).chunk(3, dim=1))
    q = q.softmax(dim=-2) * self.scale
    k = k.softmax(dim=-1)
    context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
    out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
    return self.to_out(out.reshape(b, -1, h, w))


@contextlib.contextmanager
def code_of_183():
    ours = ddpm.LinearAttention.forward
    ddpm.LinearAttention.forward = linear_attention_183
    try:
        yield
    finally:
        ddpm.LinearAttention.forward = ours


def flops_per_patch(diffusion) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.zeros(1, 1, 96, 96), torch.zeros(1, dtype=torch.long)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        diffusion.model(x, t)
    return counter.get_total_flops()


def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def rate(action, n: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = action()
    return n / (time.perf_counter() - start), result


def main(n_reference: int, n_batched: int, slice_step: int, screen_slices: int, batch_sizes) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    scan = load_scan(sample_path("lung1"))
    patches = lung_patches(scan, max(n_reference, n_batched))
    diffusion = build_diffusion("btd", image_size=96).eval()
    out = {"threads": torch.get_num_threads(), "load_average_1min_before": os.getloadavg()[0], "patch": 96,
           "preset": "btd", "patches_per_second": {}, "relative_score_difference_vs_reference": {}}
    flops = flops_per_patch(diffusion)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    out["gflop_per_patch"] = flops / 1e9
    out["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    out["ceiling_patches_per_second_at_matmul_peak"] = {k: v / flops for k, v in peaks.items()}
    with code_of_183():
        ref_rate, ref_scores = rate(lambda: reference_scores(diffusion, patches[:n_reference]), n_reference)
    out["patches_per_second"]["reference_loop_fp32"] = ref_rate
    out["batch_sweep"] = {}
    for precision in ("fp32", "bf16"):
        best = (0.0, None, None)
        for batch in batch_sizes:
            scorer = BTDScorer(diffusion, ScoreOptions(precision=precision, batch_size=batch))
            scorer.scores(patches[:batch])  # warm-up (oneDNN kernels)
            speed, scores = rate(lambda: scorer.scores(patches[:n_batched]), n_batched)
            out["batch_sweep"][f"{precision}_batch{batch}"] = speed
            best = max(best, (speed, batch, scores), key=lambda r: r[0])
        speed, batch, scores = best
        out["patches_per_second"][f"batched_{precision}"] = speed
        out["patches_per_second"][f"batched_{precision}_batch"] = batch
        rel = np.abs(scores[:n_reference] - ref_scores) / np.abs(ref_scores)
        out["relative_score_difference_vs_reference"][precision] = {"max": float(rel.max()), "mean": float(rel.mean())}
    out["speedup_fp32_vs_reference"] = out["patches_per_second"]["batched_fp32"] / ref_rate
    out["speedup_bf16_vs_reference"] = out["patches_per_second"]["batched_bf16"] / ref_rate

    # whole-scan screening: 512×512×300 (lung1 interpolated along z to thin slices), cpu-small, bf16, no overlap
    from scipy import ndimage

    factor = screen_slices / scan.shape[0]
    thin = ndimage.zoom(scan.voxels, (factor, 1, 1), order=1).astype(np.int16)
    big = scan.with_voxels(thin, spacing=(scan.spacing[0] / factor, *scan.spacing[1:]))
    big.meta = {}
    small = build_diffusion("cpu-small", image_size=96).eval()
    detector = BTDDetector(DetectorConfig.default("btd", "ct", "cpu-small"), small, ScoreOptions(precision="bf16", batch_size=8))
    start = time.perf_counter()
    mask_start = time.perf_counter()
    lung_mask_or_none(big)
    mask_seconds = time.perf_counter() - mask_start
    result = screen_scan(big, detector, stride=96, slice_step=slice_step, batch_tiles=64)
    out["screening"] = {"shape": list(big.shape), "preset": "cpu-small", "precision": "bf16", "stride": 96,
                        "slice_step": slice_step, "tiles": result.tiles, "slices_scored": len(result.slices),
                        "seconds_total": time.perf_counter() - start, "seconds_lung_mask": mask_seconds}
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-reference", type=int, default=16)
    parser.add_argument("--n-batched", type=int, default=96)
    parser.add_argument("--batch-sizes", type=str, default="1,4,8,16,32")
    parser.add_argument("--slice-step", type=int, default=2)
    parser.add_argument("--screen-slices", type=int, default=300)
    args = parser.parse_args()
    result = main(args.n_reference, args.n_batched, args.slice_step, args.screen_slices,
                  [int(b) for b in args.batch_sizes.split(",")])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detect_throughput.json").write_text(json.dumps(result, indent=2))
    write_run_record(RESULTS, vars(args), 0, name="detect_throughput.run.json")
    print(json.dumps(result, indent=2))
