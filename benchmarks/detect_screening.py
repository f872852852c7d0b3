"""Screening quality and speed (issue #10 targets: the tampered site among the top 3 findings in ≥ 80% of
tampered scans; a 512×512×300 CT screened in ≤ 60 s on 2 cores).

Quality: every held-out scan (lung1, the TotalSegmentator chest CT chest2, the held-out synthetic cohort) is
tampered at ONE site per tampered copy — copy-move injection at a random lung point (donor: lung1's nodule),
in-painting removal of a labelled nodule, and, given trained CT-GAN runs, CT-GAN injection at the same point and
CT-GAN removal of the same nodule — and each copy is screened whole (`detect --screen`, the detector's own map,
lung only, non-maximum suppression). A copy is a hit when one of the top 3 findings lies within 15 mm of its site.
No detector saw any of these scans or any fake.

Speed: lung1 resampled to 512×512×300 (0.8 mm slices), screened at the CLI defaults and at the fast settings,
with 2 threads; wall and CPU seconds and the machine's load average are recorded (the machine is shared).

    python benchmarks/detect_screening.py --ctgan-inject RUN --ctgan-remove RUN [--model selfref|RUN]
    python benchmarks/detect_screening.py --smoke      # two scans, no timing: a pipeline check

Prints and saves benchmarks/results/detect_screening[_smoke].json (+ run record)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medfake.data.samples import sample_path
from medfake.detect.config import ScreenOptions
from medfake.detect.detectors import load_detector
from medfake.detect.screen import screen_scan
from medfake.io import load_scan
from medfake.io.tables import read_luna16
from medfake.lungmask import lung_mask
from medfake.runinfo import write_run_record
from medfake.scan import Scan
from medfake.tamper.classical import copy_move_inject, inpaint_remove

RESULTS = Path(__file__).resolve().parent / "results"
LUNG1_NODULE = ((33, 359, 218), 13.8)
HIT_MM = 15.0
FAST = {"step_mm": 4.0}  # the fast settings (CLI: --step-mm 4)


def held_out(cohort: Path | None) -> dict[str, tuple[Path, list]]:
    """name → (scan path, [(nodule voxel, diameter mm)])."""
    out = {"lung1": (sample_path("lung1"), [LUNG1_NODULE]), "chest2": (sample_path("chest2"), [])}
    if cohort is None:
        return out
    table = read_luna16(cohort / "annotations.csv")
    for path in sorted(cohort.glob("*.nrrd")):
        key = path.name.split(".")[0]
        scan = load_scan(path)
        out[key] = (path, [(tuple(int(v) for v in scan.world_to_voxel(r.coords)), r.diameter_mm)
                           for r in table if r.filename == key])
    return out


def random_lung_point(lung: np.ndarray, rng) -> tuple[int, int, int]:
    """A lung point ≥ 3 voxels inside the mask (an injection site)."""
    inner = np.argwhere(ndimage.binary_erosion(lung, iterations=3)[:, ::4, ::4]) * [1, 4, 4]
    return tuple(int(v) for v in inner[rng.integers(len(inner))])


def tampered_copies(scan: Scan, nodules, donor: Scan, models: dict, rng):
    """(method, action, site, tampered voxels) — one site per copy."""
    from medfake.tamper.pipeline import tamper_scan

    lung = lung_mask(scan)
    point = random_lung_point(lung, rng)
    yield "copy-move", "inject", point, copy_move_inject(scan, point, donor, LUNG1_NODULE[0], rng)
    if "inject" in models:
        yield "ctgan", "inject", point, tamper_scan(scan, [point], "inject", models["inject"], "ctgan", rng, lung)[0].voxels
    if nodules:
        site, diameter = nodules[0]
        yield "inpaint", "remove", site, inpaint_remove(scan, site, diameter)
        if "remove" in models:
            yield "ctgan", "remove", site, tamper_scan(scan, [site], "remove", models["remove"], "ctgan", rng, lung)[0].voxels


def rank_of(findings, site, spacing) -> int | None:
    """1-based rank of the first finding within HIT_MM of the site (None: not among them)."""
    for k, f in enumerate(findings):
        if np.linalg.norm(np.subtract(f.voxel_zyx, site) * np.asarray(spacing)) <= HIT_MM:
            return k + 1
    return None


def site_value(result, site) -> float | None:
    """The standardised map at the site's cell (None: not measured there)."""
    grid = result.grid
    cell = (site[0] - grid.corner[0], (site[1] - grid.corner[1]) // grid.factor, (site[2] - grid.corner[2]) // grid.factor)
    if not all(0 <= c < n for c, n in zip(cell, grid.values.shape)):
        return None
    value = float(grid.values[cell])
    return value if np.isfinite(value) else None


def nearest_nodule_mm(zyx, nodules, spacing) -> float | None:
    """Distance to the nearest labelled genuine nodule of the scan (what a content-keyed map would find)."""
    if not nodules:
        return None
    return float(min(np.linalg.norm(np.subtract(zyx, n) * np.asarray(spacing)) for n, _ in nodules))


def screening_quality(scans: dict, detector, models: dict, top: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    donor = load_scan(sample_path("lung1"))
    cases = []
    for name, (path, nodules) in scans.items():
        scan = load_scan(path)
        for method, action, site, voxels in tampered_copies(scan, nodules, donor, models, rng):
            fake = scan.with_voxels(np.rint(voxels).astype(np.int16))
            start = time.time()
            result = screen_scan(fake, detector, top=max(top, 10))
            findings = result.findings
            rank = rank_of(findings, site, scan.spacing)
            cases.append({"scan": name, "group": "real" if name in ("lung1", "chest2") else "synthetic",
                          "method": method, "action": action, "site_zyx": list(site), "rank_in_top10": rank,
                          "hit_top3": rank is not None and rank <= top, "seconds": time.time() - start,
                          "site_map_value": site_value(result, site),
                          "top5": [{"voxel_zyx": list(f.voxel_zyx), "score": f.score,
                                    "mm_to_site": float(np.linalg.norm(np.subtract(f.voxel_zyx, site) * scan.spacing)),
                                    "mm_to_nearest_genuine_nodule": nearest_nodule_mm(f.voxel_zyx, nodules, scan.spacing)}
                                   for f in findings[:5]]})
            print(f"{name:16s} {method:9s} {action:6s} rank {rank}", flush=True)
    summary = {}
    for key in ["all", *sorted({f"{c['method']}-{c['action']}" for c in cases}), "real", "synthetic"]:
        chosen = [c for c in cases if key == "all" or key in (f"{c['method']}-{c['action']}", c["group"])]
        hits = sum(c["hit_top3"] for c in chosen)
        summary[key] = {"hits": hits, "scans": len(chosen), "rate": hits / max(1, len(chosen))}
    return {"top": top, "hit_within_mm": HIT_MM, "summary": summary, "cases": cases}


def timing_scan() -> Scan:
    """lung1 resampled to 300 slices of 0.8 mm: a 512×512×300 chest CT."""
    lung1 = load_scan(sample_path("lung1"))
    factor = 300 / lung1.shape[0]
    voxels = ndimage.zoom(lung1.voxels.astype(np.float32), (factor, 1, 1), order=1)
    spacing = (lung1.spacing[0] * lung1.shape[0] / voxels.shape[0], *lung1.spacing[1:])
    return Scan(np.rint(voxels).astype(np.int16), spacing, lung1.origin, lung1.direction)


def screening_speed(detector, threads: int, fast: bool = True) -> dict:
    torch.set_num_threads(threads)
    scan = timing_scan()
    out = {"shape_zyx": list(scan.shape), "threads": threads}
    for label, options in (("cli_defaults", {}), ("fast", FAST))[: 2 if fast else 1]:
        settings = {**ScreenOptions().__dict__, **options}
        load = os.getloadavg()[0]
        wall, cpu = time.time(), time.process_time()
        screen_scan(scan, detector, **options)
        out[label] = {"settings": settings, "wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu,
                      "load_average_1min_before": load, "load_average_1min_after": os.getloadavg()[0]}
        print(label, json.dumps(out[label], default=float), flush=True)
    return out


def main(args) -> dict:
    from medfake.tamper.model import load_tamper_model

    detector = load_detector(args.model)
    models = {}
    if args.ctgan_inject:
        models["inject"] = load_tamper_model(args.ctgan_inject, "inject")
    if args.ctgan_remove:
        models["remove"] = load_tamper_model(args.ctgan_remove, "remove")
    scans = held_out(Path(args.cohort) if args.cohort else None)
    if args.smoke:
        scans = dict(list(scans.items())[:2])
    out = {"config": vars(args), "detector": args.model,
           "ctgan_models": {a: m.model_id for a, m in models.items()}, "load_average_1min_before": os.getloadavg()[0]}
    if not args.timing_only:
        out["quality"] = screening_quality(scans, detector, models, args.top, args.seed)
    if not args.smoke:
        out["speed"] = screening_speed(detector, args.threads, not args.skip_fast)
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="selfref", help="the screening detector: a name (training-free) or a run")
    parser.add_argument("--cohort", default="/work/runs/bench_tamper/cohort_test", help="held-out synthetic scans")
    parser.add_argument("--ctgan-inject", default="", help="a CT-GAN injector run (trained without these scans)")
    parser.add_argument("--ctgan-remove", default="", help="a CT-GAN remover run")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--skip-fast", action="store_true", help="time the CLI defaults only")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    result = main(args)
    RESULTS.mkdir(exist_ok=True)
    name = "detect_screening_smoke" if args.smoke else "detect_screening" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    write_run_record(RESULTS, vars(args), args.seed, name=f"{name}.run.json")
    print(json.dumps({k: v for k, v in result.items() if k != "quality"}, indent=2, default=float))
    if "quality" in result:
        print(json.dumps(result["quality"]["summary"], indent=2))
