"""`medfake demo` and `medfake bench`: the whole tamper → detect → measure loop, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def _run(config_path: Path | None, run: Path, fast: bool, fresh: bool, cluster: str | None = None,
         workers: int | None = None) -> None:
    from medfake.bench.config import load_config
    from medfake.bench.report import write_outputs
    from medfake.bench.matrix import run_matrix

    config = load_config(config_path, fast=fast)
    out.rule(f"medfake {config.get('name', 'bench')}{' (fast)' if fast else ''} → {run}")
    if cluster or workers:
        from medfake.bench.cluster import DaskCells

        with DaskCells(address=cluster, workers=workers) as executor:
            out.print(f"cells run on {executor.describe()}")
            matrix = run_matrix(config, run.resolve(), fresh=fresh, log=out.print, executor=executor)
    else:
        matrix = run_matrix(config, run.resolve(), fresh=fresh, log=out.print)
    summary = write_outputs(matrix)
    table = Table("subset", "detector", "AUC", "95% CI", "tampered/genuine", title="Detection (held-out scans)")
    for a in summary["auc"]:
        table.add_row(a["subset"], a["detector"], f"{a['auc']:.3f}", f"[{a['low']:.3f}, {a['high']:.3f}]",
                      f"{a['n_pos']}/{a['n_neg']}")
    out.print(table)
    out.print(f"CAD success: inject {summary['cad_success']['inject']}, remove {summary['cad_success']['remove']}; "
              f"screening top-3: {summary['screening_top3']}; compute {summary['total_s']} s")
    out.print(f"report: {run / 'report.html'}")


def demo(fast: bool = typer.Option(False, "--fast", help="Smaller cohort and shorter training (≈ 5 min on 2 cores)."),
         run: Path = typer.Option(Path("runs/demo"), "-o", "--output", help="Run folder (reused: cached steps are skipped)."),
         fresh: bool = typer.Option(False, "--fresh", help="Start the run folder from scratch.")):
    """Fetch real samples, synthesize a cohort, train tamperers and detectors, tamper held-out scans (incl. the
    real lung1), score, screen, and write RUN/report.html."""
    if fast and run == Path("runs/demo"):
        run = Path("runs/demo-fast")
    _run(None, run, fast, fresh)


def bench(config: Path = typer.Argument(None, help="YAML config (see --example)."),
          run: Path = typer.Option(None, "-o", "--output", help="Run folder; an interrupted run resumes."),
          example: bool = typer.Option(False, "--example", help="Print the shipped demo config and exit."),
          fast: bool = typer.Option(False, "--fast", help="Apply the config's `fast:` overrides."),
          fresh: bool = typer.Option(False, "--fresh", help="Start the run folder from scratch."),
          cluster: str = typer.Option(None, "--cluster", help="Dask scheduler (tcp://HOST:8786) to run the cells on; "
                                      "RUN must be on storage its workers see."),
          workers: int = typer.Option(None, "--workers", min=1, help="Run the cells on a local Dask cluster of N "
                                      "worker processes.")):
    """Run a benchmark matrix (scans × tamper methods × detectors) from a YAML config."""
    from medfake.errors import MedfakeError
    from medfake.bench.config import example_config_text

    if example:
        print(example_config_text(), end="")
        return
    if config is None or run is None:
        raise MedfakeError("bench needs a CONFIG and -o RUN (or --example)")
    if cluster and workers:
        raise MedfakeError("give --cluster or --workers, not both")
    _run(config, run, fast, fresh, cluster, workers)


def register(app, data_app, train_app) -> None:
    app.command("demo")(demo)
    app.command("bench")(bench)
