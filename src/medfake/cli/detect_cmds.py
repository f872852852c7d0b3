"""`medfake train detector`, `medfake detect`, `medfake evaluate`.

Option defaults come from the torch-free config dataclasses; the detector modules (torch, and MONAI for two
detectors) are imported inside the commands so that `medfake --help` and other commands start fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medfake.detect.config import METHODS, MODALITIES, PRECISIONS, DetectorTrainConfig, ScoreOptions, ScreenOptions
from medfake.errors import MedfakeError

out = Console()
TRAIN, SCORE, SCREEN = DetectorTrainConfig(), ScoreOptions(), ScreenOptions()  # the defaults shown and used
FAST_HELP = "CPU fp32: Winograd/matmul convolutions (scores within ~1e-5 of --no-fast)."
GPU_EVALUATION_BATCH = 32  # patches per forward pass when evaluating on a GPU (on CPU: ScoreOptions', per worker)

SCANS_HELP = "A folder of genuine scans, a .txt list of paths, or a scan; repeatable."
MODEL_HELP = ("Detector: a `medfake train detector` run folder, a checkpoint (ours, or BTD's CT_model.pt/MRI_model.pt), "
              "or the name of a training-free detector (selfref).")


def _parse_zyx(text: str) -> tuple[int, int, int]:
    try:
        z, y, x = (int(round(float(v))) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise MedfakeError(f"coordinate must be z,y,x voxel indices, not '{text}'") from None
    return z, y, x


def _score_options(**options) -> ScoreOptions:
    try:
        return ScoreOptions(**options)
    except ValueError as exc:
        raise MedfakeError(str(exc)) from None


def _load(model: Path, method: str | None, modality: str | None, options, weights: str):
    from medfake.detect.detectors import load_detector

    detector = load_detector(model, modality, options, weights=weights)
    if method and method != detector.method:
        raise MedfakeError(f"this is a {detector.method} detector, not {method}", model)
    return detector


def train_detector_cmd(
        scans: list[Path] = typer.Option(..., "--scans", help=SCANS_HELP),
        run: Path = typer.Option(..., "-o", "--output", help="Run folder (config, checkpoints, PNGs)."),
        modality: str = typer.Option(TRAIN.modality, "--modality", help=" | ".join(MODALITIES)),
        method: str = typer.Option(TRAIN.method, "--method", help=" | ".join(METHODS) + " (default: the benchmark's best)."),
        preset: str = typer.Option(TRAIN.preset, "--preset", help="U-Net width for btd: btd (the paper's) | cpu-small | tiny"),
        exclude: Path = typer.Option(None, "--exclude", help="Locations (CT-GAN/LUNA16/manifest table) never used for training."),
        tampered: Path = typer.Option(None, "--tampered", help="Tamper manifest: positives for --method supervised."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run's checkpoint exactly."),
        steps: int = typer.Option(TRAIN.steps, "--steps"),
        batch_size: int = typer.Option(TRAIN.batch_size, "--batch-size"),
        lr: float = typer.Option(TRAIN.lr, "--lr", help="Adam learning rate (BTD: 8e-6 over 700k steps)."),
        patch_size: int = typer.Option(TRAIN.patch_size, "--patch-size", help="Default 96 (CT), 128 (MRI), 64 (supervised)."),
        context: int = typer.Option(TRAIN.context, "--context", help="2.5-D: neighbouring slices per side as input channels (default: the method's; btd-forensic 0, residual 1)."),
        anywhere: bool = typer.Option(not TRAIN.in_lung, "--anywhere", help="CT: sample patch centres anywhere, not only in the lungs."),
        save_every: int = typer.Option(TRAIN.save_every, "--save-every", help="Checkpoint and samples.png interval (steps)."),
        max_minutes: float = typer.Option(TRAIN.max_minutes, "--max-minutes", help="Stop (and save) after this wall time."),
        samples: int = typer.Option(TRAIN.samples, "--samples", help="Sample images in samples.png (0: none)."),
        seed: int = typer.Option(TRAIN.seed, "--seed")):
    """Train a detector on genuine patches only (the supervised baseline also on tampered ones)."""
    from medfake.detect.detectors import CHECKPOINT
    from medfake.detect.train import train_detector

    config = DetectorTrainConfig(method=method, modality=modality.lower(), preset=preset, steps=steps,
                                 batch_size=batch_size, lr=lr, seed=seed, save_every=save_every,
                                 max_minutes=max_minutes, in_lung=not anywhere, samples=samples, patch_size=patch_size,
                                 context=context)
    folder = train_detector(scans, run, config, exclude=exclude, tampered=tampered, resume=resume)
    out.print(f"{folder}: {method} detector ({modality}); checkpoint {folder / CHECKPOINT}")


def detect_cmd(
        scan_path: Path = typer.Argument(..., help="Scan to examine."),
        model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        output: Path = typer.Option(..., "-o", "--output", help="New output folder."),
        coords: list[str] = typer.Option(None, "-c", "--coord", help="Voxel location z,y,x; repeatable."),
        table: Path = typer.Option(None, "--coords", help="Location table (CT-GAN/LUNA16/manifest)."),
        system: str = typer.Option("world", "--system", help="CT-GAN table coordinates: world | vox."),
        screen: bool = typer.Option(False, "--screen", help="Screen the whole scan (lung mask) instead of locations."),
        method: str = typer.Option(None, "--method", help=" | ".join(METHODS) + " (checked against the model)."),
        model_modality: str = typer.Option(None, "--model-modality", help="ct | mri, for checkpoints that do not say."),
        weights: str = typer.Option("model", "--weights", help="model (online, as BTD) | ema"),
        t: int = typer.Option(SCORE.t, "--t", help="Diffusion step of the reverse step (BTD: 0)."),
        clamp: bool = typer.Option(SCORE.clamp, "--clamp/--no-clamp", help="Clamp the x0 prediction to [-1, 1] (as p_sample)."),
        region: str = typer.Option(SCORE.region, "--region", help="whole | centre"),
        centre: int = typer.Option(SCORE.centre, "--centre", help="Side of the centre region (pixels)."),
        reduce: str = typer.Option(SCORE.reduce, "--reduce", help="mean | topk"),
        topk: float = typer.Option(SCORE.topk, "--topk", help="Fraction of pixels for --reduce topk."),
        precision: str = typer.Option(SCORE.precision, "--precision", help=" | ".join(PRECISIONS)),
        batch_size: int = typer.Option(SCORE.batch_size, "--batch-size", help="Patches per forward pass (CPU: per worker, 2-4; GPU: more)."),
        fast: bool = typer.Option(SCORE.fast, "--fast/--no-fast", help=FAST_HELP),
        stride: int = typer.Option(SCREEN.stride, "--stride", help="Screening tile stride (default: half a patch)."),
        slice_step: int = typer.Option(SCREEN.slice_step, "--slice-step", help="Screen every n-th slice."),
        top: int = typer.Option(SCREEN.top, "--top", help="Findings reported by screening."),
        step_mm: float = typer.Option(SCREEN.step_mm, "--step-mm", help="Screening grid of scan-level detectors (selfref, residual), in mm."),
        overwrite: bool = typer.Option(False, "--overwrite")):
    """Score a scan for tampering: patches at given locations (BTD protocol) or a whole-scan screening."""
    from medfake.data.cohort import location_voxel, locations_for
    from medfake.detect.report import detect_locations, detect_screen
    from medfake.io import load_scan
    from medfake.io.tables import read_locations
    from medfake.training import progress_bar

    options = _score_options(t=t, clamp=clamp, region=region, centre=centre, reduce=reduce, topk=topk,
                             precision=precision, batch_size=batch_size, fast=fast)
    scan = load_scan(scan_path)
    detector = _load(model, method, model_modality, options, weights)
    if screen:
        with progress_bar() as bar:
            result = detect_screen(scan, detector, output, overwrite, progress=bar, stride=stride,
                                   slice_step=slice_step, top=top, step_mm=step_mm)
        out.print(f"{output}: scan score {result.scan_score:.2f}; top finding "
                  + (f"z,y,x={result.findings[0].voxel_zyx}" if result.findings else "none"))
        return
    centres = [_parse_zyx(c) for c in coords or []]
    if table is not None:
        centres += [location_voxel(scan, loc) for loc in locations_for(scan_path, scan, read_locations(table, system))]
    if not centres:
        raise MedfakeError("give locations (-c z,y,x or --coords TABLE naming this scan) or --screen", scan_path)
    rows = detect_locations(scan, detector, centres, output, overwrite)
    for r in rows:
        out.print(f"z,y,x={r.voxel_zyx}  score {r.score:.6g}")
    out.print(f"{output}: scores.csv, findings.json, patches.png")


def evaluate_cmd(
        genuine: Path = typer.Option(..., "--genuine", help="Genuine scans (folder/list: nodule-free lung sites, matched to the removals) or a table of genuine nodules."),
        nodules: Path = typer.Option(None, "--nodules", help="Location table of genuine nodules (LUNA16/CT-GAN/manifest columns): the injections' headline negatives."),
        tampered: Path = typer.Option(..., "--tampered", help="Tamper manifest (medfake tamper's manifest.csv)."),
        models: list[Path] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        method: list[str] = typer.Option(None, "--method", help="Expected method of each --model, in order (checked)."),
        output: Path = typer.Option(..., "-o", "--output", help="New output folder."),
        per_scan: int = typer.Option(20, "--per-scan", help="Genuine lung sites per genuine scan."),
        paired: bool = typer.Option(True, "--paired/--no-paired", help="Also score the untouched source at each tampered location."),
        precision: str = typer.Option(SCORE.precision, "--precision", help=" | ".join(PRECISIONS)),
        fast: bool = typer.Option(SCORE.fast, "--fast/--no-fast", help=FAST_HELP),
        seed: int = typer.Option(0, "--seed"),
        overwrite: bool = typer.Option(False, "--overwrite")):
    """ROC AUC with DeLong 95% CIs per row (action × tamper method × modality): headline rows compare like with
    like (injected vs genuine nodules, removals vs genuine lung), secondary rows each site with itself before;
    a content-only baseline in every row. ROC PNGs, JSON, Markdown."""
    from medfake.detect.evaluate import evaluate, evaluation_samples
    from medfake.training import progress_bar

    if method and len(method) != len(models):
        raise MedfakeError("give one --method per --model (or none)")
    import torch

    batch = GPU_EVALUATION_BATCH if torch.cuda.is_available() else SCORE.batch_size
    options = _score_options(precision=precision, batch_size=batch, fast=fast)
    detectors = {}
    for i, model in enumerate(models):
        det = _load(model, method[i] if method else None, None, options, "model")
        name = det.method if det.method not in detectors else f"{det.method}{i + 1}"
        detectors[name] = det
    samples = evaluation_samples(tampered, genuine, per_scan, seed, paired, nodules)
    with progress_bar() as bar:
        results = evaluate(samples, detectors, output, overwrite, progress=bar)
    for row, meta in results["rows"].items():
        entry = {**results["subsets"].get(row, {}), "content baseline": meta["content_baseline"]}
        out.print(f"{row} ({meta['kind']}" + (", content differs" if meta["content_differs"] else "") + "): "
                  + ", ".join(f"{n} {v['auc']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for n, v in entry.items()))
    out.print(f"{output}: results.md, results.json, scores.csv, roc_*.png")


def register(app, data_app, train_app) -> None:
    train_app.command("detector")(train_detector_cmd)
    app.command("detect")(detect_cmd)
    app.command("evaluate")(evaluate_cmd)
