"""Detection quality on held-out CT (issue #10): held-out real scans (lung1, the TotalSegmentator chest CT
chest2) and held-out synthetic scans, tampered by the classical methods no detector saw (copy-move injection
at random lung points, in-painting removal of known nodules) and, given trained runs (`--ctgan-inject`,
`--ctgan-remove`: the cpu-small CT-GAN of benchmarks/tamper_train.py, trained on other synthetic scans, no real
scan), by CT-GAN injection at other random lung points and CT-GAN removal of the same nodules; every detector of `--methods` (trained on other,
genuine synthetic scans where it trains at all) beside the content-only baseline, on the protocol's headline
rows (injected vs genuine nodules; removals vs nodule-free genuine lung at matched positions) and secondary rows
(each site before), pooled and per real / synthetic; DeLong CIs, the paired DeLong test against BTD, Pd at 1%
FAR; and the screening top-3 rate of the best (first) method on the tampered scans.

    python benchmarks/detect_quality.py                       # the default scale (about an hour on 2 busy cores)
    python benchmarks/detect_quality.py --smoke               # minutes: checks the pipeline only
    python benchmarks/detect_quality.py --methods selfref,residual --cohort /work/runs/bench_tamper/cohort_test \
        --ctgan-inject /work/runs/bench_tamper/run_inject --ctgan-remove /work/runs/bench_tamper/run_remove --tag ctgan
    python benchmarks/detect_quality.py --methods supervised-residual,supervised,residual --cohort …/cohort_test \
        --ctgan-inject … --ctgan-remove … --cyclegan runs/bench_cyclegan/runs/ct_resize --train-gans \
        --skip-screening --tag cyclegan_cross       # across GAN families: METHOD@ctgan vs METHOD@cyclegan

No detector is trained on CT-GAN output (the supervised methods train on classical fakes of the training scans:
their CT-GAN rows are cross-generator rows), unless `--train-gans`: then the training scans are tampered by the
given GANs only (CT-GAN, the 3-D pix2pix, and the 2-D CycleGAN of `--cyclegan`) and each supervised method is
trained once per GAN family, so METHOD@ctgan on the CycleGAN rows (and the reverse) are the cross-generator rows.
Prints and saves benchmarks/results/detect_quality[_smoke].json (+ run record)."""

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
from medfake.detect.config import DetectorTrainConfig, ScoreOptions
from medfake.detect.detectors import detector_class, load_detector
from medfake.detect.evaluate import evaluate, evaluation_samples
from medfake.detect.screen import screen_scan
from medfake.detect.train import train_detector
from medfake.io import load_scan, save_scan
from medfake.io.tables import ManifestRow, append_manifest, read_luna16, read_manifest
from medfake.lungmask import lung_mask
from medfake.runinfo import write_run_record
from medfake.tamper.classical import copy_move_inject, inpaint_remove

RESULTS = Path(__file__).resolve().parent / "results"
LUNG1_NODULE = (33, 359, 218)
REAL = ("lung1", "chest2")


def nodules_of(folder: Path) -> dict[str, list[tuple[tuple[int, int, int], float]]]:
    """Per synthetic scan file: nodule voxel centres and diameters (from the cohort's annotations.csv)."""
    out: dict = {}
    for loc in read_luna16(folder / "annotations.csv"):
        path = next(folder.glob(f"{loc.filename}.*"))
        scan = load_scan(path)
        out.setdefault(path, []).append((tuple(int(v) for v in scan.world_to_voxel(loc.coords)), loc.diameter_mm))
    return out


def tamper_scans(sources: dict, donor, donor_zyx, out: Path, per_scan: int, rng, gans: dict | None = None,
                 classical: bool = True) -> Path:
    """Copy-move injections at random lung points and in-painting removals of real nodules (unless not
    `classical`), and with `gans` ({method: {action: model}}: ctgan, cyclegan) that generator's injections at
    other random lung points and removals of the same nodules; one manifest."""
    manifest = out / "manifest.csv"
    for path, nodules in sources.items():
        for method, models in (gans or {}).items():
            append_manifest(gan_fakes(path, nodules[:per_scan], models, method, out, per_scan, rng), manifest)
        if not classical:
            continue
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


def gan_fakes(path: Path, nodules, models: dict, method: str, out: Path, per_scan: int, rng) -> list[ManifestRow]:
    """A GAN's (`method` ctgan or cyclegan) injections at `per_scan` random lung points and removals of the given
    nodules, sized by their table diameters (one output per action)."""
    from medfake.tamper.pipeline import Site, tamper_scan

    scan = load_scan(path)
    lung = lung_mask(scan)
    stem = Path(path).name.split(".")[0]
    points = np.argwhere(lung[:, ::4, ::4]) * [1, 4, 4]
    points = points[(points[:, 1] > 60) & (points[:, 2] > 60)]
    jobs = [("inject", [tuple(int(v) for v in points[i]) for i in rng.choice(len(points), per_scan, replace=False)])]
    jobs += [("remove", [Site(tuple(z), "table", d) for z, d in nodules])] if nodules else []
    rows = []
    for action, sites in jobs:
        if action not in models:
            continue
        fake, made = tamper_scan(scan, sites, action, models[action], method, rng, lung)
        name = f"{stem}_{method}_{action}.npz"
        save_scan(fake.with_voxels(np.rint(fake.voxels).astype(np.int16)), out / name, format="npz", overwrite=True)
        zyxs = [getattr(z, "zyx", z) for z in sites]
        rows += [ManifestRow(str(path), name, *scan.voxel_to_world(z), *z, action, method, "none", "{}", "")
                 for z in zyxs]
    return rows


