"""Read and write scans: `load_scan(path)` and `save_scan(scan, path, format=...)`.

Formats: DICOM series folder or single/multi-frame file, MHD/RAW, NRRD, NIfTI, NPZ (ours). Writes are
atomic (temporary sibling + rename), refuse an existing destination unless `overwrite`, and never
touch the input. DICOM output is always a new derived series (see `medfake.io.dicom_write`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_dir, atomic_file, check_destination
from medfake.io.itk import itk_format, load_itk, save_itk
from medfake.io.npz import load_npz, save_npz
from medfake.scan import Scan

FORMATS = ("dicom", "mhd", "nrrd", "nifti", "npz")
SUFFIX = {"mhd": ".mhd", "nrrd": ".nrrd", "nifti": ".nii.gz", "npz": ".npz"}


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    if path.suffix.lower() in (".raw", ".zraw") and path.with_suffix(".mhd").exists():
        raise MedfakeError(f"this is the pixel file of {path.with_suffix('.mhd').name}; give the .mhd header", path)
    fmt = format_from_name(path)
    if fmt:
        return fmt
    if path.name.lower().endswith(".dcm") or has_dicom_preamble(path) or _is_raw_dicom(path):
        return "dicom"
    raise MedfakeError("unknown format (expected a DICOM folder/file, .mhd, .nrrd, .nii[.gz] or .npz)", path)


def format_from_name(path: Path) -> str | None:
    """The file format its name's suffix names (mhd, nrrd, nifti, npz), or None."""
    return itk_format(path) or ("npz" if path.name.lower().endswith(".npz") else None)


def has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_raw_dicom(path: Path) -> bool:
    """A DICOM data set without the 128-byte preamble (older exports, files named like `IM000123`)."""
    from medfake.io.dicom_header import read_dataset

    return path.stat().st_size > 0 and read_dataset(path, header_only=True, must_be_dicom=False) is not None


def load_scan(path: str | Path, series: str | None = None, modality: str | None = None) -> Scan:
    """Load any supported scan; CT voxels come back in Hounsfield units, z,y,x order.

    Warnings raised while reading (pydicom's complaints about odd values, dropped unreadable elements)
    end up in `scan.meta['warnings']` instead of on stderr. An input that breaks a reader in a way not
    foreseen still ends in a MedfakeError naming it (the original exception is its __cause__)."""
    path = Path(path)
    if not path.exists():
        raise MedfakeError("no such file or folder", path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scan = _load(path, series, modality)
        except MedfakeError:
            raise
        except MemoryError:
            raise MedfakeError("not enough memory to read this scan (are its dimensions corrupt?)", path) from None
        except Exception as exc:
            raise MedfakeError(f"unexpected problem reading this file ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]})", path) from exc
    notes = read_warnings(caught)
    if notes:
        scan.meta["warnings"] = list(scan.meta.get("warnings", [])) + notes
    return scan


def read_warnings(caught: list) -> list[str]:
    """Distinct one-line texts of the warnings a read raised; deprecations are passed on unchanged."""
    notes: list[str] = []
    for record in caught:
        if issubclass(record.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
            continue
        text = " ".join(str(record.message).split())
        text = text.split(" Please see <")[0][:200]
        if text not in notes:
            notes.append(text)
    return notes[:20]


def _load(path: Path, series: str | None, modality: str | None) -> Scan:
    fmt = detect_format(path)
    if fmt == "dicom":
        from medfake.io.dicom import load_dicom

        scan = load_dicom(path, series=series)
    elif path.stat().st_size == 0:
        raise MedfakeError("file is empty", path)
    elif fmt == "npz":
        scan = load_npz(path)
    else:
        return load_itk(path, modality)
    if modality:
        scan.modality = modality
    return scan


def output_format(scan: Scan, requested: str | None, dest: Path | None = None) -> str:
    """The requested format; else the one the destination's suffix names; else the source's; else MHD."""
    if requested not in (None, "same"):
        if requested not in FORMATS:
            raise MedfakeError(f"unknown output format '{requested}' (choose from {', '.join(FORMATS)})", dest)
        return requested
    if dest is not None:
        suffix_format = format_from_name(dest)
        if suffix_format:
            return suffix_format
    source = scan.meta.get("format")
    if dest is not None and dest.suffix and source != "dicom":
        raise MedfakeError(f"cannot tell the output format from '{dest.suffix}' (use .mhd, .nrrd, .nii.gz, .npz "
                           "or --format)", dest)
    return source if source in FORMATS else "mhd"


def output_path(dest: Path, fmt: str) -> Path:
    """Destination with the format's suffix added when the user gave a bare name."""
    named = format_from_name(dest)
    if named and named != fmt:
        raise MedfakeError(f"the file name says {named} but the requested format is {fmt}", dest)
    if fmt == "dicom" or named:
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
    fmt = output_format(scan, format, Path(path))
    dest = output_path(Path(path), fmt)
    refuse_input_overlap(scan, dest)
    if fmt == "dicom":
        from medfake.io.dicom import save_dicom_series

        with atomic_dir(dest, overwrite) as tmp:
            save_dicom_series(scan, tmp, derivation=derivation)
        return dest
    if fmt == "mhd" and dest.suffix.lower() == ".mhd":
        _save_mhd_pair(scan, dest, overwrite)
        return dest
    with atomic_file(dest, overwrite) as tmp:
        save_npz(scan, tmp) if fmt == "npz" else save_itk(scan, tmp)
    return dest


def refuse_input_overlap(scan: Scan, dest: Path) -> None:
    """Never write onto, into or around the input (an --overwrite of a parent would delete it)."""
    if not scan.path:
        return
    source, target = Path(scan.path).resolve(), dest.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise MedfakeError(f"refusing to write onto, into or around the input {source}", dest)


def _save_mhd_pair(scan: Scan, dest: Path, overwrite: bool) -> None:
    """MHD header + RAW pixels: both written under their final names in a temporary sibling folder,
    then moved into place (pixels first, so a header never points at a missing file)."""
    raw = dest.with_suffix(".raw")
    check_destination(dest, overwrite)
    check_destination(raw, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent) as tmp:
        save_itk(scan, Path(tmp) / dest.name)
        os.replace(Path(tmp) / raw.name, raw)
        os.replace(Path(tmp) / dest.name, dest)


__all__ = ["FORMATS", "atomic_dir", "atomic_file", "detect_format", "load_scan", "save_scan", "Scan"]
