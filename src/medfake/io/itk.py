"""MHD/RAW, NRRD and NIfTI through SimpleITK, with exact geometry."""

from __future__ import annotations

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


def scan_from_image(image: sitk.Image, modality: str = "CT", meta: dict | None = None) -> Scan:
    if image.GetDimension() != 3:
        raise MedfakeError(f"expected a 3-D image, got {image.GetDimension()}-D", (meta or {}).get("path"))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedfakeError("multi-component (vector/colour) images are not supported", (meta or {}).get("path"))
    voxels = sitk.GetArrayFromImage(image)
    return Scan(
        voxels=voxels,
        spacing=tuple(image.GetSpacing()[::-1]),
        origin=tuple(image.GetOrigin()),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
        modality=modality,
        meta=dict(meta or {}),
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
    meta = {"format": itk_format(path), "path": str(path)}
    scan = scan_from_image(image, modality or guess_modality(image), meta)
    if np.issubdtype(scan.voxels.dtype, np.floating) and not np.all(np.isfinite(scan.voxels)):
        bad = int(np.count_nonzero(~np.isfinite(scan.voxels)))
        raise MedfakeError(f"{bad} voxels are NaN or infinite", path)
    return scan


def guess_modality(image: sitk.Image) -> str:
    """CT when intensities look like HU (air near -1000), otherwise MR."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return "CT" if stats.GetMinimum() <= -900 else "MR"


def save_itk(scan: Scan, path: Path) -> None:
    sitk.WriteImage(scan_to_image(scan), str(path), useCompression=itk_format(path) != "mhd")