def screening_hits(manifest: Path, detector, top: int = 3) -> dict:
    from medfake.io.tables import read_manifest

    rows = read_manifest(manifest)
    by_output: dict = {}
    for r in rows:
        by_output.setdefault(r.output, []).append((r.voxel_z, r.voxel_y, r.voxel_x))
    hits, total, seconds = 0, 0, []
    for output, sites in by_output.items():
        scan = load_scan(manifest.parent / output)
        start = time.time()
        found = screen_scan(scan, detector, top=top).findings
        seconds.append(time.time() - start)
        for site in sites:
            total += 1
            distance = [np.linalg.norm((np.subtract(f.voxel_zyx, site)) * scan.spacing) for f in found]
            hits += int(bool(distance) and min(distance) <= 15.0)
    return {"top": top, "hit_within_15mm": hits, "tampered_locations": total, "rate": hits / max(total, 1),
            "seconds_per_scan": seconds}


def train_runs(args, tmp: Path, train_fakes: Path) -> dict:
    runs = {}
    for method in args.methods.split(","):
        kind = detector_class(method)
        options = dict(steps=args.steps, batch_size=args.batch_size, samples=0, seed=args.seed,
                       save_every=max(1, args.steps), max_minutes=args.max_minutes)
        if method.startswith("btd"):
            options.update(preset=args.preset, steps=args.btd_steps, patch_size=args.btd_patch)
        if method == "residual":
            options["lr"] = 1e-3
        if not kind.trains_on_tampered:
            runs[method] = train_detector([tmp / "train"], tmp / f"run_{method}", DetectorTrainConfig(method=method, **options),
                                          exclude=tmp / "train/annotations.csv", show_progress=False)
            continue
        # cross-generator: one model per tamper method of the training fakes, each tested on every method
        for generator in sorted({r.method for r in read_manifest(train_fakes)}):
            only = tmp / "train_fakes" / f"manifest_{generator}.csv"
            only.unlink(missing_ok=True)
            append_manifest([r for r in read_manifest(train_fakes) if r.method == generator], only)
            runs[f"{method}@{generator}"] = train_detector(
                [tmp / "train"], tmp / f"run_{method}_{generator}", DetectorTrainConfig(method=method, **options),
                exclude=tmp / "train/annotations.csv", tampered=only, show_progress=False)
    return runs


def bf16_differences(subsets: dict) -> dict:
    """Per BTD method: the AUC of bf16 scoring minus fp32's on every row, and the largest |difference|."""
    out: dict = {}
    for row, by_method in subsets.items():
        for name, figures in by_method.items():
            if name.endswith("/bf16") and name[: -len("/bf16")] in by_method:
                fp32 = by_method[name[: -len("/bf16")]]["auc"]
                out.setdefault(name[: -len("/bf16")], {})[row] = round(figures["auc"] - fp32, 6)
    for method, rows in out.items():
        rows["max_abs"] = max(abs(v) for v in rows.values())
        rows["within_0.005"] = rows["max_abs"] <= 0.005
    return out


def gan_models(args) -> dict:
    """{method: {action: model}} of the trained tamperers given on the command line."""
    from medfake.tamper.cyclegan.apply import load_cyclegan
    from medfake.tamper.model import load_tamper_model

    runs = {"inject": args.ctgan_inject, "remove": args.ctgan_remove}
    out = {"ctgan": {action: load_tamper_model(run, action) for action, run in runs.items() if run}}
    if args.cyclegan:
        out["cyclegan"] = {action: load_cyclegan(args.cyclegan, action) for action in ("inject", "remove")}
    return {method: models for method, models in out.items() if models}


