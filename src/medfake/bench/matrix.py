"""The benchmark matrix: cohort → tamper models → detectors → attacks on held-out scans → scores → report.

Each step is a resumable cell (see `bench.Cells`). Real scans (lung1) are only ever test scans.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.bench.audit import segmentation_audit
from medfake.bench.config import Cells, prepare_run
from medfake.io.tables import ManifestRow, append_manifest, read_manifest


SUPERVISED_TRAIN_SCANS = 2  # training scans tampered to give the supervised upper bound its positives


def build_cohort(cells: Cells, config: dict) -> dict:
    from medfake.data.synth import write_cohort

    spec = config["cohort"]["synthetic"]
    options = {k: v for k, v in spec.items() if k not in ("n_train", "n_test", "seed")}

    def cohort(n: int, seed: int):
        def make(folder: Path):
            write_cohort(folder / "scans", n, seed, **options)
            return str(folder / "scans")
        return make

    made = cells.run_all({"cohort-train": cohort(spec["n_train"], spec["seed"]),
                          "cohort-test": cohort(spec["n_test"], spec["seed"] + 7919)})
    return {"train": made["cohort-train"], "test": made["cohort-test"]}


def real_test_scans(config: dict) -> list[dict]:
    """Named real samples (with their label volume when there is one) or plain paths."""
    from medfake.data.samples import sample_path

    out = []
    for name in config["cohort"].get("real_test", []):
        if Path(name).exists():
            out.append({"name": Path(name).stem, "path": str(name), "label": None, "table": None})
        else:
            out.append({"name": name, "path": str(sample_path(name)), "label": str(sample_path(f"{name}_label")),
                        "table": None})
    return out


def synthetic_test_scans(test_dir: str) -> list[dict]:
    from medfake.data.cohort import scan_paths

    table = str(Path(test_dir) / "annotations.csv")
    return [{"name": p.name.split(".")[0], "path": str(p), "label": None, "table": table}
            for p in scan_paths(test_dir)]


def train_tamper_models(cells: Cells, config: dict, train_dir: str) -> dict:
    from medfake.tamper.config import ACTIONS, AugmentConfig, GanTrainConfig, TrainsetConfig
    from medfake.tamper.trainset import build_trainset
    from medfake.tamper.train import train

    spec = config["tamper_models"]
    augment = AugmentConfig(**spec.get("augment", {}))
    annotations = str(Path(train_dir) / "annotations.csv")
    plans = {}
    for action in ACTIONS:
        options = dict(spec.get(action, {}))
        auto_healthy = options.pop("auto_healthy", 4 if action == "remove" else 0)

        def make_set(folder: Path, action=action, auto_healthy=auto_healthy):
            build_trainset(action, train_dir, folder / "set", coords=annotations, auto_healthy=auto_healthy,
                           seed=config["seed"], config=TrainsetConfig(action, augment=augment))
            return str(folder / "set")

        plans[action] = (make_set, options)
    sets = cells.run_all({f"trainset-{action}": make_set for action, (make_set, _) in plans.items()})
    jobs = {}
    for action, (_, options) in plans.items():
        data = sets[f"trainset-{action}"]

        def fit(folder: Path, action=action, options=options, data=data):
            cfg = GanTrainConfig.resolve(action, spec.get("preset", "cpu-small"), seed=config["seed"], **options)
            train(data, folder / "run", cfg)
            return str(folder / "run")

        jobs[f"model-{action}"] = fit
    models = cells.run_all(jobs)
    return {name.removeprefix("model-"): run for name, run in models.items()}


def train_cyclegan(cells: Cells, config: dict, train_dir: str) -> dict:
    """`tamper_models.cyclegan: {preset, steps, upsample, ...}`: a 2-D CycleGAN on the training cohort's nodule
    and healthy lung patches (both directions in one run), so the attacks can use a second GAN family."""
    spec = config["tamper_models"].get("cyclegan")
    if spec is None:
        return {}
    from medfake.tamper.cyclegan.config import CycleGANConfig
    from medfake.tamper.cyclegan.train import train
    from medfake.tamper.cyclegan.trainset import TrainsetOptions, build_trainset

    def fit(folder: Path):
        options = dict(spec)
        data = build_trainset([train_dir], [train_dir], folder / "set", TrainsetOptions(
            coords=str(Path(train_dir) / "annotations.csv"), seed=config["seed"],
            healthy_per_scan=options.pop("healthy_per_scan", 8)))
        cfg = CycleGANConfig.resolve(options.pop("preset", "cpu-small"), seed=config["seed"], **options)
        return str(train(data, folder / "run", cfg, show_progress=False))

    return {"cyclegan": cells.run("model-cyclegan", fit)}


def load_attack_model(models: dict, method: str, action: str):
    """The matrix's trained model for an attack (None for the classical methods)."""
    from medfake.tamper.run import load_model

    if method == "cyclegan" and "cyclegan" not in models:
        raise MedfakeError("attack method cyclegan needs tamper_models: {cyclegan: {...}} in the config")
    return load_model(method, action, models.get("cyclegan" if method == "cyclegan" else action))


