"""`medfake tamper` as a function: load, choose locations, tamper, write the derived scan + manifest rows.

Outputs never replace anything: the scan goes to `OUTDIR/<scan>_<action>[_n]` (a DICOM series folder or a
file) through `save_scan` (atomic; DICOM gets new UIDs and DERIVED with a DerivationDescription naming the
action, method and locations), then the rows are appended to `OUTDIR/manifest.csv` by rewriting it
atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medfake.cad import detect_nodules
from medfake.data.annotations import nodules_from_label
from medfake.data.cohort import locations_for, scan_key
from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.io.atomic import atomic_file, unused_name
from medfake.io.tables import ManifestRow, append_manifest, read_locations
from medfake.lungmask import lung_mask
from medfake.scan import Scan
from medfake.tamper.config import TamperRequest, require_system
from medfake.tamper.pipeline import Site, tamper_scan
from medfake.tamper.sites import pick_sites

if TYPE_CHECKING:  # torch is imported only for the learned methods (ctgan, cyclegan), in `load_model`
    from medfake.tamper.model import TamperModel

MANIFEST = "manifest.csv"


@dataclass
class TamperResult:
    output: Path
    rows: list[ManifestRow]
    scan: Scan


def parse_coordinate(text: str, system: str) -> tuple[float, float, float]:
    """'z,y,x' voxels (system vox) or 'x,y,z' millimetres (system world)."""
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        order = "x,y,z mm" if system == "world" else "z,y,x voxels"
        raise MedfakeError(f"bad coordinate '{text}': expected three numbers {order}")
    return values


def to_voxel(scan: Scan, coords, system: str) -> tuple[int, int, int]:
    require_system(system)
    zyx = scan.world_to_continuous(coords) if system == "world" else np.asarray(coords, dtype=float)
    return tuple(int(v) for v in scan.require_inside(zyx))


def resolve_sites(scan: Scan, target: Path, action: str, coords=(), system: str = "vox", table=None,
                  require: bool = True) -> list[Site]:
    """User coordinates ('z,y,x' text or numbers; x,y,z mm with system world) and table rows naming this
    scan (automatic locations: `auto_sites`)."""
    sites = [Site(to_voxel(scan, parse_coordinate(c, system) if isinstance(c, str) else c, system))
             for c in coords]
    if table:
        rows = locations_for(target, scan, read_locations(table, "world" if system == "world" else "vox"))
        if not rows:
            raise MedfakeError(f"no row of the table names this scan ({target.name})", table)
        sites += [Site(to_voxel(scan, r.coords, r.system), "table", r.diameter_mm) for r in rows]
    if not sites and require:
        raise MedfakeError("no location given: use -c, --coords or --auto")
    return sites


def auto_sites(scan: Scan, action: str, n: int, rng, lung, labelled, taken, nodules) -> list[Site]:
    """Injection: free lung parenchyma away from vessels, pleura and nodules (labelled or detected).
    Removal: the labelled nodules (largest first) or else the detector's strongest candidates.
    `labelled`: [(zyx, diameter_mm)] from `label_nodules`; `nodules`: `detect_nodules(scan, lung)`, needed
    unless the removal has labels (`needs_candidates`)."""
    if action == "remove":
        pool = labelled or [(n_.center_zyx, n_.diameter_mm) for n_ in nodules]
        pool = [p for p in pool if tuple(p[0]) not in set(map(tuple, taken))]
        if len(pool) < n:
            raise MedfakeError(f"asked to remove {n} nodule(s) but found {len(pool)}", scan.path)
        return [Site(tuple(int(v) for v in zyx), "auto", float(d)) for zyx, d in pool[:n]]
    existing = [zyx for zyx, _ in labelled] + [n_.center_zyx for n_ in nodules] + list(taken)
    return [Site(zyx, "auto") for zyx in pick_sites(scan, n, rng, lung, avoid_zyx=existing, avoid_mm=20.0)]


def needs_candidates(action: str, labelled) -> bool:
    """Automatic sites need the CAD's candidates to keep injections away from nodules, and to find nodules to
    remove when there are no labels."""
    return action == "inject" or not labelled


def label_nodules(scan: Scan, label: str | Path) -> list[tuple[tuple[int, int, int], float]]:
    """(voxel z,y,x, diameter mm) of every nodule of a label volume on the scan's grid, largest first."""
    rows = sorted(nodules_from_label(load_scan(label, modality="SEG"), scan), key=lambda r: -r["diameter_mm"])
    return [(tuple(int(v) for v in r["voxel_zyx"]), float(r["diameter_mm"])) for r in rows]


