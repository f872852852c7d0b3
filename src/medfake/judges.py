"""Judges of tampering that share no code with the tamperer or the CAD: is there a nodule at this place,
and does the tampered place carry the scan's texture and edges?

- `core_shell`: a plain HU rule. A nodule is present when the solid core (a sphere of `core_mm`) is dense and
  much brighter than a shell around it, and the dense blob connected to the centre is compact (not a vessel
  running through: its extent along its longest axis stays below `max_length_mm`).
- `noise_power`: the radially averaged noise power spectrum (NPS) of a region, after removing a fitted
  quadratic surface per slice (a detrend the tamperer never uses), and the log-spectral distance between two
  regions' NPS.
- `seam_profile`: the gradient energy on thin shells across the whole blend band and at the hole's face,
  tampered over original, with the shell weights of nothing but geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medfake.scan import Scan


@dataclass(frozen=True)
class CoreShellVerdict:
    present: bool
    core_hu: float
    shell_hu: float
    length_mm: float  # longest extent of the dense blob at the centre (0 when there is none)

    def to_dict(self) -> dict:
        return asdict(self)


def ball_offsets(spacing, radius_mm: float, inner_mm: float = 0.0) -> np.ndarray:
    """Voxel offsets (N×3, z,y,x) of a sphere (or a shell from inner_mm) in mm."""
    half = np.ceil(radius_mm / np.asarray(spacing)).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij"), -1).reshape(-1, 3)
    r = np.linalg.norm(grid * np.asarray(spacing), axis=1)
    return grid[(r <= radius_mm) & (r >= inner_mm)]


def _values(scan: Scan, zyx, offsets) -> np.ndarray:
    points = np.asarray(zyx, dtype=int) + offsets
    inside = np.all((points >= 0) & (points < np.asarray(scan.shape)), axis=1)
    return scan.voxels[tuple(points[inside].T)].astype(np.float32)


def core_shell(scan: Scan, zyx, core_mm: float = 2.5, shell_mm: tuple[float, float] = (9.0, 13.0),
               min_core_hu: float = -450.0, min_contrast_hu: float = 350.0, blob_hu: float = -300.0,
               max_length_mm: float = 35.0) -> CoreShellVerdict:
    core = float(np.mean(_values(scan, zyx, ball_offsets(scan.spacing, core_mm))))
    shell = float(np.median(_values(scan, zyx, ball_offsets(scan.spacing, shell_mm[1], shell_mm[0]))))
    length = dense_length(scan, zyx, blob_hu)
    present = core >= min_core_hu and core - shell >= min_contrast_hu and 0 < length <= max_length_mm
    return CoreShellVerdict(bool(present), core, shell, length)


def dense_length(scan: Scan, zyx, threshold_hu: float, reach_mm: float = 25.0, thick_fraction: float = 0.7) -> float:
    """Longest extent (mm, along the principal axis) of the dense component touching the centre voxel,
    within `reach_mm`, after an in-plane opening of ~1.5 mm that cuts thin vessel attachments; a blob that
    reaches the edge of that box (a vessel, the chest wall) measures 2·reach. The blob is the component's
    core (voxels at least `thick_fraction` as deep below its surface as the centre) grown back by that depth:
    a nodule touching a thinner vessel stays compact, a vessel through the centre stays as long as it is."""
    half = np.ceil(reach_mm / np.asarray(scan.spacing)).astype(int)
    crop = scan.crop(zyx, 2 * half + 1, pad=-1000.0)
    side = [max(2, int(round(1.5 / s))) for s in crop.spacing[1:]]
    dense = ndimage.binary_opening(crop.voxels > threshold_hu, structure=np.ones((1, *side), bool))
    if not dense[tuple(half)]:
        return 0.0
    depth = ndimage.distance_transform_edt(dense, sampling=crop.spacing)
    centre_depth = depth[tuple(half)]
    labels, _ = ndimage.label(dense & (depth >= thick_fraction * centre_depth))
    core = labels == labels[tuple(half)]
    reach_of_core = ndimage.distance_transform_edt(~core, sampling=crop.spacing)  # the blob = the core grown back
    blob = dense & (reach_of_core <= thick_fraction * centre_depth + max(crop.spacing))
    voxels = np.argwhere(blob)
    if len(voxels) < 2:
        return float(min(crop.spacing))
    if np.any(voxels == 0) or np.any(voxels == np.asarray(crop.shape) - 1):
        return 2 * reach_mm
    points = voxels * np.asarray(crop.spacing)
    centred = points - points.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    return float(np.ptp(along) + np.mean(crop.spacing))


# --- texture: noise power spectra -------------------------------------------------------------------------
def detrended_slices(voxels: np.ndarray) -> np.ndarray:
    """Each axial slice minus its least-squares quadratic surface."""
    n_y, n_x = voxels.shape[1:]
    yy, xx = np.meshgrid(np.linspace(-1, 1, n_y), np.linspace(-1, 1, n_x), indexing="ij")
    basis = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1).reshape(-1, 6)
    flat = voxels.reshape(len(voxels), -1).astype(np.float64).T
    coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)
    return (flat - basis @ coef).T.reshape(voxels.shape)


def noise_power(scan: Scan, zyx, size_mm: float = 16.0, slices: int = 3, bins: int = 8) -> np.ndarray:
    """Radially averaged 2-D NPS (HU² mm², `bins` rings from 0 to Nyquist) of a square ROI of `size_mm`
    around the site, averaged over `slices` axial slices."""
    side = max(8, int(round(size_mm / scan.spacing[1])))
    crop = scan.crop(zyx, (slices, side, side)).voxels
    residual = detrended_slices(crop)
    window = np.hanning(side)[:, None] * np.hanning(side)[None]
    spectrum = np.mean(np.abs(np.fft.fft2(residual * window)) ** 2, axis=0)
    spectrum *= scan.spacing[1] * scan.spacing[2] / np.sum(window ** 2)
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij")
    radius = np.hypot(fy, fx) / 0.5
    ring = np.minimum((radius * bins).astype(int), bins)
    sums = np.bincount(ring.ravel(), spectrum.ravel(), bins + 1)[:bins]
    counts = np.bincount(ring.ravel(), minlength=bins + 1)[:bins]
    return sums / np.maximum(counts, 1)


def spectral_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of log NPS (natural log units; 0 = same spectrum, 0.69 ≈ a factor 2)."""
    return float(np.sqrt(np.mean((np.log(a + 1e-6) - np.log(b + 1e-6)) ** 2)))


