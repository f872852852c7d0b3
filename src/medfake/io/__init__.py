"""Read and write scans: `load_scan(path)` and `save_scan(scan, path, format=...)`.

Formats: DICOM series folder or single/multi-frame file, MHD/RAW, NRRD, NIfTI, NPZ (ours).
"""

from __future__ import annotations

from pathlib import Path

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_dir, atomic_file
from medfake.io.itk import itk_format, load_itk, save_itk
from medfake.io.npz import load_npz, save_npz
from medfake.scan import Scan

FORMATS = ("dicom", "mhd", "nrrd", "nifti", "npz")
SUFFIX = {"mhd": ".mhd", "nrrd": ".nrrd", "nifti": ".nii.gz", "npz": ".npz"}


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    fmt = itk_format(path)
    if fmt:
        return fmt
    if path.name.lower().endswith(".npz"):
        return "npz"
    if path.name.lower().endswith(".dcm") or _has_dicom_preamble(path):
        return "dicom"
    raise MedfakeError("unknown format (expected a DICOM folder/file, .mhd, .nrrd, .nii[.gz] or .npz)", path)


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def load_scan(path: str | Path, series: str | None = None, modality: str | None = None) -> Scan:
    """Load any supported scan; CT voxels come back in Hounsfield units, z,y,x order."""
    path = Path(path)
    if not path.exists():
        raise MedfakeError("no such file or folder", path)
    fmt = detect_format(path)
    if fmt == "dicom":
        from medfake.io.dicom import load_dicom

        return load_dicom(path, series=series)
    if path.is_file() and path.stat().st_size == 0:
        raise MedfakeError("file is empty", path)
    if fmt == "npz":
        return load_npz(path)
    return load_itk(path, modality)


def output_format(scan: Scan, requested: str | None) -> str:
    """`same` / None keeps the source format when it can be written, otherwise NPZ-free default MHD."""
    if requested in (None, "same"):
        source = scan.meta.get("format")
        return source if source in FORMATS else "mhd"
    if requested not in FORMATS:
        raise MedfakeError(f"unknown output format '{requested}' (choose from {', '.join(FORMATS)})")
    return requested


def output_path(dest: Path, fmt: str) -> Path:
    """Destination with the format's suffix added when the user gave a bare name."""
    if fmt == "dicom" or itk_format(dest) or dest.name.lower().endswith(".npz"):
        return dest
    return dest.with_name(dest.name + SUFFIX[fmt])


def save_scan(
    scan: Scan,
    path: str | Path,
    format: str | None = None,
    overwrite: bool = False,
    derivation: str | None = None,
) -> Path:
    """Write `scan` atomically. DICOM output is a series folder; `derivation` marks it DERIVED."""
    fmt = output_format(scan, format)
    dest = output_path(Path(path), fmt)
    if scan.meta.get("path") and Path(scan.meta["path"]).resolve() == dest.resolve():
        raise MedfakeError("refusing to overwrite the input scan", dest)
    if fmt == "dicom":
        from medfake.io.dicom import save_dicom_series

        with atomic_dir(dest, overwrite) as tmp:
            save_dicom_series(scan, tmp, derivation=derivation)
        return dest
    with atomic_file(dest, overwrite) as tmp:
        save_npz(scan, tmp) if fmt == "npz" else save_itk(scan, tmp)
    if fmt == "mhd":
        _move_raw_companion(dest)
    return dest


def _move_raw_companion(dest: Path) -> None:
    """SimpleITK names the .raw after the temporary .mhd; rename it and fix the header's reference."""
    header = dest.read_text()
    lines = header.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ElementDataFile"):
            raw_name = line.split("=", 1)[1].strip()
            new_raw = dest.with_suffix(".zraw" if raw_name.endswith(".zraw") else ".raw")
            (dest.parent / raw_name).replace(new_raw)
            lines[i] = f"ElementDataFile = {new_raw.name}"
    dest.write_text("\n".join(lines) + "\n")


__all__ = ["FORMATS", "atomic_dir", "atomic_file", "detect_format", "load_scan", "save_scan", "Scan"]
