"""Finding scans and their locations: scan folders, list files, table rows that name a scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io import has_dicom_preamble
from medfake.io.tables import Location
from medfake.scan import Scan

SCAN_SUFFIXES = (".nii.gz", ".mhd", ".nrrd", ".nii", ".npz", ".dcm")


def scan_paths(spec) -> list[Path]:
    """Scans from a folder (its scan files and DICOM subfolders), a text file listing paths, or a list."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise MedfakeError("no such scan, folder or list", item)
        if item.is_file() and item.suffix.lower() in (".txt", ".lst"):
            out += [Path(line.strip()) if Path(line.strip()).is_absolute() else item.parent / line.strip()
                    for line in item.read_text().splitlines() if line.strip() and not line.startswith("#")]
        elif item.is_dir() and not _is_dicom_folder(item):
            out += sorted(p for p in item.iterdir() if _looks_like_scan(p))
        else:
            out.append(item)
    if not out:
        raise MedfakeError("no scans found", items[0] if items else None)
    return out


def _is_dicom_folder(path: Path) -> bool:
    return any(p.is_file() and (p.suffix.lower() == ".dcm" or _has_preamble(p)) for p in list(path.iterdir())[:5])


def _has_preamble(path: Path) -> bool:
    try:
        return has_dicom_preamble(path)
    except OSError:  # an unreadable file in a folder of scans is not a DICOM series
        return False


def _looks_like_scan(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return _is_dicom_folder(path)
    return name.endswith(SCAN_SUFFIXES) and not scan_key(path).lower().endswith(("label", "mask", "seg"))


def scan_key(path: Path) -> str:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def locations_for(scan_path: Path, scan: Scan, table: list[Location]) -> list[Location]:
    """Table rows naming this scan: same stem, or the scan's stem starts with `<name>_` (lung1 → lung1_image),
    or the DICOM series UID."""
    key = scan_key(scan_path)
    uid = str(scan.meta.get("series_uid", scan.meta.get("SeriesInstanceUID", "")))
    def matches(name: str) -> bool:
        name_key = scan_key(Path(name))
        return name_key == key or key.startswith(name_key + "_") or (uid and name_key == uid)
    return [loc for loc in table if matches(loc.filename)]


def location_voxel(scan: Scan, loc: Location) -> tuple[int, int, int]:
    zyx = scan.world_to_continuous(loc.coords) if loc.system == "world" else np.asarray(loc.coords, float)
    return tuple(int(v) for v in scan.require_inside(zyx, f"{loc.filename} location"))
