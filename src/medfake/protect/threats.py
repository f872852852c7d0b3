"""The threat models a protection is measured against (issue #11): each is `attack(scan, zyx) -> tampered scan`.

- white-/grey-box: a CT-GAN tamper model (`ctgan_attack`): white-box when the protection saw it, grey-box
  when it is the same architecture trained with another seed or other scans;
- black-box: classical copy-move injection and in-paint removal (`classical_attack`);
- benign processing of the protected scan before the attack (`BENIGN`: what a PACS may do) and the adaptive
  attacker's median filter (`ADAPTIVE`), combined with an attack by `before`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from medfake.protect.surrogate import tamper_scan
from medfake.scan import Scan

Attack = Callable[[Scan, tuple], Scan]
CLASSICAL = {"copy-move": "inject", "inpaint": "remove"}


def ctgan_attack(model, seed: int = 1) -> Attack:
    """The tamper model at one site, with a fixed seed for its fresh noise (the same draw on x and x_p)."""
    return lambda scan, zyx: tamper_scan(scan, [zyx], model.action, model, rng=np.random.default_rng(seed))[0]


def classical_attack(method: str, donor: Scan | None = None, donor_zyx=None, seed: int = 1) -> Attack:
    """copy-move (inject; the donor nodule defaults to the strongest one the CAD finds in the scan itself)
    or inpaint (remove)."""
    action = CLASSICAL[method]
    return lambda scan, zyx: tamper_scan(scan, [zyx], action, method=method, donor=donor, donor_zyx=donor_zyx,
                                         rng=np.random.default_rng(seed))[0]


def before(transform: Callable[[Scan], Scan], attack: Attack) -> Attack:
    """The attacker receives the scan after `transform`."""
    return lambda scan, zyx: attack(transform(scan), zyx)


def _like(scan: Scan, values: np.ndarray) -> Scan:
    dtype = scan.voxels.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return scan.with_voxels(values.astype(dtype))


def blur(scan: Scan, sigma_mm: float = 0.5) -> Scan:
    """Gaussian blur σ in mm (per axis in voxels)."""
    return _like(scan, ndimage.gaussian_filter(np.asarray(scan.voxels, np.float32),
                                               [sigma_mm / s for s in scan.spacing]))


def median331(scan: Scan) -> Scan:
    """The adaptive attacker's 3×3×1 median (in-plane 3×3, one slice)."""
    return scan.with_voxels(ndimage.median_filter(np.asarray(scan.voxels), size=(1, 3, 3)))


def resample_roundtrip(scan: Scan, mm: float = 1.0) -> Scan:
    """In-plane resampling to `mm` and back onto the same grid (linear), as a PACS re-slicing would."""
    factors = [1.0, scan.spacing[1] / mm, scan.spacing[2] / mm]
    small = ndimage.zoom(np.asarray(scan.voxels, np.float32), factors, order=1)
    back = ndimage.zoom(small, [a / b for a, b in zip(scan.shape, small.shape)], order=1)
    return _like(scan, back[:scan.shape[0], :scan.shape[1], :scan.shape[2]])


def jpeg2000(scan: Scan, ratio: float = 10.0) -> Scan:
    """Lossy JPEG 2000 per slice at about `ratio`:1 (OpenJPEG through pylibjpeg-openjpeg)."""
    from openjpeg import decode, encode

    v = np.asarray(scan.voxels)
    out = np.stack([decode(encode(np.ascontiguousarray(s), compression_ratios=[ratio])) for s in v])
    return scan.with_voxels(out.astype(v.dtype))


def dicom_resave(scan: Scan) -> Scan:
    """Written as a DICOM series and read back (rescale slope/intercept, int16 storage)."""
    from medfake.io import load_scan, save_scan

    with tempfile.TemporaryDirectory(prefix="medfake_resave_") as folder:
        path = save_scan(scan, Path(folder) / "resave", format="dicom", overwrite=True)
        loaded = load_scan(path)
        return loaded.with_voxels(np.array(loaded.voxels))


BENIGN = {"dicom-resave": dicom_resave, "jpeg2000-10to1": jpeg2000, "blur-0.5mm": blur,
          "resample-1mm": resample_roundtrip}
ADAPTIVE = {"median-3x3x1": median331}
TRANSFORMS = {**BENIGN, **ADAPTIVE}


def transform_kind(name: str) -> str:
    return "benign" if name in BENIGN else "adaptive"
