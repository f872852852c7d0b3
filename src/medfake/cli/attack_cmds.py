"""`medfake train segmenter`, `medfake attack segmentation`: audit segmentation models (thin: parse and call)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medfake.attack.config import AttackConfig, GeneratorConfig, SegmenterConfig

out = Console()
_registered: set[int] = set()
SEG, ATT, GEN = SegmenterConfig(), AttackConfig(), GeneratorConfig()


def train_segmenter(scans: list[Path] = typer.Option(..., "--scans", help="CT scan (file or DICOM folder); repeatable."),
                    labels: list[Path] = typer.Option(..., "--labels", help="Label map for each --scans, in order."),
                    classes: str = typer.Option(SEG.classes, "--classes",
                                                help="Organs: TotalSegmentator names or name=ID[+ID]."),
                    run: Path = typer.Option(..., "-o", "--output", help="New run folder."),
                    steps: int = typer.Option(SEG.steps, "--steps"),
                    pixel_mm: float = typer.Option(SEG.pixel_mm, "--pixel-mm", help="In-plane pixel size (mm)."),
                    crop: int = typer.Option(SEG.crop, "--crop", help="Training crop side (pixels)."),
                    batch_size: int = typer.Option(SEG.batch_size, "--batch-size"),
                    holdout_every: int = typer.Option(SEG.holdout_every, "--holdout-every",
                                                      help="Hold out every N-th block of 4 slices (0 = none)."),
                    seed: int = typer.Option(SEG.seed, "--seed"),
                    resume: bool = typer.Option(False, "--resume"),
                    max_minutes: float = typer.Option(None, "--max-minutes")):
    """Train a 2-D MONAI U-Net on labelled axial CT slices (the target of `medfake attack segmentation`)."""
    from medfake.attack.segmenter import train_segmenter as train

    config = SegmenterConfig(classes=classes, pixel_mm=pixel_mm, steps=steps, crop=crop, batch_size=batch_size,
                             holdout_every=holdout_every, seed=seed)
    folder = train(scans, labels, run, config, resume=resume, max_minutes=max_minutes)
    out.print(f"{folder}: target.yaml + model.pt; Dice in {folder / 'validation.json'}")


def segmentation(target: Path = typer.Option(..., "--target", help="Segmenter run folder or target YAML."),
                 scan: Path = typer.Option(..., "--scan", help="CT scan (file or DICOM folder)."),
                 labels: Path = typer.Option(..., "--labels", help="Its label map (same grid)."),
                 output: Path = typer.Option(..., "-o", "--output", help="New output folder."),
                 alpha: float = typer.Option(None, "--alpha", help="Attack strength α (default 2 without --drop)."),
                 drop: float = typer.Option(None, "--drop", help="Requested relative Dice drop, e.g. 0.3."),
                 mode: str = typer.Option("optimize", "--mode", help="generator | optimize"),
                 generator: Path = typer.Option(None, "--generator", help="A trained generator run (generator mode)."),
                 gen_steps: int = typer.Option(GEN.steps, "--gen-steps", help="Generator training steps."),
                 steps: int = typer.Option(ATT.steps, "--steps", help="Optimize-mode iterations."),
                 lambda_u: float = typer.Option(ATT.lambda_u, "--lambda-u"),
                 lambda_b: float = typer.Option(ATT.lambda_b, "--lambda-b"),
                 max_disp_mm: float = typer.Option(ATT.max_disp_mm, "--max-disp-mm"),
                 max_bias_hu: float = typer.Option(ATT.max_bias_hu, "--max-bias-hu"),
                 lambda_p: float = typer.Option(ATT.lambda_p, "--lambda-p", help="Weight of the perceptibility P."),
                 whole_slice: bool = typer.Option(False, "--whole-slice",
                                                  help="Optimize mode: fields over the whole slice, not the organs."),
                 no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip u-only, b-only, PGD, FGSM."),
                 table: bool = typer.Option(False, "--table", help="Also Chen's Table 1 over α = 0.5 … 3."),
                 slices: str = typer.Option(None, "--slices", help="Axial slices A:B (default: all with an organ)."),
                 seed: int = typer.Option(ATT.seed, "--seed"),
                 overwrite: bool = typer.Option(False, "--overwrite")):
    """Attack a segmentation model with smooth deformation + bias fields (x̃ = warp(x, u) + b), beside PGD/FGSM."""
    from medfake.attack.run import audit

    attack = AttackConfig(alpha=alpha, drop=drop, steps=steps, lambda_u=lambda_u, lambda_b=lambda_b,
                          max_disp_mm=max_disp_mm, max_bias_hu=max_bias_hu, lambda_p=lambda_p,
                          local=not whole_slice, seed=seed)
    results = audit(target, scan, labels, output, attack, mode, generator, GeneratorConfig(steps=gen_steps, seed=seed),
                    baselines=not no_baselines, table=table, overwrite=overwrite, slices=slices)
    drops = ", ".join(f"{k} {v['dice_before']:.2f}→{v['dice_after']:.2f}" for k, v in results["organs"].items()
                      if v["dice_before"] is not None and v["dice_after"] is not None)
    mean = "n/a" if results["mean_drop"] is None else f"{results['mean_drop']:.3f}"
    out.print(f"{output}: {drops}; mean drop {mean}, P {results['perceptibility']:.4f}; report {output / 'report.html'}")


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:  # main() may run several times in one process (tests)
        return
    _registered.add(id(app))
    train_app.command("segmenter")(train_segmenter)
    attack_app = typer.Typer(no_args_is_help=True, help="Audit models with adversarial attacks.")
    attack_app.command("segmentation")(segmentation)
    app.add_typer(attack_app, name="attack")
