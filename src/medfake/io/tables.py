"""Coordinate tables: CT-GAN (`filename,x,y,z[,type]`), LUNA16 `annotations.csv`, our tamper manifest.

Every table states its coordinate system: CT-GAN tables may be world or voxel (the caller says which),
LUNA16 is world mm (x,y,z), the manifest carries both world x,y,z and voxel z,y,x.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_file

LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def _read_rows(path: Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise MedfakeError("no such table", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MedfakeError("not a text table", path) from None
    try:
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        if not reader.fieldnames:
            raise MedfakeError("empty table", path)
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise MedfakeError(f"not a readable CSV table ({exc})", path) from None


def _require(path: Path, rows: list[dict], columns) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if rows and missing:
        raise MedfakeError(f"missing column(s) {', '.join(missing)}", path)


def _float(path: Path, row_no: int, value: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        raise MedfakeError(f"row {row_no}: column {column} is not a finite number: '{value}'", path)
    return number


@dataclass
class Location:
    """A point in a scan: `coords` is x,y,z mm when `system == 'world'`, z,y,x voxels when 'vox'."""

    filename: str
    coords: tuple[float, float, float]
    system: str
    kind: str = ""
    diameter_mm: float | None = None


def read_ctgan(path: str | Path, system: str = "world") -> list[Location]:
    """CT-GAN table `filename,x,y,z[,type]` (header spaces tolerated). Rows with empty z are skipped.
    In voxel tables x,y,z are column,row,slice indices; `coords` is returned as z,y,x."""
    path = Path(path)
    if system not in ("world", "vox"):
        raise MedfakeError(f"coordinate system must be world or vox, not '{system}'", path)
    rows = _read_rows(path)
    _require(path, rows, ("filename", "x", "y", "z"))
    out = []
    for i, row in enumerate(rows, start=2):
        if row["z"] in ("", "nan", "NaN"):
            continue
        x, y, z = (_float(path, i, row[c], c) for c in ("x", "y", "z"))
        coords = (x, y, z) if system == "world" else (z, y, x)
        out.append(Location(row["filename"], coords, system, row.get("type", "") or row.get("tamper_type", "")))
    return out


def write_ctgan(locations: list[Location], path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "x", "y", "z", "type"])
        for loc in locations:
            x, y, z = loc.coords if loc.system == "world" else loc.coords[::-1]
            writer.writerow([loc.filename, f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", loc.kind])
    return path


def read_luna16(path: str | Path) -> list[Location]:
    path = Path(path)
    rows = _read_rows(path)
    _require(path, rows, LUNA16_COLUMNS)
    out = []
    for i, row in enumerate(rows, start=2):
        xyz = tuple(_float(path, i, row[c], c) for c in ("coordX", "coordY", "coordZ"))
        out.append(Location(row["seriesuid"], xyz, "world", "nodule", _float(path, i, row["diameter_mm"], "diameter_mm")))
    return out


def write_luna16(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LUNA16_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def read_locations(path: str | Path, system: str = "world") -> list[Location]:
    """A CT-GAN table, a LUNA16 annotations file or a manifest, recognised by its header."""
    path = Path(path)
    rows = _read_rows(path)
    header = set(rows[0]) if rows else set()
    if set(LUNA16_COLUMNS) <= header:
        return read_luna16(path)
    if {"world_x", "world_y", "world_z"} <= header:
        return [Location(r.scan, (r.world_x, r.world_y, r.world_z), "world", r.action) for r in read_manifest(path)]
    return read_ctgan(path, system)


@dataclass
class ManifestRow:
    """One tampered location: the ground truth of what was changed where."""

    scan: str
    output: str
    world_x: float
    world_y: float
    world_z: float
    voxel_z: int
    voxel_y: int
    voxel_x: int
    action: str  # inject | remove
    method: str  # ctgan | copy-move | inpaint | ...
    model_id: str
    parameters: str  # JSON text
    time: str  # ISO 8601 UTC
    chosen_by: str = "user"  # user | auto | table


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


def append_manifest(rows: list[ManifestRow], path: str | Path) -> Path:
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    rows = _read_rows(path)
    _require(path, rows, MANIFEST_COLUMNS[:-1])
    out = []
    for i, row in enumerate(rows, start=2):
        values = {}
        for f in fields(ManifestRow):
            raw = row.get(f.name, "user" if f.name == "chosen_by" else "")
            if f.type == "float":
                values[f.name] = _float(path, i, raw, f.name)
            elif f.type == "int":
                values[f.name] = int(_float(path, i, raw, f.name))
            else:
                values[f.name] = raw
        out.append(ManifestRow(**values))
    return out
