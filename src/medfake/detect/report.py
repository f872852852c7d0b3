"""`medfake detect` outputs, written all-or-nothing: scores.csv, findings.json and PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medfake.detect.detectors import Detector
from medfake.detect.patches import modality_key
from medfake.detect.screen import LocationScore, Screening, score_locations, screen_scan
from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_dir
from medfake.render import add_caption, draw_cross, overlay_heatmap, resolve_window, save_patch_grid, save_png
from medfake.scan import Scan

SCORE_COLUMNS = ("scan", "method", "voxel_z", "voxel_y", "voxel_x", "world_x", "world_y", "world_z", "score")


def check_modality(scan: Scan, detector: Detector) -> None:
    if modality_key(scan) != detector.config.modality:
        raise MedfakeError(f"{detector.config.modality.upper()} detector cannot score a {scan.modality} scan "
                           f"(modality mismatch)", scan.path)


def write_scores(rows: list[LocationScore], scan_name: str, method: str, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SCORE_COLUMNS)
        for r in rows:
            writer.writerow([scan_name, method, *r.voxel_zyx, *(f"{v:.3f}" for v in r.world_xyz), f"{r.score:.8g}"])


def _row_dict(r: LocationScore) -> dict:
    return {"voxel_zyx": list(r.voxel_zyx), "world_xyz": [round(v, 3) for v in r.world_xyz], "score": r.score}


def detect_locations(scan: Scan, detector: Detector, centres_zyx, out: Path, overwrite: bool = False) -> list[LocationScore]:
    """Score patches at the given locations (BTD protocol) and write scores.csv, findings.json, patches.png."""
    check_modality(scan, detector)
    rows, patches, maps = score_locations(scan, detector, centres_zyx)
    name = Path((scan.path or "scan")).name
    with atomic_dir(out, overwrite) as tmp:
        write_scores(rows, name, detector.method, tmp / "scores.csv")
        (tmp / "findings.json").write_text(json.dumps(
            {"scan": name, "mode": "locations", "method": detector.method, "model": detector.source,
             "options": detector.options.__dict__, "locations": [_row_dict(r) for r in rows]}, indent=2))
        shown = slice(0, min(len(rows), 12))
        if detector.scan_level:
            save_patch_grid([patches[shown]], ["sites (lung window)"], tmp / "patches.png")
        else:
            heat = maps / max(float(maps.max()), 1e-12)
            save_patch_grid([patches[shown], heat[shown, None]], ["patches", "anomaly (scaled)"], tmp / "patches.png")
    return rows


def detect_screen(scan: Scan, detector: Detector, out: Path, overwrite: bool = False, progress=None,
                  **options) -> Screening:
    """Screen the whole scan; write scores.csv (findings), findings.json, anomaly_map.npz and overlay PNGs."""
    check_modality(scan, detector)
    result = screen_scan(scan, detector, progress=progress, **options)
    name = Path((scan.path or "scan")).name
    with atomic_dir(out, overwrite) as tmp:
        write_scores(result.findings, name, detector.method, tmp / "scores.csv")
        (tmp / "findings.json").write_text(json.dumps(
            {"scan": name, "mode": "screen", "method": detector.method, "model": detector.source,
             "scan_score": result.scan_score, "tiles": result.tiles, "slices_scored": len(result.slices),
             "options": {**detector.options.__dict__, **options},
             "score_meaning": "robust z-score of the smoothed anomaly map inside the lung (median 0, MAD-scaled)",
             "findings": [_row_dict(r) for r in result.findings]}, indent=2))
        np.savez_compressed(tmp / "anomaly_map.npz", anomaly=result.anomaly)  # float16, the scan's grid
        write_overlays(scan, result, tmp)
    return result


def write_overlays(scan: Scan, result: Screening, folder: Path) -> None:
    """One axial overlay per finding (up to 3) and a maximum-intensity projection of the map."""
    grey = resolve_window(scan, None).apply
    values = result.grid.values
    hi = max(float(np.nanmax(values)) if np.isfinite(values).any() else 0.0, 1.0)

    for rank, finding in enumerate(result.findings[:3], start=1):
        z, y, x = finding.voxel_zyx
        heat = np.clip(result.grid.slice_at(z, result.region[z]), 0, None)
        rgb = draw_cross(overlay_heatmap(grey(scan.voxels[z]), heat, vmin=0, vmax=hi), y, x)
        save_png(add_caption(rgb, f"#{rank} z,y,x={z},{y},{x} score {finding.score:.2f}"), folder / f"finding_{rank}.png")
    mip = np.clip(result.grid.mip(), 0, None)
    mid = int(result.findings[0].voxel_zyx[0]) if result.findings else scan.shape[0] // 2
    rgb = overlay_heatmap(grey(scan.voxels[mid]), mip, vmin=0, vmax=hi)
    save_png(add_caption(rgb, f"anomaly MIP over z; scan score {result.scan_score:.2f}"), folder / "anomaly_mip.png")
