"""A classical lung nodule candidate detector: the independent judge of injection and removal.

Multi-scale scale-normalised Laplacian-of-Gaussian blob filter inside the lung mask, then a Hessian shape test
that keeps blobs (three strongly negative eigenvalues) and drops tubes (vessels: one eigenvalue near zero),
and a density test (a solid core brighter than its surroundings). No learned weights; training never uses it.

It runs on a grid coarsened in-plane to ~1 mm pixels with all scales in millimetres, so thin and thick
slices are handled alike. A nodule of diameter d peaks at the scale σ = d / (2√3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medfake.scan import Scan

SCALES_MM = (1.5, 2.0, 2.7, 3.5, 4.5, 6.0, 8.0)
MIN_SCORE = 120.0  # minimum scale-normalised LoG response (HU) of a peak
MIN_BLOBNESS = 0.2  # |λ_min| / |λ_max| of the Hessian at the peak; tubes are ~0
MIN_CONTRAST_HU = 200.0
MIN_CORE_HU = -650.0
MAX_CROWDING = 0.2
COARSE_MM = 1.0


@dataclass
class Nodule:
    center_zyx: tuple[int, int, int]
    center_xyz: tuple[float, float, float]  # world mm
    diameter_mm: float
    score: float  # scale-normalised LoG response (HU) × blobness: ranks round dense blobs first
    blobness: float
    core_hu: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["center_zyx"] = [int(v) for v in self.center_zyx]
        d["center_xyz"] = [round(float(v), 2) for v in self.center_xyz]
        for key in ("diameter_mm", "score", "blobness", "core_hu"):
            d[key] = round(float(d[key]), 2)
        return d


def detect_nodules(scan: Scan, lung: np.ndarray | None = None, min_diameter_mm: float = 4.0,
                   max_diameter_mm: float = 30.0, min_score: float = MIN_SCORE, max_count: int = 50) -> list[Nodule]:
    """Nodule candidates inside the lungs, strongest first."""
    if lung is None:
        from medfake.lungmask import lung_mask

        lung = lung_mask(scan)
    step = np.array([1] + [max(1, int(round(COARSE_MM / s))) for s in scan.spacing[1:]])
    spacing = np.asarray(scan.spacing) * step
    inside_full = np.asarray(lung, dtype=bool)
    if not inside_full.any():
        return []
    box = _bounding_box(inside_full, step, margin=4)
    hu = _in_plane_blocks(np.asarray(scan.voxels[box], dtype=np.float32), step, np.mean)
    inside = _in_plane_blocks(inside_full[box], step, np.any)
    offset = np.array([sl.start for sl in box])
    work = np.where(inside, np.clip(hu, -1000.0, 200.0), -1000.0).astype(np.float32)
    scales = [s for s in SCALES_MM if min_diameter_mm / 3.46 * 0.8 <= s <= max_diameter_mm / 3.46 * 1.2]
    smoothed = [ndimage.gaussian_filter(work, [s / sp for sp in spacing]) for s in scales]
    responses = np.stack([-(s ** 2) * laplacian_mm(sm, spacing) for s, sm in zip(scales, smoothed)])
    peaks = (responses >= min_score) & inside[None]
    peaks &= responses == ndimage.maximum_filter(responses, size=3)
    candidates = []
    for k, z, y, x in np.argwhere(peaks):
        nodule = _judge(smoothed[k], work, spacing, (z, y, x), scales[k], float(responses[k, z, y, x]))
        if nodule is None or not min_diameter_mm <= nodule.diameter_mm <= max_diameter_mm:
            continue
        full = np.minimum((np.array([z, y, x]) * step + step // 2) + offset, np.asarray(scan.shape) - 1)
        nodule.center_zyx = tuple(int(v) for v in full)
        nodule.center_xyz = tuple(float(v) for v in scan.voxel_to_world(full))
        candidates.append(nodule)
    found: list[Nodule] = []
    for nodule in sorted(candidates, key=lambda n: -n.score):
        if not _overlaps(nodule, found, scan):
            found.append(nodule)
            if len(found) >= max_count:
                break
    return found


def _bounding_box(mask: np.ndarray, step, margin: int) -> tuple[slice, slice, slice]:
    """Box around the mask (coarse-grid aligned) with `margin` coarse voxels of room."""
    box = []
    for axis, k in enumerate(step):
        other = tuple(i for i in range(3) if i != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(0, (idx[0] // k - margin) * k)
        hi = min(mask.shape[axis], (idx[-1] // k + margin + 1) * k)
        box.append(slice(int(lo), int(hi)))
    return tuple(box)


def laplacian_mm(volume: np.ndarray, spacing) -> np.ndarray:
    """Σ ∂²/∂axis² in mm⁻² (three-point stencil per axis, so anisotropic voxels are weighted right)."""
    out = np.zeros_like(volume)
    for axis, s in enumerate(spacing):
        out += ndimage.correlate1d(volume, np.array([1.0, -2.0, 1.0], dtype=volume.dtype), axis=axis,
                                   mode="nearest") / np.float32(s * s)
    return out


def _judge(smooth, work, spacing, zyx, sigma_mm: float, score: float) -> Nodule | None:
    """Keep a scale-space peak if the Hessian says blob (not tube or sheet) and the core is dense."""
    core_now = smooth[zyx]
    if core_now < MIN_CORE_HU - 250:
        return None
    eig = _hessian_eigenvalues(smooth, spacing, zyx)
    if eig is None or np.any(eig >= 0):
        return None
    blobness = float(np.min(np.abs(eig)) / np.max(np.abs(eig)))
    if blobness < MIN_BLOBNESS:
        return None
    radius = np.sqrt(3.0) * sigma_mm
    core, ring, crowded = _ball_means(work, spacing, zyx, radius)
    if core < MIN_CORE_HU or core - ring < MIN_CONTRAST_HU or crowded > MAX_CROWDING:
        return None
    return Nodule((0, 0, 0), (0.0, 0.0, 0.0), 2 * radius, score * blobness, blobness, core)


def _hessian_eigenvalues(smooth: np.ndarray, spacing, zyx) -> np.ndarray | None:
    """Eigenvalues (mm⁻²) of the Hessian of the smoothed image at one voxel, by central differences."""
    c = np.asarray(zyx)
    if np.any(c < 1) or np.any(c > np.asarray(smooth.shape) - 2):
        return None
    def at(offset):
        return float(smooth[tuple(c + offset)])
    hessian = np.empty((3, 3))
    for i in range(3):
        ei = np.eye(3, dtype=int)[i]
        hessian[i, i] = (at(ei) - 2 * at(0 * ei) + at(-ei)) / spacing[i] ** 2
        for j in range(i + 1, 3):
            ej = np.eye(3, dtype=int)[j]
            mixed = (at(ei + ej) - at(ei - ej) - at(-ei + ej) + at(-ei - ej)) / (4 * spacing[i] * spacing[j])
            hessian[i, j] = hessian[j, i] = mixed
    return np.linalg.eigvalsh(hessian)


def _ball_means(work, spacing, zyx, radius_mm):
    """Mean HU inside the ball of `radius_mm`, mean HU of the shell out to twice the radius, and the share of
    dense (> -500 HU) shell voxels: a nodule sits in air, a vessel crossing or the hilum is crowded."""
    reach = np.ceil(2 * radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.asarray(zyx) - reach, 0)
    hi = np.minimum(np.asarray(zyx) + reach + 1, work.shape)
    patch = work[tuple(slice(a, b) for a, b in zip(lo, hi))]
    grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, zyx, spacing)], indexing="ij")
    d = np.sqrt(sum(g ** 2 for g in grid))
    core = d <= max(radius_mm, 0.6 * np.max(spacing))
    ring = (d > radius_mm * 1.3) & (d <= 2 * radius_mm + np.max(spacing))
    if not core.any() or not ring.any():
        return -1000.0, -1000.0, 1.0
    return float(patch[core].mean()), float(patch[ring].mean()), float(np.mean(patch[ring] > -500.0))


def _overlaps(nodule: Nodule, found: list[Nodule], scan: Scan) -> bool:
    for other in found:
        gap = np.linalg.norm((np.asarray(nodule.center_zyx) - other.center_zyx) * np.asarray(scan.spacing))
        if gap < max(nodule.diameter_mm, other.diameter_mm) / 2 + 2.0:
            return True
    return False


def _in_plane_blocks(volume: np.ndarray, step, reduce) -> np.ndarray:
    """Reduce each ky×kx in-plane block (remainder rows/columns dropped) with `reduce` (np.mean, np.any)."""
    if np.all(step == 1):
        return volume
    z, y, x = volume.shape
    ky, kx = int(step[1]), int(step[2])
    cropped = volume[:, : y - y % ky, : x - x % kx]
    return reduce(cropped.reshape(z, y // ky, ky, x // kx, kx), axis=(2, 4))


def nodule_near(nodules: list[Nodule], scan: Scan, zyx, radius_mm: float = 5.0) -> Nodule | None:
    """The strongest detection whose centre lies within `radius_mm` of a voxel location."""
    spacing = np.asarray(scan.spacing)
    near = [n for n in nodules if np.linalg.norm((np.asarray(n.center_zyx) - np.asarray(zyx)) * spacing) <= radius_mm]
    return max(near, key=lambda n: n.score) if near else None
