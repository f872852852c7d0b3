"""`medfake trainset cyclegan` and `medfake train cyclegan` (tampering: `medfake tamper --method cyclegan`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from medfake.tamper.cyclegan.config import CT_PATCH, PRESETS, CycleGANConfig
from medfake.tamper.cyclegan.trainset import CT_WINDOW, TrainsetOptions

out = Console()
_registered: set[int] = set()
_SET = TrainsetOptions()
_CFG = CycleGANConfig()
DOMAIN_HELP = ("2-D images (DICOM MG/CR/DX, PNG/TIFF/JPEG), folders of them, or 3-D scans (patches); repeatable.")


def trainset(domain_a: list[Path] = typer.Option(None, "--domain-a", help="Healthy images/scans. " + DOMAIN_HELP),
             domain_b: list[Path] = typer.Option(None, "--domain-b", help="Lesion images/scans. " + DOMAIN_HELP),
             out_dir: Path = typer.Option(..., "-o", "--output", help="New training-set folder."),
             preset: str = typer.Option("cpu-small", "--preset", help=f"Image size from a preset: {' | '.join(PRESETS)}."),
             size: str = typer.Option(None, "--size", help="H,W of 2-D images (overrides the preset's)."),
             coords: Path = typer.Option(None, "--coords", help="Lesion table for 3-D scans (CT-GAN, LUNA16, manifest)."),
             patch: int = typer.Option(CT_PATCH, "--patch", help="CT patch side (points)."),
             pixel_mm: float = typer.Option(_SET.pixel_mm, "--pixel-mm", help="CT patch spacing (mm)."),
             healthy: int = typer.Option(_SET.healthy_per_scan, "--healthy-per-scan",
                                         help="Healthy lung sites per 3-D scan (domain A)."),
             twins: int = typer.Option(_SET.twins_per_lesion, "--twins-per-lesion",
                                       help="Healthy patches at each lesion's place above/below it (domain A)."),
             mammogram: str = typer.Option(_SET.mammogram, "--mammogram",
                                           help="Mammography pre-processing: auto (Modality MG) | yes | no."),
             seed: int = typer.Option(_SET.seed, "--seed"),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty destination.")):
    """Two domains of 2-D images for the CycleGAN: A = healthy, B = lesion (mammograms, images, CT patches)."""
    from medfake.tamper.cyclegan.trainset import build_trainset
    from medfake.training import progress_bar

    hw = _size(size) if size else PRESETS[_preset(preset)]["size"]
    options = TrainsetOptions(size=hw, patch=patch, pixel_mm=pixel_mm, window=CT_WINDOW, healthy_per_scan=healthy,
                              twins_per_lesion=twins, mammogram=mammogram, coords=str(coords) if coords else None, seed=seed,
                              overwrite=overwrite)
    with progress_bar() as bar:
        folder = build_trainset(domain_a or [], domain_b or [], out_dir, options, bar)
    index = json.loads((folder / "index.json").read_text())
    d = index["domains"]
    out.print(f"{folder}: {d['a']['count']} healthy (A) and {d['b']['count']} lesion (B) {index['source']} images "
              f"of {index['size'][0]}×{index['size'][1]}; samples {folder / 'samples.png'}")


def train(data: Path = typer.Option(..., "--data", help="Training set (medfake trainset cyclegan)."),
          run: Path = typer.Option(..., "-o", "--output", help="Run folder (model/, snapshots/, grid.png)."),
          preset: str = typer.Option("cpu-small", "--preset", help=" | ".join(PRESETS)),
          resume: bool = typer.Option(False, "--resume", help="Continue the run's checkpoint exactly."),
          steps: int = typer.Option(None, "--steps", help="Total steps (default: preset)."),
          upsample: str = typer.Option(_CFG.upsample, "--upsample",
                                       help="transposed (reference) | resize (nearest + conv: the grid-artefact cure)."),
          g_lr: float = typer.Option(None, "--g-lr"), d_lr: float = typer.Option(None, "--d-lr"),
          batch_size: int = typer.Option(None, "--batch-size"),
          snapshot_every: int = typer.Option(None, "--snapshot-every", help="Snapshot + grid score interval (steps)."),
          checkpoint_every: int = typer.Option(None, "--checkpoint-every"),
          select: str = typer.Option(None, "--select-before-artefacts", show_default=False,
                                     help="Keep as the model the last snapshot whose grid score stayed below this: "
                                          "'auto' (the level grid-free changes pass by chance 0.1% of the time) "
                                          "or a score."),
          seed: int = typer.Option(None, "--seed"),
          mixed_precision: str = typer.Option(None, "--mixed-precision", help="auto | no | fp16 | bf16"),
          max_minutes: float = typer.Option(None, "--max-minutes", help="Stop (and save) after this wall time.")):
    """Train a CycleGAN (inject = A→B, remove = B→A): LSGAN, cycle 10, identity 0.5, pool 50, Adam 2e-4 β₁ 0.5."""
    from medfake.tamper.cyclegan.train import train as run_training

    config = CycleGANConfig.resolve(_preset(preset), steps=steps, upsample=upsample, g_lr=g_lr, d_lr=d_lr,
                                    batch_size=batch_size, snapshot_every=snapshot_every,
                                    checkpoint_every=checkpoint_every, seed=seed, mixed_precision=mixed_precision)
    folder = run_training(data, run, config, resume=resume, max_minutes=max_minutes,
                          select_threshold=_threshold(select))
    meta = json.loads((folder / "model" / "model.json").read_text())
    chosen = f" (selected before artefacts, score {meta['selected']['score']})" if meta.get("selected") else ""
    out.print(f"{folder}: model at step {meta['step']}{chosen}; grid score curve {folder / 'grid.png'}")


def _threshold(text: str | None) -> float | str | None:
    from medfake.errors import MedfakeError

    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise MedfakeError(f"--select-before-artefacts must be 'auto' or a number, not '{text}'") from None


def _preset(name: str) -> str:
    from medfake.errors import MedfakeError

    if name not in PRESETS:
        raise MedfakeError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return name


def _size(text: str) -> tuple[int, int]:
    from medfake.errors import MedfakeError

    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise MedfakeError(f"--size must be H,W (e.g. 512,408), not '{text}'") from None
    return h, w


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:
        return
    _registered.add(id(app))
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    trainset_app = groups.get("trainset")
    if trainset_app is None:
        trainset_app = typer.Typer(no_args_is_help=True, help="Build training sets.")
        app.add_typer(trainset_app, name="trainset")
    trainset_app.command("cyclegan")(trainset)
    train_app.command("cyclegan")(train)
