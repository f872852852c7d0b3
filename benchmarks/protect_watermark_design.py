"""Two design alternatives for the keyed watermark's whole-scan search (`verify`), on lung1 and chest2 (real, held
out of the tamperers' training) watermarked at 8 HU and tampered by the shared cpu-small CT-GAN (injection at 2
automatic healthy sites, removal at the labelled / CAD-found nodules):

1. larger windows for the local amplitude (12, 16, 20, 24 mm; the CT-GAN cube is ~22 mm across);
2. a coarser pattern (in-plane σ of the ±1 field 0.7 → 1.2 → 2.0 voxels, with the verification's high-pass
   σ 1.0 → 2.5 → 4.0), which the CT-GAN's coarser isotropic cube might replace rather than keep.

3. resampling onto a new in-plane grid (1.0 and 0.8 × the voxel size, the new spacing kept, linear) after the
   attack: does `verify` find the watermark at all, without and with the watermarked grid (`--record`), and how
   do the tampered sites read there?

Per setting: the strength (local amplitude / the scan's, 1 intact) and the drop z-score at each tampered site's
grid cell, and on the untouched watermarked scan the largest drop z-score and the cells `verify` would flag
(strength < 0.5 and z > 4.5: false alarms). Prints and saves benchmarks/results/protect_watermark_design.json.

Usage: PYTHONPATH=src python benchmarks/protect_watermark_design.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medfake.cad import detect_nodules
from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.protect import watermark as wm
from medfake.protect.surrogate import load_tamper_model
from medfake.runinfo import write_run_record
from medfake.stats import robust_sigma
from medfake.tamper.pipeline import tamper_scan
from medfake.tamper.sites import pick_sites

RESULTS = Path(__file__).parent / "results"
BENCH = Path("/work/runs/bench_tamper")
KEY = "benchmark key 2026"
LUNG1_NODULE = (33, 359, 218)
WINDOWS_MM = (12.0, 16.0, 20.0, 24.0)
PATTERNS = ((0.7, 1.0), (1.2, 2.5), (2.0, 4.0))  # (pattern σ, high-pass σ) in voxels; the first is the shipped one


def flags(strength, drop_z) -> int:
    """Grid cells `verify` would flag."""
    finite = np.isfinite(strength)
    return int(((strength < wm.TAMPERED_STRENGTH) & (drop_z > wm.DROP_Z))[finite].sum())


def error_model_figures(ev, window_mm: float) -> dict:
    """The z-scores of `verify`'s error model alone (no self-calibration): their robust spread over the scan's
    cells (~1 where the model holds) and the cells they would flag."""
    strength, raw_z, *_ = wm.strength_grid(ev, window_mm, calibrate=False)
    return {"drop_z_spread_uncalibrated": float(robust_sigma(raw_z[np.isfinite(raw_z)])),
            "flagged_cells_uncalibrated": flags(strength, raw_z)}


def site_cells(strength, drop_z, centers, sites_zyx) -> list[dict]:
    out = []
    for site in sites_zyx:
        cell = tuple(int(np.abs(np.asarray(c) - v).argmin()) for c, v in zip(centers, site))
        out.append({"site": [round(float(v), 1) for v in site], "strength": float(strength[cell]),
                    "drop_z": float(drop_z[cell])})
    return out


def grid_figures(scan, lung, sites, window_mm: float) -> dict:
    ev = wm.evidence(scan, KEY, lung)
    strength, drop_z, centers, _, _ = wm.strength_grid(ev, window_mm)
    return {"sites": site_cells(strength, drop_z, centers, sites), "max_drop_z": float(np.nanmax(drop_z)),
            "flagged_cells": flags(strength, drop_z), "correlation": float(ev.correlation),
            **error_model_figures(ev, window_mm)}


def regrid(scan, mm: float):
    """In-plane linear resampling onto a grid of `mm` pixels, kept (a PACS re-slicing to a new spacing)."""
    factors = [1.0, scan.spacing[1] / mm, scan.spacing[2] / mm]
    voxels = ndimage.zoom(np.asarray(scan.voxels, np.float32), factors, order=1)
    spacing = (scan.spacing[0], *(s * n / m for s, n, m in zip(scan.spacing[1:], scan.shape[1:], voxels.shape[1:])))
    return scan.with_voxels(np.rint(voxels).astype(scan.voxels.dtype), spacing=spacing)


def regrid_figures(cases: dict, original) -> dict:
    """Each case resampled onto a new in-plane grid after the attack, checked without and with the watermarked
    grid (`verify-watermark --record`): found at all, correlation, findings, strength / drop z at the sites, and
    the error model's own z-scores (their spread, the cells they would flag)."""
    grid = wm.Grid.of(original)
    out = {}
    for label, mm in (("1.0 mm", 1.0), ("0.8 x voxel", 0.8 * original.spacing[1])):
        for case, (scan, sites) in cases.items():
            moved = regrid(scan, mm)
            lung = lung_mask(moved)
            row = {"shape": list(moved.shape)}
            for how, given in (("without grid", None), ("with grid", grid)):
                result = wm.verify(moved, KEY, lung, grid=given)
                row[how] = {"present": result.present, "correlation": round(result.global_correlation, 4),
                            "findings": len(result.findings)}
            ev = wm.evidence(moved, KEY, lung, grid=grid)
            strength, drop_z, centers, _, _ = wm.strength_grid(ev)
            moved_sites = [moved.world_to_continuous(scan.voxel_to_world(site)) for site in sites]
            row["sites"] = site_cells(strength, drop_z, centers, moved_sites)
            row["with grid"].update(error_model_figures(ev, wm.WINDOW_MM))
            out[f"{label}, {case}"] = row
    return out


