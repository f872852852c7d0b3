"""What a click does: inject or remove with a tamper model, undo, save as a derived series with its
manifest rows, or score a location with a detector. The only module of the viewer that calls tamper or detect.

Saving reuses `medfake tamper`'s own writers (derived series with new UIDs and a DerivationDescription,
manifest appended atomically, the scan removed again if the manifest cannot be written). Every file goes
into the output folder given on the command line; its name is chosen here, never by the request.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io import save_scan
from medfake.scan import Scan
from medfake.viewer.volumes import Marker, as_int16


def load_models(run_dirs) -> dict:
    """{action: TamperModel} from `medfake train` run folders (one injector and/or one remover)."""
    from medfake.tamper import load_tamper_model

    models = {}
    for run in run_dirs or ():
        model = load_tamper_model(run)
        if model.action in models:
            raise MedfakeError(f"two --model runs are both trained to {model.action}: give one per action", run)
        models[model.action] = model
    return models


@dataclass
class Edit:
    """One click's change: the voxels it replaced (a bounding box) and its manifest rows."""

    box: tuple[slice, slice, slice]
    old: np.ndarray
    rows: list
    zyx: tuple[int, int, int]
    action: str


def changed_box(old: np.ndarray, new: np.ndarray) -> tuple[slice, slice, slice] | None:
    changed = np.nonzero(old != new)
    if not changed[0].size:
        return None
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in changed)


REACH_MM = 64.0  # tamper_scan is given the box within this reach of the click: the cube, its blend and the
# parenchyma whose noise texture it copies (slices within 40 mm; here also within 64 mm in-plane), at a
# fraction of the cost of a whole 300-slice CT


def box_around(scan: Scan, zyx) -> tuple[slice, slice, slice]:
    reach = [int(np.ceil(REACH_MM / s)) for s in scan.spacing]
    return tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(zyx, reach, scan.shape))


class Editor:
    """Click-to-tamper on the `after` volume of a VolumeSet, with undo and save."""

    def __init__(self, volumes, source: Path, models: dict, outdir: Path, seed: int = 0, fmt: str = "same"):
        self.volumes, self.source, self.models = volumes, Path(source), models
        self.outdir, self.seed, self.fmt = Path(outdir), seed, fmt
        self.edits: list[Edit] = []
        self.saved: list[Path] = []
        self.lock = threading.Lock()

    @property
    def actions(self) -> list[str]:
        return sorted(self.models)

    def current_scan(self) -> Scan:
        meta = dict(self.volumes.scan.meta, path=str(self.source))
        return self.volumes.scan.with_voxels(self.volumes.after, meta=meta)

    def apply(self, action: str, zyx) -> dict:
        from medfake.tamper import tamper_scan

        if action not in self.models:
            raise MedfakeError(f"no --model trained to {action} was given")
        with self.lock:
            scan = self.current_scan()
            zyx = tuple(int(v) for v in scan.require_inside(zyx, "click"))
            box = box_around(scan, zyx)
            start = tuple(s.start for s in box)
            part = scan.with_voxels(scan.voxels[box], origin=tuple(scan.voxel_to_world(start)))
            rng = np.random.default_rng([self.seed, len(self.edits)])
            local = tuple(v - s for v, s in zip(zyx, start))
            tampered, rows = tamper_scan(part, [local], action, self.models[action], rng=rng)
            new = as_int16(tampered.voxels)
            changed = changed_box(self.volumes.after[box], new)
            seed = {"seed": self.seed, "edit": len(self.edits)}
            rows = [replace(r, scan=str(self.source), voxel_z=zyx[0], voxel_y=zyx[1], voxel_x=zyx[2],
                            parameters=json.dumps(dict(json.loads(r.parameters), **seed), sort_keys=True))
                    for r in rows]
            if changed is None:
                return self.state(None)
            where = tuple(slice(c.start + s, c.stop + s) for c, s in zip(changed, start))
            self.edits.append(Edit(where, self.volumes.after[where].copy(), rows, zyx, action))
            self.volumes.after[where] = new[changed]
            return self.state(where)

    def undo(self) -> dict:
        with self.lock:
            if not self.edits:
                raise MedfakeError("nothing to undo")
            edit = self.edits.pop()
            self.volumes.after[edit.box] = edit.old
            return self.state(edit.box)

    def state(self, box=None) -> dict:
        return {"edits": len(self.edits), "changed": [[s.start, s.stop] for s in box] if box else None,
                "edit_markers": [Marker(e.zyx, e.action, "edit").as_dict() for e in self.edits]}

    def save(self) -> dict:
        """Write the edited scan as a derived series into the output folder and append its manifest rows."""
        from medfake.tamper.run import MANIFEST, append_manifest_atomic, derivation_text, output_name

        with self.lock:
            if not self.edits:
                raise MedfakeError("no edit to save")
            rows = [row for edit in self.edits for row in edit.rows]
            actions = {edit.action for edit in self.edits}
            self.outdir.mkdir(parents=True, exist_ok=True)
            dest = output_name(self.outdir, self.source, actions.pop() if len(actions) == 1 else "tamper")
            written = save_scan(self.current_scan(), dest, format=self.fmt, derivation=derivation_text(rows))
            rows = [replace(r, output=str(written)) for r in rows]
            try:
                append_manifest_atomic(rows, self.outdir / MANIFEST)
            except BaseException:  # a tampered scan without its ground truth must not be left behind
                shutil.rmtree(written) if written.is_dir() else written.unlink(missing_ok=True)
                if written.suffix == ".mhd":
                    written.with_suffix(".raw").unlink(missing_ok=True)
                raise
            self.saved.append(written)
            return {"output": written.name, "manifest": MANIFEST, "rows": len(rows)}


class Scorer:
    """A detector scoring the clicked location of the `after` volume (else the scan) as `medfake detect` does."""

    def __init__(self, volumes, run: Path):
        from medfake.detect.detectors import load_detector

        self.volumes = volumes
        self.detector = load_detector(run)
        self.lock = threading.Lock()

    def score(self, zyx) -> dict:
        from medfake.detect.screen import score_locations

        voxels = self.volumes.after if self.volumes.after is not None else self.volumes.before
        scan = self.volumes.scan.with_voxels(voxels)
        with self.lock:
            rows, patches, maps = score_locations(scan, self.detector, [zyx])
        residual = np.asarray(maps[0], dtype=np.float32).reshape(maps.shape[-2:])
        patch = np.asarray(patches[0], dtype=np.float32).reshape(patches.shape[-2:])
        return {"score": rows[0].score, "zyx": list(rows[0].voxel_zyx), "method": self.detector.method,
                "size": list(residual.shape), "residual": np.round(residual, 6).ravel().tolist(),
                "patch": np.round(patch, 4).ravel().tolist()}


def manifest_markers(manifest: Path, scan: Scan, shown: list[Path]) -> tuple[list[Marker], str | None]:
    """The manifest rows whose output or source scan is one of the shown scans, as markers; all rows, with a
    warning, when none names them."""
    from medfake.io.tables import read_manifest

    rows = read_manifest(manifest)
    names = {p.resolve() for p in shown if p}
    mine = [r for r in rows if any(p and Path(p).resolve() in names for p in (r.output, r.scan))]
    warning = None
    if not mine:
        mine = rows
        warning = f"no row of {manifest.name} names the shown scans: drawing all {len(rows)} rows"
    markers = []
    for r in mine:
        zyx = scan.world_to_voxel((r.world_x, r.world_y, r.world_z))
        markers.append(Marker(tuple(int(v) for v in zyx), f"{r.action} ({r.method})"))
    return markers, warning