def main(args) -> dict:
    rng = np.random.default_rng(args.seed)
    started = time.time()
    out = {"config": vars(args), "load_average_1min_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cohort(tmp / "train", args.n_train, args.seed, fmt="npz", n_xy=args.n_xy, max_slices=args.slices)
        test = Path(args.cohort) if args.cohort else tmp / "test"
        if not args.cohort:
            write_cohort(test, args.n_test, args.seed + 1, fmt="npz", n_xy=args.n_xy, max_slices=args.slices)
        lung1 = load_scan(sample_path("lung1"))
        for folder in ("tampered", "train_fakes"):
            (tmp / folder).mkdir()
        real = {sample_path("lung1"): [(LUNG1_NODULE, 13.8)]}
        if "chest2" in args.real:
            real[sample_path("chest2")] = []  # no labelled nodule: injections only
        held_out = {**nodules_of(test), **real}
        gans = gan_models(args)
        out["gan_models"] = {method: {action: model.model_id for action, model in models.items()}
                             for method, models in gans.items()}
        manifest = tamper_scans(held_out, lung1, LUNG1_NODULE, tmp / "tampered", args.per_scan, rng, gans)
        train_nodules = nodules_of(tmp / "train")
        donor_path, donor_nodules = next((p, n) for p, n in train_nodules.items() if n)
        # --train-gans: the training scans are tampered by the GANs only (one detector per GAN family)
        train_fakes = tamper_scans(train_nodules, load_scan(donor_path), donor_nodules[0][0], tmp / "train_fakes",
                                   args.per_scan, rng, gans if args.train_gans else None, not args.train_gans)
        timing = time.time()
        runs = train_runs(args, tmp, train_fakes)
        out["training_seconds"] = time.time() - timing
        detectors = {m: load_detector(r) for m, r in runs.items()}
        if args.bf16_twins:  # the issue accepts bf16 BTD scoring where its AUC equals fp32's within ±0.005
            detectors |= {f"{m}/bf16": load_detector(r, options=ScoreOptions(precision="bf16"))
                          for m, r in runs.items() if m.startswith("btd")}
        genuine = tmp / "genuine.txt"
        genuine.write_text("\n".join(str(p) for p in held_out) + "\n")
        samples = evaluation_samples(manifest, genuine, args.genuine_per_scan, args.seed, True,
                                     nodules=test / "annotations.csv")
        real_paths = {str(Path(p).resolve()) for p in real}
        for s in samples:
            source = s.scan if s.origin != "tampered" else next(
                (Path(r) for r in real_paths if Path(r).name.split(".")[0] in Path(s.scan).name), s.scan)
            s.group = "real" if str(Path(source).resolve()) in real_paths else "synthetic"
        timing = time.time()
        results = evaluate(samples, detectors, tmp / "eval")
        out["scoring_seconds"] = time.time() - timing
        out["rows"] = results["rows"]
        out["auc"] = results["subsets"]
        if args.bf16_twins:
            out["bf16_minus_fp32_auc"] = bf16_differences(results["subsets"])
        best = args.methods.split(",")[0]
        out["cross_generator_note"] = ("a detector named METHOD@GENERATOR was trained on that generator's fakes only: "
                                       "its rows of the other tamper methods are cross-generator rows")
        if not args.skip_screening:
            out[f"screening_{best}"] = screening_hits(manifest, detectors[best])
        out["markdown"] = (tmp / "eval/results.md").read_text()
    out["seconds"] = time.time() - started
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few sites, short training: a pipeline check, not a result")
    parser.add_argument("--methods", default="selfref,residual,btd-forensic,btd", help="first: the screening detector")
    parser.add_argument("--real", default=",".join(REAL))
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--steps", type=int, default=300, help="residual / supervised training steps")
    parser.add_argument("--btd-steps", type=int, default=300)
    parser.add_argument("--btd-patch", type=int, default=96)
    parser.add_argument("--max-minutes", type=float, default=10.0, help="per trained detector")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=3)
    parser.add_argument("--n-xy", type=int, default=384)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--per-scan", type=int, default=4)
    parser.add_argument("--genuine-per-scan", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cohort", default="", help="held-out synthetic scans with annotations.csv (default: generated)")
    parser.add_argument("--ctgan-inject", default="", help="a CT-GAN injector run: adds CT-GAN injection rows")
    parser.add_argument("--ctgan-remove", default="", help="a CT-GAN remover run: adds CT-GAN removal rows")
    parser.add_argument("--bf16-twins", action="store_true", help="also score every BTD detector in bf16: AUC differences")
    parser.add_argument("--cyclegan", default="", help="a CycleGAN run (both directions): adds CycleGAN rows")
    parser.add_argument("--train-gans", action="store_true",
                        help="tamper the training scans with the given GANs instead of the classical methods: "
                             "one supervised detector per GAN family (the cross-generator rows)")
    parser.add_argument("--skip-screening", action="store_true", help="detect_screening.py measures screening")
    parser.add_argument("--tag", default="", help="saved as detect_quality_TAG.json (a partial run beside the full one)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.btd_steps, args.btd_patch, args.preset, args.n_train, args.n_test = 20, 10, 32, "tiny", 2, 1
        args.slices, args.per_scan, args.genuine_per_scan, args.real = 32, 2, 6, "lung1"
    result = main(args)
    RESULTS.mkdir(exist_ok=True)
    name = "detect_quality_smoke" if args.smoke else "detect_quality" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    write_run_record(RESULTS, vars(args), args.seed, name=f"{name}.run.json")
    print(result["markdown"])
    print(json.dumps({k: v for k, v in result.items() if k not in ("markdown", "rows", "auc")}, indent=2, default=float))
