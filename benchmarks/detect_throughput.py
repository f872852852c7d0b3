"""BTD scoring speed on 2 CPU cores, side by side in one run:

1. the reference loop (BTD's notebook, as we read it): one patch at a time, fp32, `p_sample(x, t=0)`;
2. our batched scorer (inference_mode, channels_last) in fp32 and in bf16;
all at the `btd` preset (dim 32, 9.19 M parameters) on real 96² lung1 patches, with the scores' relative
difference to the reference. Then whole-scan screening of a 512×512×300 CT (lung1's 48 slices interpolated to 300)
with the `cpu-small` preset. The weights are random (seeded): speed does not depend on them, and score
agreement is checked on the same weights. Prints and saves benchmarks/results/detect_throughput.json.
Timings include the machine's current load (recorded; other jobs share these 2 cores)."""

from __future__ import annotations

import argparse
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
from medfake.nn.ddpm import build_diffusion
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).resolve().parent / "results"


def lung_patches(scan, n: int, seed: int = 0) -> np.ndarray:
    mask = lung_mask_or_none(scan)
    points = np.argwhere(mask[:, 48:-48:4, 48:-48:4]) * [1, 4, 4] + [0, 48, 48]
    pick = points[np.random.default_rng(seed).choice(len(points), n, replace=False)]
    return patches_at(to_unit(scan), pick, 96)


def rate(action, n: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = action()
    return n / (time.perf_counter() - start), result


def main(n_reference: int, n_batched: int, slice_step: int, screen_slices: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    scan = load_scan(sample_path("lung1"))
    patches = lung_patches(scan, max(n_reference, n_batched))
    diffusion = build_diffusion("btd", image_size=96).eval()
    out = {"threads": torch.get_num_threads(), "load_average_1min_before": os.getloadavg()[0], "patch": 96,
           "preset": "btd", "patches_per_second": {}, "relative_score_difference_vs_reference": {}}
    ref_rate, ref_scores = rate(lambda: reference_scores(diffusion, patches[:n_reference]), n_reference)
    out["patches_per_second"]["reference_loop_fp32"] = ref_rate
    for precision in ("fp32", "bf16"):
        scorer = BTDScorer(diffusion, ScoreOptions(precision=precision, batch_size=32))
        scorer.scores(patches[:4])  # warm-up (oneDNN kernels)
        speed, scores = rate(lambda: scorer.scores(patches[:n_batched]), n_batched)
        out["patches_per_second"][f"batched_{precision}"] = speed
        rel = np.abs(scores[:n_reference] - ref_scores) / np.abs(ref_scores)
        out["relative_score_difference_vs_reference"][precision] = {"max": float(rel.max()), "mean": float(rel.mean())}
    out["speedup_bf16_vs_reference"] = out["patches_per_second"]["batched_bf16"] / ref_rate

    # whole-scan screening: 512×512×300 (lung1 interpolated along z to thin slices), cpu-small, bf16, no overlap
    from scipy import ndimage

    factor = screen_slices / scan.shape[0]
    thin = ndimage.zoom(scan.voxels, (factor, 1, 1), order=1).astype(np.int16)
    big = scan.with_voxels(thin, spacing=(scan.spacing[0] / factor, *scan.spacing[1:]))
    big.meta = {}
    small = build_diffusion("cpu-small", image_size=96).eval()
    detector = BTDDetector(DetectorConfig.default("btd", "ct", "cpu-small"), small, ScoreOptions(precision="bf16", batch_size=32))
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
    parser.add_argument("--n-batched", type=int, default=64)
    parser.add_argument("--slice-step", type=int, default=2)
    parser.add_argument("--screen-slices", type=int, default=300)
    args = parser.parse_args()
    result = main(args.n_reference, args.n_batched, args.slice_step, args.screen_slices)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detect_throughput.json").write_text(json.dumps(result, indent=2))
    write_run_record(RESULTS, vars(args), 0, name="detect_throughput.run.json")
    print(json.dumps(result, indent=2))
