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


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:
        return
    _registered.add(id(app))
    app.command("protect")(protect)