def output_name(outdir: Path, target: Path, action: str) -> Path:
    return unused_name(outdir, f"{scan_key(target)}_{action}")


def derivation_text(rows: list[ManifestRow]) -> str:
    where = "; ".join(f"{r.voxel_z},{r.voxel_y},{r.voxel_x}" for r in rows)
    text = f"medfake tamper: {rows[0].action} by {rows[0].method} at voxel z,y,x {where} (model {rows[0].model_id})"
    return text[:1000]


def append_manifest_atomic(rows: list[ManifestRow], path: Path) -> Path:
    """Copy the manifest, append the rows, rename over the original: readers never see half a manifest."""
    with atomic_file(path, overwrite=True) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        else:
            tmp.unlink()
        append_manifest(rows, tmp)
    return path


def load_model(method: str, action: str, model_dir):
    """The trained model a learned method needs (None for the classical ones, which never import torch)."""
    if method == "ctgan":
        if model_dir is None:
            raise MedfakeError("method ctgan needs --model RUN (a folder written by `medfake train`)")
        from medfake.tamper.model import load_tamper_model

        return load_tamper_model(model_dir, action)
    if method == "cyclegan":
        if model_dir is None:
            raise MedfakeError("method cyclegan needs --model RUN (a folder written by `medfake train cyclegan`)")
        from medfake.tamper.cyclegan.apply import load_cyclegan

        return load_cyclegan(model_dir, action)
    return None


def tamper_file(request: TamperRequest, model: TamperModel | None = None) -> TamperResult:
    """Everything `medfake tamper` does. `model` (a loaded TamperModel) overrides `request.model_dir`."""
    r = request.validate()
    parsed = [parse_coordinate(c, r.system) if isinstance(c, str) else c for c in r.coords]  # fail before any work
    target, outdir = Path(r.target), Path(r.outdir)
    if model is None:
        model = load_model(r.method, r.action, r.model_dir)
    scan = load_scan(target, series=r.series)
    rng = np.random.default_rng(r.seed)
    whole_image = r.method == "cyclegan" and scan.shape[0] == 1  # a 2-D image: no location = all of it
    sites = resolve_sites(scan, target, r.action, parsed, r.system, r.table, require=not r.auto and not whole_image)
    labelled = label_nodules(scan, r.label) if r.auto and r.label else []
    lung = lung_mask(scan) if r.auto else None  # user locations need no lung segmentation
    nodules = None  # the CAD's candidates: one pass serves the automatic sites and the copy-move donor
    if r.auto:
        if needs_candidates(r.action, labelled):
            nodules = detect_nodules(scan, lung)
        sites += auto_sites(scan, r.action, r.auto, rng, lung, labelled, [s.zyx for s in sites], nodules)
    donor_scan = load_scan(r.donor) if r.donor else None
    donor_zyx = None
    if r.donor_coord:
        donor_zyx = to_voxel(donor_scan or scan, parse_coordinate(r.donor_coord, "vox"), "vox")
    tampered, rows = tamper_scan(scan, sites, r.action, model, r.method, rng, lung, donor_scan, donor_zyx,
                                 r.blend_mm, r.views, nodules=nodules)
    return write_tampered(tampered, rows, target, outdir, r)


def write_tampered(tampered: Scan, rows: list[ManifestRow], target: Path, outdir: Path,
                   request: TamperRequest) -> TamperResult:
    """The derived scan under a new name in `outdir`, then its rows appended to the manifest (or no scan)."""
    outdir.mkdir(parents=True, exist_ok=True)
    dest = output_name(outdir, target, request.action)
    rows = [replace(row, parameters=json.dumps(dict(json.loads(row.parameters), seed=request.seed), sort_keys=True))
            for row in rows]
    written = save_scan(tampered, dest, format=request.fmt, derivation=derivation_text(rows))
    rows = [replace(row, output=str(written)) for row in rows]
    try:
        append_manifest_atomic(rows, outdir / MANIFEST)
    except BaseException:  # a tampered scan without its ground truth must not be left behind
        shutil.rmtree(written) if written.is_dir() else written.unlink(missing_ok=True)
        if written.suffix == ".mhd":
            written.with_suffix(".raw").unlink(missing_ok=True)
        raise
    return TamperResult(written, rows, tampered)