def tamper_all(cells: Cells, config: dict, scans: list[dict], models: dict, split: str) -> str:
    """Apply every attack to every scan; returns the merged manifest of this split."""
    from medfake.tamper.config import TamperRequest
    from medfake.tamper.run import tamper_file

    loaded, jobs = {}, {}
    for scan in scans:
        for k, attack in enumerate(config["attacks"]):
            action, method = attack["action"], attack["method"]
            name = f"tamper-{split}-{scan['name']}-{k}-{action}-{method}"
            if attack.get("targets") == "labels" and not (scan["table"] or scan["label"]):
                continue  # no labelled nodule: a removal site (and size) picked by the CAD would be judged by it

            def make(folder: Path, scan=scan, attack=attack, action=action, method=method, k=k):
                if (method, action) not in loaded:
                    loaded[method, action] = load_attack_model(models, method, action)
                by_label = attack.get("targets") == "labels"
                request = TamperRequest(target=scan["path"], outdir=folder, action=action,
                                        table=scan["table"] if by_label and scan["table"] else None,
                                        auto=0 if by_label and scan["table"] else int(attack.get("auto", 1)),
                                        label=scan["label"], method=method, seed=config["seed"] + 31 * k, fmt="nrrd")
                if method == "copy-move":  # the donor comes from the labels, never from the judge
                    donor, donor_coord = labelled_donor(scan, scans)
                    request = replace(request, donor=donor, donor_coord=donor_coord)
                result = tamper_file(request, model=loaded[method, action])
                return {"output": str(result.output), "rows": len(result.rows)}

            jobs[name] = make
    cells.run_all(jobs)
    return merge_manifests(cells, split)


def scan_labels(scan: dict):
    """[(voxel z,y,x, diameter mm)] of a test scan's labelled nodules, largest first."""
    from medfake.data.cohort import locations_for
    from medfake.io import load_scan
    from medfake.io.tables import read_locations
    from medfake.tamper.run import label_nodules, to_voxel

    if not (scan["label"] or scan["table"]):
        return []
    loaded = load_scan(scan["path"])
    if scan["label"]:
        return label_nodules(loaded, scan["label"])
    rows = locations_for(Path(scan["path"]), loaded, read_locations(scan["table"]))
    found = [(to_voxel(loaded, r.coords, r.system), float(r.diameter_mm or 0.0)) for r in rows]
    return sorted(found, key=lambda n: -n[1])


def labelled_donor(scan: dict, scans: list[dict]) -> tuple[str, str]:
    """Copy-move donor: the largest labelled nodule of this scan, else of the first other scan with labels
    (donor path, 'z,y,x' voxel text)."""
    for candidate in [scan] + [s for s in scans if s is not scan]:
        nodules = scan_labels(candidate)
        if nodules:
            return candidate["path"], ",".join(str(int(v)) for v in nodules[0][0])
    raise MedfakeError("copy-move needs a labelled donor nodule and no test scan has one")


def merge_manifests(cells: Cells, split: str) -> str:
    rows: list[ManifestRow] = []
    for folder in sorted(cells.root.glob(f"tamper-{split}-*")):
        if (folder / "done.json").exists():
            rows += read_manifest(folder / "manifest.csv")
    if not rows:
        raise MedfakeError(f"no tampered location in the {split} split (check the attacks in the config)")
    path = cells.root / f"manifest-{split}.csv"
    path.unlink(missing_ok=True)
    append_manifest(rows, path)
    return str(path)


