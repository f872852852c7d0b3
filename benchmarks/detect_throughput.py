"""BTD scoring speed on 2 CPU cores, side by side in one run:

1. the reference loop (BTD's notebook, as we read it): one patch at a time, fp32, `p_sample(x, t=0)`, with
   1.8.3's own linear-attention code (rearrange + einsum on NCHW tensors) swapped in;
2. the plain batched scorer (`--no-fast`: inference_mode, channels_last, copy-free linear attention, every
   operation split over the 2 threads) in fp32 and bf16, over a sweep of batch sizes;
3. the fast path (`ScoreOptions` defaults: nn/fast.py's Winograd F(4×4, 3×3) and matmul 1×1 convolutions and
   folded linear attention, batches on 2 single-threaded workers), per-worker batch sweep; and the workers
   alone (`--no-fast`, 2 workers) to separate the two ideas;
all at the `btd` preset (dim 32, 9.19 M parameters) on real 96² lung1 patches, with the scores' relative
difference to the reference. Beside them: the U-Net's FLOPs per patch (the standard count: Winograd's saved
multiplies are not subtracted) and this machine's fp32/bf16 matmul peak (the larger of one 2-thread product
and two concurrent 1-thread products, over 1024-3072 sides), which bound what a direct implementation can
reach. The machine is shared: after the sweep, `--rounds` interleaved rounds of [peak, plain, workers, fast]
are timed and each ratio to the peak is reported per round (peak and model under the same load) with its
median, for the best round of each and for the medians. Then whole-scan screening of a 512×512×300 CT
(lung1's 48 slices interpolated to 300) with the `cpu-small` preset. The weights are random (seeded): speed
does not depend on them, and score agreement is checked on the same weights. Prints and saves
benchmarks/results/detect_throughput.json. Timings include the machine's current load (recorded)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
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


def matmul_rate(dtype, n: int, reps: int, workers: int = 1) -> float:
    """FLOP/s of n×n products: `workers` == 1: one product split over the torch threads; otherwise that many
    concurrent single-threaded products."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

    def products(_=None):
        if workers > 1:
            torch.set_num_threads(1)
        for _ in range(reps):
            a @ b

    a @ b
    start = time.perf_counter()
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(products, range(workers)))
    else:
        products()
    return 2 * n ** 3 * reps * workers / (time.perf_counter() - start)


def matmul_peak(dtype, workers: int) -> float:
    return max(matmul_rate(dtype, n, reps, w) for n, reps in ((1024, 24), (2048, 4), (3072, 2))
               for w in (1, workers))