# --- seams --------------------------------------------------------------------------------------------------
def gradient_energy(voxels: np.ndarray, spacing) -> np.ndarray:
    """Squared 3-D gradient magnitude (HU/mm)²."""
    grads = np.gradient(voxels.astype(np.float32), *spacing)
    return sum(g * g for g in grads)


def seam_profile(original: Scan, tampered: Scan, zyx, radii_mm, width_mm: float = 1.0,
                 calm_fraction: float = 0.75) -> np.ndarray:
    """Mean gradient energy of `tampered` over `original` on shells [r − width/2, r + width/2] around the
    site, one ratio per radius (1 = the edit left no edge there). Only the shell's calmest voxels in the
    original (the lower `calm_fraction` of its gradient energy) count: there a seam stands out, whereas
    vessel walls, a thousand times brighter in gradient, would drown it."""
    reach = max(radii_mm) + width_mm + 2 * max(original.spacing)
    half = np.ceil(reach / np.asarray(original.spacing)).astype(int)
    before = original.crop(zyx, 2 * half + 1)
    after = tampered.crop(zyx, 2 * half + 1)
    energy_before = gradient_energy(before.voxels, before.spacing)
    energy_after = gradient_energy(after.voxels, after.spacing)
    grid = np.meshgrid(*(np.arange(-h, h + 1) * s for h, s in zip(half, original.spacing)), indexing="ij")
    r = np.sqrt(sum(g * g for g in grid))
    ratios = []
    for radius in radii_mm:
        shell = np.abs(r - radius) <= width_mm / 2
        calm = shell & (energy_before <= np.quantile(energy_before[shell], calm_fraction))
        ratios.append(float(energy_after[calm].mean() / max(energy_before[calm].mean(), 1e-6)))
    return np.asarray(ratios)
