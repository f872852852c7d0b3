"""The keyed watermark's files: `verify-watermark`'s report (JSON + overlay PNG) and the watermarked grid read
from a protection record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.protect.watermark import (WINDOW_MM, Grid, Verification, require_key, verdict, verification_record,
                                      verify)
from medfake.scan import Scan


def overlay_png(scan: Scan, result: Verification, path) -> None:
    """Axial slices through the strongest findings (or the middle slice), lung window, the strength map on top
    (red: collapsed)."""
    import matplotlib

    from medfake.protect.evaluate import LUNG_WINDOW

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = [int(round(f["voxel_zyx"][0])) for f in result.findings[:3]] or [scan.shape[0] // 2]
    fig, axes = plt.subplots(1, len(slices), figsize=(5 * len(slices), 5), squeeze=False)
    zc = np.asarray(result.centers_zyx[0])
    for ax, z in zip(axes[0], slices):
        ax.imshow(np.asarray(scan.voxels[z], np.float32), cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1])
        row = result.strength[int(np.abs(zc - z).argmin())]
        extent = (-0.5, scan.shape[2] - 0.5, scan.shape[1] - 0.5, -0.5)
        shown = np.ma.masked_invalid(row)
        image = ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=1.5,
                          alpha=0.45, extent=extent, interpolation="nearest")
        for f in result.findings:
            if abs(f["voxel_zyx"][0] - z) <= result.grid_step_zyx[0]:
                ax.plot(f["voxel_zyx"][2], f["voxel_zyx"][1], "o", ms=18, mfc="none", mec="red", mew=2)
        ax.set_title(f"slice {z}: watermark strength (1 intact, 0 gone)")
        ax.axis("off")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.7)
    fig.suptitle(verdict(result), fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def grid_from_record(path) -> Grid:
    """The watermarked grid kept in a protection record (`medfake protect --method watermark`'s JSON)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedfakeError(f"cannot read the protection record ({exc.__class__.__name__})", path) from None
    config = data.get("config", data) if isinstance(data, dict) else None
    grid = config.get("grid") if isinstance(config, dict) else None
    if not isinstance(grid, dict):
        raise MedfakeError("not a watermark protection record (no grid)", path)
    try:
        return Grid.from_dict(grid)
    except MedfakeError as exc:
        raise MedfakeError(str(exc), path) from None


def verify_file(target, outdir, key: str, series: str | None = None, window_mm: float = WINDOW_MM,
                record=None) -> dict:
    """Everything `medfake verify-watermark` does: OUT/watermark.json (+ run record) and OUT/watermark.png.
    `record`: the protection record, whose grid the pattern is mapped from (a scan resampled since)."""
    from medfake.io import load_scan
    from medfake.io.atomic import atomic_file
    from medfake.runinfo import write_run_record

    require_key(key)
    target, outdir = Path(target), Path(outdir)
    scan = load_scan(target, series=series)
    grid = grid_from_record(record) if record is not None else None
    result = verify(scan, key, window_mm=window_mm, grid=grid)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_file(outdir / "watermark.png", overwrite=True) as tmp:
        overlay_png(scan, result, tmp)  # the temporary name ends in .png
    record = {"scan": str(target), "window_mm": window_mm, "grid_from": None if record is None else str(record),
              **verification_record(result)}
    write_run_record(outdir, record, None, name="watermark.json")
    return record