def run_scan(name: str, models: dict) -> dict:
    scan = load_scan(sample_path(name))
    lung = lung_mask(scan)
    removals = [LUNG1_NODULE] if name == "lung1" else [n.center_zyx for n in detect_nodules(scan, lung)[:2]]
    out = {}
    shipped = (wm.PATTERN_SIGMA_VOXELS, wm.HIGHPASS_SIGMA_VOXELS)
    try:
        for pattern_sigma, highpass_sigma in PATTERNS:
            wm.PATTERN_SIGMA_VOXELS, wm.HIGHPASS_SIGMA_VOXELS = pattern_sigma, highpass_sigma
            marked = wm.embed(scan, KEY, 8.0, lung)
            rng = np.random.default_rng(0)
            injections = pick_sites(marked, 2, rng, lung=lung)
            cases = {"untouched": (marked, [])}
            for action, sites in (("inject", injections), ("remove", removals)):
                cases[f"ctgan-{action}"] = (tamper_scan(marked, sites, action, models[action], "ctgan", rng, lung)[0],
                                            sites)
            if (pattern_sigma, highpass_sigma) == PATTERNS[0]:
                out["new grid"] = regrid_figures(cases, marked)
                print(name, "new grid", json.dumps(out["new grid"]), flush=True)
            windows = WINDOWS_MM if (pattern_sigma, highpass_sigma) == PATTERNS[0] else WINDOWS_MM[:1]
            for window in windows:
                key = f"pattern {pattern_sigma} / highpass {highpass_sigma}, window {window:g} mm"
                out[key] = {case: grid_figures(tampered, lung, sites, window)
                            for case, (tampered, sites) in cases.items()}
                print(name, key, {c: ([(round(s["strength"], 2), round(s["drop_z"], 1)) for s in f["sites"]],
                                      f["flagged_cells"], f["flagged_cells_uncalibrated"])
                                  for c, f in out[key].items()}, flush=True)
    finally:
        wm.PATTERN_SIGMA_VOXELS, wm.HIGHPASS_SIGMA_VOXELS = shipped
    return out


def main() -> dict:
    start = time.time()
    models = {a: load_tamper_model(BENCH / f"run_{a}", a) for a in ("inject", "remove")}
    result = {"budget_hu": 8.0, "flag_rule": {"strength_below": wm.TAMPERED_STRENGTH, "drop_z_above": wm.DROP_Z},
              "models": {a: m.model_id for a, m in models.items()},
              "scans": {name: run_scan(name, models) for name in ("lung1", "chest2")}}
    result["total_seconds"] = round(time.time() - start, 1)
    return result


if __name__ == "__main__":
    out = main()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protect_watermark_design.json").write_text(json.dumps(out, indent=1))
    write_run_record(RESULTS, {"benchmark": "protect_watermark_design", "windows_mm": WINDOWS_MM,
                               "patterns": PATTERNS}, seed=0, name="protect_watermark_design.run.json")
