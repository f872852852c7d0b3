"""Screening designs tried against the 80% target (issue #10), on the copies of `detect_screening.py` (same held-out
scans, same seed, one tampered site per copy: copy-move and CT-GAN injection at a random lung point, in-painting
and CT-GAN removal of a labelled nodule). Each variant is scored like the benchmark: a hit when one of the top 3
findings lies within 15 mm of the site.

- `shipped`: `detect --screen` as it is (the detector's map, robust z over the lung, non-maximum suppression);
- `depth-calibrated`: the map re-standardised within bins of distance to the pleura (6 quantile bins), so lung
  next to the pleura competes only with lung at the same depth;
- `inter-slice bands`: two more bands in the statistic, the finest band summed and differenced with the next slice
  (the noise's correlation along z, which resampling tamperers change);
- `nodule candidates` (injection copies only): the tampered nodule's rank among the CAD's candidates (≤ 50 per
  scan) by the site score (`score_sites`: 10 mm disc against a 14–24 mm ring) — "is this nodule real?" asked of
  every nodule-like blob;
- `longer training` (given `--model-long`): the same map from a residual detector trained 10× longer.

    python benchmarks/detect_screening_variants.py --model RUN [--model-long RUN] --ctgan-inject RUN --ctgan-remove RUN

Prints and saves benchmarks/results/detect_screening_variants.json (+ run record)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from detect_screening import held_out, rank_of, tampered_copies
from medfake.cad import detect_nodules
from medfake.data.samples import sample_path
from medfake.detect.detectors import load_detector
from medfake.detect.gridmap import GridMap, grid_peaks
from medfake.detect.screen import screen_scan
from medfake.detect.selfref_map import _pool
from medfake.io import load_scan
from medfake.lungmask import distance_mm, lung_mask
from medfake.runinfo import write_run_record
from medfake.stats import robust_sigma
from medfake.tamper.model import load_tamper_model

RESULTS = Path(__file__).resolve().parent / "results"
TOP = 3


def depth_calibrated(grid: GridMap, region: np.ndarray, spacing, bins: int = 6) -> GridMap:
    f, (z0, y0, x0) = grid.factor, grid.corner
    nz, ny, nx = grid.values.shape
    share = _pool(region[z0:z0 + nz, y0:y0 + ny * f, x0:x0 + nx * f].astype(np.float32), f)[:, :ny, :nx] / f ** 2
    depth = distance_mm(share > 0.5, (spacing[0], spacing[1] * f, spacing[2] * f))
    measured = np.isfinite(grid.values)
    values, d = grid.values[measured], depth[measured]
    edges = np.quantile(d, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, bins - 1)
    z = np.zeros_like(values)
    for k in range(bins):
        chosen = which == k
        if chosen.sum() >= 20:
            z[chosen] = (values[chosen] - np.median(values[chosen])) / max(robust_sigma(values[chosen]), 1e-6)
    out = np.full_like(grid.values, np.nan)
    out[measured] = z
    return GridMap(out, f, grid.corner, grid.shape)


def findings_of(grid: GridMap, region, spacing) -> list:
    """The map's top 10 peaks, 20 mm apart, as `rank_of` reads findings."""
    return [SimpleNamespace(voxel_zyx=grid.cell_voxel(c, region)) for c, _ in grid_peaks(grid, spacing, 10, 20.0)]


def with_inter_slice_bands(detector):
    plain = type(detector).bands

    def bands(self, crop, config):
        b = plain(self, crop, config)
        following = np.concatenate([b[0][1:], b[0][-1:]], axis=0)
        return np.concatenate([b, np.stack([b[0] + following, b[0] - following])])
    clone = load_detector(detector.source)
    clone.bands = bands.__get__(clone)
    return clone


def candidate_rank(detector, fake, site) -> tuple[int | None, int]:
    lung = lung_mask(fake)
    centres = [tuple(int(v) for v in n.center_zyx) for n in detect_nodules(fake, lung)]
    near = [i for i, c in enumerate(centres) if np.linalg.norm(np.subtract(c, site) * fake.spacing) <= 15.0]
    if not near:
        return None, len(centres)
    order = list(np.argsort(-detector.score_sites(fake, centres)))
    return min(order.index(i) for i in near) + 1, len(centres)


def main(args) -> dict:
    detector = load_detector(args.model)
    variants = {"shipped": detector, "inter-slice bands": with_inter_slice_bands(detector)}
    if args.model_long:
        variants["longer training"] = load_detector(args.model_long)
    models = {action: load_tamper_model(run, action)
              for action, run in (("inject", args.ctgan_inject), ("remove", args.ctgan_remove))}
    rng = np.random.default_rng(args.seed)
    donor = load_scan(sample_path("lung1"))
    cases = []
    for name, (path, nodules) in held_out(Path(args.cohort)).items():
        scan = load_scan(path)
        for method, action, site, voxels in tampered_copies(scan, nodules, donor, models, rng):
            fake = scan.with_voxels(np.rint(voxels).astype(np.int16))
            ranks = {}
            for label, variant in variants.items():
                result = screen_scan(fake, variant, top=10)
                ranks[label] = rank_of(result.findings, site, scan.spacing)
                if label == "shipped":
                    calibrated = findings_of(depth_calibrated(result.grid, result.region, scan.spacing),
                                             result.region, scan.spacing)
                    ranks["depth-calibrated"] = rank_of(calibrated, site, scan.spacing)
            if action == "inject":
                ranks["nodule candidates"], ranks["candidates"] = candidate_rank(detector, fake, site)
            cases.append({"scan": name, "method": method, "action": action, "site_zyx": list(site), "ranks": ranks})
            print(name, method, action, ranks, flush=True)
    labels = [*variants, "depth-calibrated", "nodule candidates"]
    summary = {}
    for label in labels:
        chosen = [c for c in cases if label in c["ranks"]]
        hits = sum(c["ranks"][label] is not None and c["ranks"][label] <= TOP for c in chosen)
        summary[label] = {"hits": hits, "copies": len(chosen)}
    return {"config": vars(args), "top": TOP, "summary": summary, "cases": cases}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a residual detector run")
    parser.add_argument("--model-long", default="", help="the same detector trained longer")
    parser.add_argument("--cohort", default="/work/runs/bench_tamper/cohort_test")
    parser.add_argument("--ctgan-inject", default="/work/runs/bench_tamper/run_inject")
    parser.add_argument("--ctgan-remove", default="/work/runs/bench_tamper/run_remove")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = main(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detect_screening_variants.json").write_text(json.dumps(out, indent=1, default=float))
    write_run_record(RESULTS, vars(args), args.seed, name="detect_screening_variants.run.json")
    print(json.dumps(out["summary"], indent=1))