def train_detectors(cells: Cells, config: dict, train_dir: str, train_manifest: str) -> dict:
    from medfake.detect.config import DetectorTrainConfig
    from medfake.detect.train import train_detector

    jobs = {}
    for method, options in config["detectors"].items():
        options = dict(options or {})
        per_generator = options.pop("per_generator", False)
        generators = [None] + (generator_methods(train_manifest) if per_generator and train_manifest else [])

        def fit(folder: Path, method=method, options=options, generator=None):
            cfg = DetectorTrainConfig(method=method, modality="ct", seed=config["seed"],
                                      samples=4 if method.startswith("btd") else 0, **options)
            tampered = Path(train_manifest) if train_manifest else None  # used by detectors that train on fakes
            if generator is not None:
                tampered = only_method(tampered, generator, folder / f"manifest_{generator}.csv")
            train_detector([Path(train_dir)], folder / "run", cfg, tampered=tampered)
            return str(folder / "run")

        for generator in generators:
            name = method if generator is None else f"{method}@{generator}"
            jobs[f"detector-{name}"] = lambda folder, fit=fit, generator=generator: fit(folder, generator=generator)
    return {name.removeprefix("detector-"): run for name, run in cells.run_all(jobs).items()}


def generator_methods(manifest: str) -> list[str]:
    """The GAN tamper methods of a manifest (a detector `per_generator: true` gets one run trained on each one's
    fakes only, named METHOD@GENERATOR: its rows of the other generator are the cross-generator rows)."""
    return sorted({r.method for r in read_manifest(Path(manifest))} & {"ctgan", "cyclegan"})


def only_method(manifest: Path, method: str, out: Path) -> Path:
    out.unlink(missing_ok=True)
    append_manifest([r for r in read_manifest(manifest) if r.method == method], out)
    return out


def evaluate_detectors(cells: Cells, config: dict, manifest: str, detector_runs: dict, test_scans: list[dict]) -> dict:
    from medfake.detect.detectors import load_detector
    from medfake.detect.evaluate import evaluate

    def run(folder: Path):
        samples = balanced_samples(Path(manifest), test_scans, config["seed"])
        detectors = {name: load_detector(path) for name, path in detector_runs.items()}
        evaluate(samples, detectors, folder / "evaluation")
        return {"folder": str(folder / "evaluation"),
                "counts": {"tampered": sum(s.label for s in samples), "genuine": sum(1 - s.label for s in samples)}}

    return cells.run("evaluate", run)


def balanced_samples(manifest: Path, test_scans: list[dict], seed: int):
    """Every tampered location and the same places in the untouched scans (secondary rows; the real nodules
    before a removal are also the injections' headline negatives), plus nodule-free genuine lung of the test
    scans — matched to the removal sites first, kept away from every known nodule — at least as many as there
    are removals (the removals' headline negatives)."""
    from medfake.detect.samples import genuine_samples, known_nodules, removal_targets, tampered_samples

    samples = tampered_samples(manifest, paired=True)
    removals = sum(1 for s in samples if s.label and s.action == "remove")
    per_scan = max(4, int(np.ceil(max(removals, 1) / max(1, len(test_scans)))))
    avoid, targets = known_nodules(samples), removal_targets(samples)
    for scan in test_scans:
        samples += genuine_samples(Path(scan["path"]), per_scan, seed, avoid=avoid, targets=targets)
    return samples


# best first: benchmarks/detect_screening.py ranks the tampered site in the top 3 for residual 9/22, selfref 1/22
SCREENING_PREFERENCE = ("residual", "selfref", "btd-forensic", "btd")


def screening_detector(detector_runs: dict) -> str | None:
    return next((m for m in SCREENING_PREFERENCE if m in detector_runs), None)


