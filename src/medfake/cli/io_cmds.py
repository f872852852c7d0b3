"""`medfake info`, `medfake convert`, `medfake view`: parse the options and call the library."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from medfake.errors import MedfakeError
from medfake.viewer.server import ServeConfig

out = Console()
SERVE = ServeConfig()
FORMAT_HELP = "dicom | mhd | nrrd | nifti | npz (default: from OUT's suffix, else the input's format)"


def parse_triplet(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise MedfakeError(f"{what} must be three comma-separated numbers, not '{text}'")
    return values


def info(path: Path = typer.Argument(..., help="DICOM folder or file, .mhd, .nrrd, .nii[.gz] or .npz."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
         series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several.")):
    """Show format, modality, shape (z,y,x), spacing (z,y,x), origin (x,y,z), direction, value range, gaps."""
    from medfake.io import load_scan
    from medfake.io.summary import describe_scan

    summary = describe_scan(load_scan(path, series=series))
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    labels = {"shape": "shape (z,y,x)", "spacing": "spacing (z,y,x) mm", "origin": "origin (x,y,z) mm",
              "hu_min": "min (HU for CT)", "hu_max": "max (HU for CT)"}
    for key, value in summary.items():
        if key in ("gaps", "warnings"):
            lines = value or ["none"]
        elif key == "direction":
            lines = [" ".join(f"{v: .6f}" for v in row) for row in value]
        elif isinstance(value, list):
            lines = [", ".join(f"{v:.10g}" for v in value)]
        else:
            lines = ["" if value is None else str(value)]
        label = labels.get(key, key)
        for line in lines:
            out.print(f"{label:<20}{line}", soft_wrap=True, highlight=False, markup=False)
            label = ""


def convert(source: Path = typer.Argument(..., metavar="IN", help="Scan to read."),
            dest: Path = typer.Argument(..., metavar="OUT", help="File, or folder for DICOM."),
            fmt: str = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
            series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing destination.")):
    """Convert between DICOM, MHD, NRRD, NIfTI and NPZ (DICOM output is a new DERIVED series)."""
    from medfake.io import load_scan, save_scan

    written = save_scan(load_scan(source, series=series), dest, format=fmt, overwrite=overwrite)
    out.print(f"wrote {written}")


def view(path: Path = typer.Argument(..., help="Scan to show."),
         voxel: str = typer.Option(None, "-c", "--voxel", help="Point as voxel z,y,x."),
         world: str = typer.Option(None, "-w", "--world", help="Point as world x,y,z mm."),
         window_name: str = typer.Option(None, "--window", help="lung | mediastinum | bone | brain | auto | W,L "
                                                                 "(default: lung for CT, auto otherwise)."),
         output: Path = typer.Option(None, "-o", "--output", help="PNG to write (without --serve)."),
         series: str = typer.Option(None, "--series", help="SeriesInstanceUID when the folder holds several."),
         serve: bool = typer.Option(False, "--serve", help="Open a local web viewer instead of writing a PNG."),
         compare: Path = typer.Option(None, "--compare", help="--serve: a tampered copy to show beside the scan."),
         heatmap: Path = typer.Option(None, "--heatmap", help="--serve: an anomaly map (same grid) to overlay."),
         manifest: Path = typer.Option(None, "--manifest", help="--serve: a manifest.csv whose locations to mark."),
         model: list[Path] = typer.Option(None, "--model", help="--serve: tamper RUN(s): click to inject/remove."),
         detector: Path = typer.Option(None, "--detector", help="--serve: detector RUN: click to score a place."),
         out_dir: Path = typer.Option(Path("viewer-out"), "--out-dir", help="--serve: folder for saved series + manifest."),
         host: str = typer.Option(SERVE.host, "--host", help="--serve: address to listen on."),
         port: int = typer.Option(SERVE.port, "--port", help="--serve: port (0: any free port)."),
         allow_remote: bool = typer.Option(False, "--allow-remote", help="--serve: allow a non-loopback --host."),
         seed: int = typer.Option(0, "--seed", help="--serve: seed of the tamper edits.")):
    """Axial, coronal and sagittal slices through a point (default: the centre), with a marker, as PNG; with
    --serve, a local web viewer (scroll, window, compare, overlay, click to tamper or score)."""
    if serve:
        from medfake.cli.viewer_cmds import serve_view

        return serve_view(path, compare, heatmap, manifest, model or [], detector, out_dir, host, port, allow_remote,
                          series, seed)
    if output is None:
        raise MedfakeError("give -o OUT.png (or --serve for the web viewer)")
    from medfake.render import render_view, save_png, window
    from medfake.io import load_scan

    chosen_window = window(window_name) if window_name not in (None, "auto") else window_name
    if voxel and world:
        raise MedfakeError("give either -c z,y,x or -w x,y,z, not both")
    if output.suffix.lower() != ".png":
        raise MedfakeError("output must be a .png file", output)
    world_xyz = parse_triplet(world, "-w x,y,z") if world else None
    voxel_zyx = parse_triplet(voxel, "-c z,y,x") if voxel else None
    scan = load_scan(path, series=series)
    if world_xyz is not None:
        zyx = scan.world_to_continuous(world_xyz)
    elif voxel_zyx is not None:
        zyx = voxel_zyx
    else:
        zyx = [(n - 1) / 2 for n in scan.shape]
    save_png(render_view(scan, zyx, chosen_window), output)
    out.print(f"wrote {output}")


def register(app, data_app, train_app) -> None:
    app.command("info")(info)
    app.command("convert")(convert)
    app.command("view")(view)
