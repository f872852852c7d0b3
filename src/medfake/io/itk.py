"""MHD/RAW, NRRD and NIfTI through SimpleITK, with exact geometry."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medfake.errors import MedfakeError
from medfake.scan import Scan

ITK_SUFFIXES = {".mhd": "mhd", ".mha": "mhd", ".nrrd": "nrrd", ".nhdr": "nrrd", ".nii": "nifti", ".nii.gz": "nifti"}


def itk_format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, fmt in ITK_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def scan_from_image(image: sitk.Image, modality: str = "CT", meta: dict | None = None,
                    path: str | None = None) -> Scan:
    if image.GetDimension() != 3:
        raise MedfakeError(f"expected a 3-D image, got {image.GetDimension()}-D", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedfakeError("multi-component (vector/colour) images are not supported", path)
    voxels = sitk.GetArrayFromImage(image)
    return Scan(
        voxels=voxels,
        spacing=tuple(image.GetSpacing()[::-1]),
        origin=tuple(image.GetOrigin()),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
        modality=modality,
        meta=dict(meta or {}),
        path=path,
    )


def scan_to_image(scan: Scan) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(scan.voxels))
    image.SetSpacing(tuple(float(s) for s in scan.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in scan.origin))
    image.SetDirection(tuple(float(d) for d in scan.direction.ravel()))
    return image


def load_itk(path: Path, modality: str | None = None) -> Scan:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "ERROR" in line or "rror" in line), "unreadable image")
        raise MedfakeError(f"cannot read as {itk_format(path)}: {detail.strip()[:160]}", path) from None
    meta = {"format": itk_format(path)}
    scan = scan_from_image(image, modality or guess_modality(image), meta, str(path))
    bad = int(np.count_nonzero(~np.isfinite(scan.voxels))) if np.issubdtype(scan.voxels.dtype, np.floating) else 0
    if meta["format"] == "nifti":
        bad = max(bad, nifti_nonfinite_count(path))
    if bad:
        raise MedfakeError(f"{bad} voxels are NaN or infinite", path)
    return scan


NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating-point voxels


def nifti_nonfinite_count(path: Path) -> int:
    """NaN/inf voxels in a NIfTI-1/2 file (ITK's reader silently turns NaN into 0, so look at the file)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    for order in "<>":
        size = struct.unpack(order + "i", data[:4])[0]
        if size == 348:
            datatype = struct.unpack(order + "h", data[70:72])[0]
            offset = int(struct.unpack(order + "f", data[108:112])[0])
            break
        if size == 540:
            datatype = struct.unpack(order + "h", data[12:14])[0]
            offset = int(struct.unpack(order + "q", data[168:176])[0])
            break
    else:
        return 0
    if datatype not in NIFTI_FLOATS:
        return 0
    dtype = np.dtype(order + NIFTI_FLOATS[datatype])
    usable = (len(data) - offset) // dtype.itemsize * dtype.itemsize
    values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize, offset=offset)
    return int(np.count_nonzero(~np.isfinite(values)))


def guess_modality(image: sitk.Image) -> str:
    """CT when intensities look like HU (air near -1000), otherwise MR."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return "CT" if stats.GetMinimum() <= -900 else "MR"


def save_itk(scan: Scan, path: Path) -> None:
    sitk.WriteImage(scan_to_image(scan), str(path), useCompression=itk_format(path) != "mhd")