def screen_real(cells: Cells, config: dict, manifest: str, detector_runs: dict) -> list[dict]:
    """Screen the tampered real scans with the best detector run: is the tampered place among the top findings?"""
    from medfake.detect.detectors import load_detector
    from medfake.detect.report import detect_screen
    from medfake.io import load_scan

    method = screening_detector(detector_runs)
    if method is None:
        return []
    spec = config.get("screen", {})
    rows = read_manifest(Path(manifest))
    outputs = sorted({r.output for r in rows if any(name in Path(r.scan).name for name in spec.get("scans", []))
                      and r.method in spec.get("methods", ["ctgan"])})
    jobs = {}
    for k, output in enumerate(outputs):
        def run(folder: Path, output=output):
            scan = load_scan(output)
            detector = load_detector(detector_runs[method])
            options = {k: v for k, v in spec.get("options", {}).items()
                       if not detector.scan_level or k not in ("stride", "slice_step", "batch_tiles")}
            result = detect_screen(scan, detector, folder / "screen", **options)
            truth = [r for r in rows if r.output == output]
            ranks = [screen_rank(result.findings, scan, (t.voxel_z, t.voxel_y, t.voxel_x)) for t in truth]
            return {"output": output, "folder": str(folder / "screen"), "scan_score": result.scan_score, "detector": method,
                    "ranks": ranks, "actions": [f"{t.action}/{t.method}" for t in truth]}

        jobs[f"screen-{k}"] = run
    return list(cells.run_all(jobs).values())


def screen_rank(findings, scan, zyx, radius_mm: float = 15.0) -> int | None:
    """1-based rank of the first finding within `radius_mm` of the tampered place (None: not found)."""
    spacing = np.asarray(scan.spacing)
    for rank, finding in enumerate(findings, start=1):
        if np.linalg.norm((np.asarray(finding.voxel_zyx) - np.asarray(zyx)) * spacing) <= radius_mm:
            return rank
    return None


def cad_verdicts(cells: Cells, manifest: str) -> list[dict]:
    """The independent judge, before and after each tampering: is there a nodule within 5 mm?"""
    from medfake.cad import detect_nodules, nodule_near
    from medfake.io import load_scan

    def run(folder: Path):
        cache, out = {}, []
        for row in read_manifest(Path(manifest)):
            zyx = (row.voxel_z, row.voxel_y, row.voxel_x)
            verdict = {"output": row.output, "zyx": list(zyx), "action": row.action, "method": row.method}
            for when, path in (("before", row.scan), ("after", row.output)):
                if path not in cache:
                    scan = load_scan(path)
                    cache[path] = (scan, detect_nodules(scan))
                scan, nodules = cache[path]
                near = nodule_near(nodules, scan, zyx)
                verdict[when] = None if near is None else round(float(near.diameter_mm), 1)
            verdict["success"] = (verdict["after"] is not None and verdict["before"] is None) if row.action == "inject" \
                else (verdict["before"] is not None and verdict["after"] is None)
            out.append(verdict)
        return out

    return cells.run("cad", run)


def run_matrix(config: dict, run: Path, fresh: bool = False, log=print, executor=None) -> dict:
    """Run (or resume) the whole matrix; returns everything the report needs. `executor` runs each stage's
    independent cells (default: here, one after the other; `bench.cluster.DaskCells`: on a Dask cluster)."""
    from medfake.detect.detectors import detector_class

    prepare_run(run, config, fresh)
    cells = Cells(run / "cells", log=log, executor=executor)
    cohort = build_cohort(cells, config)
    models = train_tamper_models(cells, config, cohort["train"]) | train_cyclegan(cells, config, cohort["train"])
    test_scans = synthetic_test_scans(cohort["test"]) + real_test_scans(config)
    train_scans = synthetic_test_scans(cohort["train"])
    train_manifest = tamper_all(cells, config, train_scans[:SUPERVISED_TRAIN_SCANS], models, "train") \
        if any(detector_class(method).trains_on_tampered for method in config["detectors"]) else None
    detectors = train_detectors(cells, config, cohort["train"], train_manifest)
    manifest = tamper_all(cells, config, test_scans, models, "test")
    evaluation = evaluate_detectors(cells, config, manifest, detectors, test_scans)
    screening = screen_real(cells, config, manifest, detectors)
    verdicts = cad_verdicts(cells, manifest)
    seg_audit = segmentation_audit(cells, config) if "segmentation_audit" in config else None
    protection = None
    if config.get("protection") is not None:  # the protection axis (bench/protection.py)
        from medfake.bench.protection import run_protection

        protection = run_protection(cells, config, models, detectors, test_scans)
    return {"run": str(run), "config": config, "cohort": cohort, "models": models, "detectors": detectors,
            "manifest": manifest, "evaluation": evaluation, "screening": screening, "cad": verdicts,
            "segmentation_audit": seg_audit, "protection": protection, "timings": dict(cells.timings)}
