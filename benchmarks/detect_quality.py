"""Detection quality end to end: train every detector on genuine synthetic chest CTs (their nodules excluded),
tamper held-out scans (held-out synthetic + the real lung1) with the classical methods no detector saw
(copy-move injection, in-painting removal), then ROC AUC with DeLong 95% CIs per subset for BTD and the
baselines, and the screening top-3 hit rate on the tampered scans.

    python benchmarks/detect_quality.py                 # cpu-small BTD, 96² patches (hours on 2 busy cores)
    python benchmarks/detect_quality.py --smoke         # tiny models, minutes: checks the pipeline only

The supervised upper bound is trained on copy-move/in-paint fakes of the TRAINING scans (not the held-out
ones). Prints and saves benchmarks/results/detect_quality[_smoke].json (+ run record)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medfake.data.samples import sample_path
from medfake.data.synth import write_cohort
from medfake.detect.detectors import load_detector
from medfake.detect.evaluate import evaluate, genuine_samples
from medfake.detect.screen import screen_scan
from medfake.detect.config import METHODS, DetectorTrainConfig
from medfake.detect.detectors import detector_class
from medfake.detect.train import train_detector
from medfake.io import load_scan, save_scan
from medfake.io.tables import ManifestRow, append_manifest, read_luna16
from medfake.lungmask import lung_mask
from medfake.runinfo import write_run_record
from medfake.tamper.classical import copy_move_inject, inpaint_remove

RESULTS = Path(__file__).resolve().parent / "results"
LUNG1_NODULE = (33, 359, 218)


def nodules_of(folder: Path) -> dict[str, list[tuple[tuple[int, int, int], float]]]:
    """Per synthetic scan file: nodule voxel centres and diameters (from the cohort's annotations.csv)."""
    out: dict = {}
    for loc in read_luna16(folder / "annotations.csv"):
        path = next(folder.glob(f"{loc.filename}.*"))
        scan = load_scan(path)
        out.setdefault(path, []).append((tuple(int(v) for v in scan.world_to_voxel(loc.coords)), loc.diameter_mm))
    return out


def tamper_scans(sources: dict, donor, donor_zyx, out: Path, per_scan: int, rng) -> Path:
    """Copy-move injections at random lung points and in-painting removals of real nodules; one manifest."""
    manifest = out / "manifest.csv"
    for path, nodules in sources.items():
        scan = load_scan(path)
        mask = lung_mask(scan)
        points = np.argwhere(mask[:, ::4, ::4]) * [1, 4, 4]
        points = points[(points[:, 1] > 60) & (points[:, 2] > 60)]
        rows = []
        injected = scan.voxels.astype(np.float32)
        sites = [tuple(int(v) for v in points[i]) for i in rng.choice(len(points), per_scan, replace=False)]
        for zyx in sites:
            injected = copy_move_inject(scan.with_voxels(injected), zyx, donor, donor_zyx, rng)
        name = f"{Path(path).name.split('.')[0]}_inject.npz"
        save_scan(scan.with_voxels(np.rint(injected).astype(np.int16)), out / name, format="npz", overwrite=True)
        rows += [ManifestRow(str(path), name, *scan.voxel_to_world(z), *z, "inject", "copy-move", "none", "{}", "") for z in sites]
        if nodules:
            removed = scan.voxels.astype(np.float32)
            for zyx, diameter in nodules[:per_scan]:
                removed = inpaint_remove(scan.with_voxels(removed), zyx, diameter)
            name = f"{Path(path).name.split('.')[0]}_remove.npz"
            save_scan(scan.with_voxels(np.rint(removed).astype(np.int16)), out / name, format="npz", overwrite=True)
            rows += [ManifestRow(str(path), name, *scan.voxel_to_world(z), *z, "remove", "inpaint", "none", "{}", "")
                     for z, _ in nodules[:per_scan]]
        append_manifest(rows, manifest)
    return manifest


def screening_hits(manifest: Path, detector, top: int = 3, slice_step: int = 2) -> dict:
    from medfake.io.tables import read_manifest

    rows = read_manifest(manifest)
    by_output: dict = {}
    for r in rows:
        by_output.setdefault(r.output, []).append((r.voxel_z, r.voxel_y, r.voxel_x))
    hits, total = 0, 0
    for output, sites in by_output.items():
        scan = load_scan(manifest.parent / output)
        found = screen_scan(scan, detector, slice_step=slice_step, top=top).findings
        for site in sites:
            total += 1
            distance = [np.linalg.norm((np.subtract(f.voxel_zyx, site)) * scan.spacing) for f in found]
            hits += int(bool(distance) and min(distance) <= 15.0)
    return {"top": top, "hit_within_15mm": hits, "tampered_locations": total, "rate": hits / max(total, 1)}


def main(args) -> dict:
    rng = np.random.default_rng(args.seed)
    started = time.time()
    out = {"config": vars(args), "load_average_1min_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cohort(tmp / "train", args.n_train, args.seed, fmt="npz", n_xy=args.n_xy, max_slices=args.slices)
        write_cohort(tmp / "test", args.n_test, args.seed + 1, fmt="npz", n_xy=args.n_xy, max_slices=args.slices)
        lung1 = load_scan(sample_path("lung1"))
        (tmp / "tampered").mkdir()
        (tmp / "train_fakes").mkdir()
        held_out = {**nodules_of(tmp / "test"), sample_path("lung1"): [(LUNG1_NODULE, 13.8)]}
        manifest = tamper_scans(held_out, lung1, LUNG1_NODULE, tmp / "tampered", args.per_scan, rng)
        train_nodules = nodules_of(tmp / "train")
        donor_path, donor_nodules = next((p, n) for p, n in train_nodules.items() if n)
        train_fakes = tamper_scans(train_nodules, load_scan(donor_path), donor_nodules[0][0], tmp / "train_fakes",
                                   args.per_scan, rng)
        common = dict(preset=args.preset, steps=args.steps, batch_size=args.batch_size, samples=0, seed=args.seed,
                      save_every=max(1, args.steps))
        if args.patch_size:
            common["patch_size"] = args.patch_size
        runs = {}
        for method in METHODS:
            on_fakes = detector_class(method).trains_on_tampered
            steps = max(50, args.steps // 4) if on_fakes else args.steps
            config = DetectorTrainConfig(method=method, **{**common, "steps": steps})
            runs[method] = train_detector([tmp / "train"], tmp / f"run_{method}", config,
                                          exclude=tmp / "train/annotations.csv",
                                          tampered=train_fakes if on_fakes else None, show_progress=False)
        detectors = {m: load_detector(r) for m, r in runs.items()}
        from medfake.detect.evaluate import tampered_samples

        samples = tampered_samples(manifest) + genuine_samples(tmp / "test", args.genuine_per_scan, args.seed) \
            + genuine_samples(Path(sample_path("lung1")), args.genuine_per_scan, args.seed)
        results = evaluate(samples, detectors, tmp / "eval")
        out["auc"] = results["subsets"]
        out["screening_btd"] = screening_hits(manifest, detectors["btd"])
        out["markdown"] = (tmp / "eval/results.md").read_text()
    out["seconds"] = time.time() - started
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models and few steps: a pipeline check, not a result")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--n-xy", type=int, default=384)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--per-scan", type=int, default=3)
    parser.add_argument("--genuine-per-scan", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.steps, args.patch_size, args.n_train, args.n_test = "tiny", 40, 32, 2, 1
        args.n_xy, args.slices, args.per_scan, args.genuine_per_scan = 256, 24, 2, 8
    result = main(args)
    RESULTS.mkdir(exist_ok=True)
    name = "detect_quality_smoke" if args.smoke else "detect_quality"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    write_run_record(RESULTS, vars(args), args.seed, name=f"{name}.run.json")
    print(result["markdown"])
    print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=float)[:3000])