def rate(action, n: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = action()
    return n / (time.perf_counter() - start), result


def relative_difference(scores, reference) -> dict:
    rel = np.abs(scores[:len(reference)] - reference) / np.abs(reference)
    return {"max": float(rel.max()), "mean": float(rel.mean())}


VARIANTS = {  # name: ScoreOptions without the batch size
    "plain": dict(fast=False, cpu_workers=1),
    "workers": dict(fast=False),
    "fast": dict(fast=True),
}


def sweep(diffusion, patches, precision, variants, batch_sizes, out) -> dict:
    """Patches/s per variant and batch size; returns {variant: (best rate, its batch, its scores)}."""
    best = {}
    for name in variants:
        for batch in batch_sizes:
            scorer = BTDScorer(diffusion, ScoreOptions(precision=precision, batch_size=batch, **VARIANTS[name]))
            scorer.scores(patches[:2 * batch])  # warm-up (oneDNN kernels, both workers)
            speed, scores = rate(lambda: scorer.scores(patches), len(patches))
            out["batch_sweep"][f"{name}_{precision}_batch{batch}"] = speed
            if speed > best.get(name, (0.0,))[0]:
                best[name] = (speed, batch, scores)
    return best


def interleaved_rounds(diffusion, patches, best, rounds: int, flops: float, out) -> None:
    """`rounds` × [fp32 peak, each variant at its best batch]: best-round and median ratios to the peak."""
    scorers = {name: BTDScorer(diffusion, ScoreOptions(batch_size=batch, **VARIANTS[name]))
               for name, (_, batch, _) in best.items()}
    timings = {"peak_gflops": [], **{name: [] for name in scorers}}
    for _ in range(rounds):
        timings["peak_gflops"].append(matmul_peak(torch.float32, 2) / 1e9)
        for name, scorer in scorers.items():
            timings[name].append(rate(lambda: scorer.scores(patches), len(patches))[0])
    peak_best, peak_median = max(timings["peak_gflops"]), float(np.median(timings["peak_gflops"]))
    out["rounds"] = timings
    out["fraction_of_fp32_matmul_peak"] = {
        name: {"best_round": max(t) * flops / 1e9 / peak_best,
               "median": float(np.median(t)) * flops / 1e9 / peak_median,
               "per_round": [r * flops / 1e9 / p for r, p in zip(t, timings["peak_gflops"])],
               "median_of_rounds": float(np.median([r * flops / 1e9 / p for r, p in zip(t, timings["peak_gflops"])]))}
        for name, t in timings.items() if name != "peak_gflops"}


def main(n_reference: int, n_batched: int, slice_step: int, screen_slices: int, batch_sizes, rounds: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    scan = load_scan(sample_path("lung1"))
    patches = lung_patches(scan, max(n_reference, n_batched))
    diffusion = build_diffusion("btd", image_size=96).eval()
    out = {"threads": torch.get_num_threads(), "load_average_1min_before": os.getloadavg()[0], "patch": 96,
           "preset": "btd", "patches_per_second": {}, "relative_score_difference_vs_reference": {},
           "batch_sweep": {}}
    flops = flops_per_patch(diffusion)
    peaks = {"fp32": matmul_peak(torch.float32, 2), "bf16": matmul_peak(torch.bfloat16, 2)}
    out["gflop_per_patch"] = flops / 1e9
    out["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    out["ceiling_patches_per_second_at_matmul_peak"] = {k: v / flops for k, v in peaks.items()}
    with code_of_183():
        ref_rate, ref_scores = rate(lambda: reference_scores(diffusion, patches[:n_reference]), n_reference)
    out["patches_per_second"]["reference_loop_fp32"] = ref_rate
    for precision, variants in (("fp32", ("plain", "workers", "fast")), ("bf16", ("plain", "workers"))):
        best = sweep(diffusion, patches[:n_batched], precision, variants, batch_sizes, out)
        for name, (speed, batch, scores) in best.items():
            out["patches_per_second"][f"{name}_{precision}"] = speed
            out["patches_per_second"][f"{name}_{precision}_batch"] = batch
            out["relative_score_difference_vs_reference"][f"{name}_{precision}"] = relative_difference(
                scores, ref_scores)
        if precision == "fp32":
            out["relative_score_difference_fast_vs_plain_fp32"] = relative_difference(
                best["fast"][2], best["plain"][2])
            fp32_best = best
    for name in ("plain_fp32", "fast_fp32", "plain_bf16"):
        out[f"speedup_{name}_vs_reference"] = out["patches_per_second"][name] / ref_rate
    interleaved_rounds(diffusion, patches[:n_batched], fp32_best, rounds, flops, out)
    out["load_average_1min_after_rounds"] = os.getloadavg()[0]

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
    parser.add_argument("--n-batched", type=int, default=48)
    parser.add_argument("--batch-sizes", type=str, default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice-step", type=int, default=2)
    parser.add_argument("--screen-slices", type=int, default=300)
    args = parser.parse_args()
    result = main(args.n_reference, args.n_batched, args.slice_step, args.screen_slices,
                  [int(b) for b in args.batch_sizes.split(",")], args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detect_throughput.json").write_text(json.dumps(result, indent=2))
    write_run_record(RESULTS, vars(args), 0, name="detect_throughput.run.json")
    print(json.dumps(result, indent=2))
