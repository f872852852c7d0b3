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
            method: str = typer.Option(_P.method, "--method", help="optimize | network | watermark (keyed, "
                                       "makes tampering detectable: `medfake verify-watermark`)"),
            key: str = typer.Option(None, "--key", help="method watermark: the secret key (never stored)."),
            region: str = typer.Option(_P.region, "--region", help="lungs | all: where voxels may change."),
            action: str = typer.Option(None, "--action", help="inject | remove: refuse models for the other action."),
            protector: Path = typer.Option(None, "--protector", help="method network: run folder of "
                                           "`medfake train protector`."),
            passes: int = typer.Option(_O.passes, "--passes", help="optimize: visits per lung tile."),
            focus: str = typer.Option(None, "--focus", help="optimize: only protect within --focus-mm of z,y,x."),
            focus_mm: float = typer.Option(_O.focus_mm, "--focus-mm"),
            seed: int = typer.Option(_O.seed, "--seed"),
            eot_blur_mm: float = typer.Option(_O.eot_blur_mm, "--eot-blur-mm", help="optimize: expectation over a "
                                              "blur of the scan up to this σ (mm) before the tamperer reads it."),
            ghosts: int = typer.Option(_O.ghosts, "--ghosts", help="optimize: dropout samples of each generator "
                                       "per step (a cheap ensemble)."),
            fmt: str = typer.Option("same", "-f", "--format", help="same | dicom | mhd | nrrd | nifti | npz"),
            series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several.")):
    """Protect a scan: a perturbation within --budget-hu that makes the given tamperers fail; writes a derived
    scan and OUT/<scan>_protected.protection.json."""
    from medfake.protect.config import ProtectConfig
    from medfake.protect.run import protect_file
    from medfake.tamper.run import parse_coordinate

    scan, runs = paths[0], list(against or []) + list(paths[1:])
    optimize = type(_O)(passes=passes, seed=seed, focus_mm=focus_mm, eot_blur_mm=eot_blur_mm, ghosts=ghosts,
                        focus_zyx=[[int(round(v)) for v in parse_coordinate(focus, "vox")]] if focus else [])
    config = ProtectConfig(budget, method, region, action, optimize, key=key)
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


def evaluate_protection(paths: list[Path] = typer.Argument(..., help="Protected scan(s) (or their .protection.json "
                                                          "records) as `medfake protect` wrote them."),
                        output: Path = typer.Option(..., "-o", "--output", help="New output folder."),
                        attackers: list[Path] = typer.Option(None, "--attacker", help="Tamper model run folder "
                                                             "(white-box when the scan was protected against it, "
                                                             "else grey-box); repeatable."),
                        classical: list[str] = typer.Option(None, "--classical", help="Black-box attack: copy-move "
                                                            "| inpaint; repeatable."),
                        processing: list[str] = typer.Option(None, "--before", help="Processing before the "
                                                             "white-box attack: dicom-resave | jpeg2000-10to1 | "
                                                             "blur-0.5mm | resample-1mm | median-3x3x1; repeatable."),
                        detectors: list[str] = typer.Option(None, "--detector", help="Detector run folder or a "
                                                            "training-free name (selfref): AUC of tampered-protected "
                                                            "vs tampered-unprotected; repeatable."),
                        sites: int = typer.Option(3, "--sites", help="Sites per action (removals: the nodules "
                                                  "the CAD finds, at most this many)."),
                        site: list[str] = typer.Option(None, "--site", help="Injection site z,y,x (voxels; "
                                                       "repeatable; default: --sites healthy lung places)."),
                        original: Path = typer.Option(None, "--original", help="The unprotected scan, when the "
                                                      "record's path no longer points to it (one scan only)."),
                        seed: int = typer.Option(0, "--seed"),
                        overwrite: bool = typer.Option(False, "--overwrite")):
    """How well a protection holds: imperceptibility, both judges' success rates on protected vs unprotected
    scans, ROI similarity of the two tamperings, collateral change, detector AUC; JSON, Markdown, PNG panels
    and report.html. Also reachable as `medfake evaluate protection`."""
    from medfake.protect.report import evaluate_protection as run
    from medfake.tamper.run import parse_coordinate
    from medfake.training import progress_bar

    inject_sites = [[int(round(v)) for v in parse_coordinate(s, "vox")] for s in site or []]
    with progress_bar() as bar:
        results = run(paths, list(attackers or []), output, list(classical or []), list(processing or []),
                      list(detectors or []), sites, seed, original, overwrite, bar, inject_sites)
    for case in results["cases"]:
        for name, row in case["attackers"].items():
            if row.get("n_sites"):
                out.print(f"{case['scan']}: {name}: CAD success {row['success_unprotected']:.2f} -> "
                          f"{row['success_protected']:.2f}, ROI PSNR {row['roi_psnr_lung_db']:.1f} dB")
    out.print(f"{output}: protection.json, protection.md, panels/, report.html")


def verify_watermark(scan: Path = typer.Argument(..., help="A scan watermarked by `medfake protect --method "
                                                 "watermark` (possibly tampered or processed since)."),
                     key: str = typer.Option(None, "--key", help="The key the watermark was made with."),
                     output: Path = typer.Option(..., "-o", "--output", help="Output folder (watermark.json, "
                                                 "watermark.png)."),
                     series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds "
                                                "several."),
                     record: Path = typer.Option(None, "--record", help="The protection record (*.protection.json) "
                                                 "of the watermarked scan: its grid lets a copy resampled onto "
                                                 "another grid since be checked.")):
    """Check a scan's keyed watermark: the correlation map in ~12 mm lung windows and the regions where it
    collapsed (possible tampering), with voxel and world coordinates."""
    from medfake.protect.watermark_files import verify_file

    record = verify_file(scan, output, key, series, record=record)
    out.print(f"{scan}: {record['verdict']} (whole-lung correlation {record['global_correlation']:.3f})")
    for f in record["findings"][:10]:
        out.print(f"  collapsed at voxel z,y,x {f['voxel_zyx']} (world x,y,z {f['world_xyz']} mm): "
                  f"{f['cells']} cell(s), strength {f['min_strength']:.2f}, {f['max_drop_z']:.1f} SE below the scan")
    out.print(f"{output}: watermark.json, watermark.png")


def register(app, data_app, train_app) -> None:
    if id(app) in _registered:
        return
    _registered.add(id(app))
    app.command("protect")(protect)
    app.command("evaluate-protection")(evaluate_protection)
    app.command("verify-watermark")(verify_watermark)
    train_app.command("protector")(train_protector)
