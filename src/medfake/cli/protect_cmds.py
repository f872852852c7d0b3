"""`medfake protect`: budgeted perturbations that make later tampering fail."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out = Console()
_registered: set[int] = set()


def _defaults():
    from medfake.protect.config import OptimizeConfig, ProtectConfig

    return ProtectConfig(), OptimizeConfig()


_P, _O = _defaults()


def protect(paths: list[Path] = typer.Argument(..., help="SCAN (DICOM folder/file, .mhd, .nrrd, .nii[.gz], .npz), "
                                               "then optionally more --against runs."),
            output: Path = typer.Option(..., "-o", "--output", help="Output folder (protected scan + record)."),
            against: list[Path] = typer.Option(None, "--against", help="Tamper model run folder(s) to protect against."),
            budget: float = typer.Option(_P.budget_hu, "--budget-hu", help="L-inf budget on the stored voxels (HU)."),
            method: str = typer.Option(_P.method, "--method", help="optimize | network"),
            region: str = typer.Option(_P.region, "--region", help="lungs | all: where voxels may change."),
            action: str = typer.Option(None, "--action", help="inject | remove: refuse models for the other action."),
            protector: Path = typer.Option(None, "--protector", help="method network: run folder of "
                                           "`medfake train protector`."),
            passes: int = typer.Option(_O.passes, "--passes", help="optimize: visits per lung tile."),
            focus: str = typer.Option(None, "--focus", help="optimize: only protect within --focus-mm of z,y,x."),
            focus_mm: float = typer.Option(_O.focus_mm, "--focus-mm"),
            seed: int = typer.Option(_O.seed, "--seed"),
            fmt: str = typer.Option("same", "-f", "--format", help="same | dicom | mhd | nrrd | nifti | npz"),
            series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several.")):
    """Protect a scan: a perturbation within --budget-hu that makes the given tamperers fail; writes a derived
    scan and OUT/<scan>_protected.protection.json."""
    from medfake.protect.config import ProtectConfig
    from medfake.protect.run import protect_file
    from medfake.tamper.run import parse_coordinate

    scan, runs = paths[0], list(against or []) + list(paths[1:])
    optimize = type(_O)(passes=passes, seed=seed, focus_mm=focus_mm,
                        focus_zyx=[[int(round(v)) for v in parse_coordinate(focus, "vox")]] if focus else [])
    config = ProtectConfig(budget, method, region, action, optimize)
    result = protect_file(scan, output, runs, config, fmt, series, protector)
    out.print(f"wrote {result.output} ({result.seconds:.0f} s); record {result.record}")


def train_protector(scans: list[Path] = typer.Option(..., "--scans", help="Cohort: a folder of scans, a .txt list "
                                                     "of paths, or a scan; repeatable."),
                    against: list[Path] = typer.Option(..., "--against", help="Tamper model run folder(s)."),
                    output: Path = typer.Option(..., "-o", "--output", help="New run folder."),
                    budget: float = typer.Option(_P.budget_hu, "--budget-hu", help="L-inf budget (HU)."),
                    region: str = typer.Option(_P.region, "--region", help="lungs | all"),
                    steps: int = typer.Option(300, "--steps"),
                    seed: int = typer.Option(0, "--seed"),
                    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT.")):
    """Train the feed-forward protector (`medfake protect --method network --protector RUN`)."""
    from medfake.data.cohort import scan_paths
    from medfake.io import load_scan
    from medfake.protect.network import ProtectorConfig, train_protector as train
    from medfake.protect.run import load_attackers

    paths = [p for spec in scans for p in scan_paths(spec)]
    config = ProtectorConfig(budget_hu=budget, region=region, steps=steps, seed=seed)
    run = train([load_scan(p) for p in paths], load_attackers(against, None), output, config, resume=resume)
    out.print(f"protector run {run} (model in {run / 'model'})")


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:
        return
    _registered.add(id(app))
    app.command("protect")(protect)
    train_app.command("protector")(train_protector)
