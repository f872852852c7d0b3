"""`medfake view --serve` (called from io_cmds.view) and `medfake reader-study make | serve | analyse`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medfake.viewer.server import ServeConfig

out = Console()
err = Console(stderr=True)
DEFAULTS = ServeConfig()
study_app = typer.Typer(no_args_is_help=True, help="Blinded reader studies: make a reading set, serve it, analyse it.")


def _serve(app_factory, host: str, port: int, allow_remote: bool) -> None:
    from medfake.viewer.server import check_host, new_token, serve_forever

    warning = check_host(host, allow_remote)
    if warning:
        err.print(f"[yellow]{warning}[/yellow]", soft_wrap=True, highlight=False)
    token = new_token()
    serve_forever(app_factory(token), host, port, token, echo=lambda text: out.print(text, soft_wrap=True, highlight=False))


def serve_view(path: Path, compare: Path | None, heatmap: Path | None, manifest: Path | None, models: list[Path],
               detector: Path | None, out_dir: Path | None, host: str, port: int, allow_remote: bool,
               series: str | None, seed: int) -> None:
    from medfake.viewer.app import build_viewer, create_viewer_app
    from medfake.viewer.server import check_host

    check_host(host, allow_remote)  # refuse before loading anything
    volumes, editor, scorer, notes = build_viewer(path, compare, heatmap, manifest, models, detector, out_dir,
                                                  series, seed)
    for note in notes:
        err.print(f"[yellow]{note}[/yellow]", soft_wrap=True, highlight=False)
    _serve(lambda token: create_viewer_app(volumes, token, editor, scorer, notes), host, port, allow_remote)


def make(genuine: list[Path] = typer.Option(..., "--genuine", help="Genuine scans (repeat; a folder or list file works)."),
         tampered: Path = typer.Option(..., "--tampered", help="manifest.csv of a tamper run (its outputs and originals)."),
         output: Path = typer.Option(..., "-o", "--output", help="New study folder."),
         pairs: int = typer.Option(0, "--pairs", help="Side-by-side cases: a tampered scan beside its original."),
         singles: int = typer.Option(0, "--singles", help="Single-image cases, half tampered (rounded down), half genuine."),
         nodules: Path = typer.Option(None, "--nodules", help="Nodule table (LUNA16/CT-GAN) of the genuine scans, "
                                                               "for the diagnostic AUC."),
         seed: int = typer.Option(0, "--seed", help="Random seed for the choice and order of cases.")):
    """Build a blinded, randomised reading set with a sealed key."""
    from medfake.data.cohort import scan_paths
    from medfake.viewer.study import make_study

    summary = make_study(scan_paths(list(genuine)), tampered, output, pairs, singles, seed, nodules)
    out.print(f"wrote {output}: {summary['cases']} cases ({summary['pairs']} pairs, {summary['singles']} singles), "
              f"{summary['images']} images; the key is {output / 'key.json'} (keep it from the readers)")


def serve(study: Path = typer.Argument(..., help="Study folder from `reader-study make`."),
          host: str = typer.Option(DEFAULTS.host, "--host", help="Address to listen on."),
          port: int = typer.Option(DEFAULTS.port, "--port", help="Port (0: any free port)."),
          allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --host.")):
    """Show the cases to named readers one by one; every answer is saved at once (resumable)."""
    from medfake.viewer.study import Study
    from medfake.viewer.study_app import create_study_app

    loaded = Study(study)
    _serve(lambda token: create_study_app(loaded, token), host, port, allow_remote)


def analyse(study: Path = typer.Argument(..., help="Study folder with answers."),
            output: Path = typer.Option(..., "-o", "--output", help="Folder for analysis.json, roc.png, report.html."),
            hit_mm: float = typer.Option(20.0, "--hit-mm", help="A click this close to a manipulated place is a hit.")):
    """Per-reader ROC/AUC (DeLong CIs), diagnostic AUC originals vs modified, localisation hits, HTML report."""
    from medfake.viewer.analysis import HEADER, analyse as run_analysis, table_rows
    from rich.table import Table

    summary = run_analysis(study, output, hit_mm)
    table = Table(*HEADER, title=f"reader study: {summary['cases']} cases")
    for row in table_rows(summary):
        table.add_row(*row)
    out.print(table)
    out.print(f"wrote {output / 'report.html'}, {output / 'analysis.json'}")


def register(app, data_app, train_app) -> None:
    study_app.command("make")(make)
    study_app.command("serve")(serve)
    study_app.command("analyse")(analyse)
    app.add_typer(study_app, name="reader-study")
