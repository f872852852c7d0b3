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

from medfake.scan import Scan, mask_box

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
    work = _in_plane_blocks(np.asarray(scan.voxels[box]), step, np.mean)  # float32, a new array
    inside = _in_plane_blocks(inside_full[box], step, np.any)
    offset = np.array([sl.start for sl in box])
    np.clip(work, -1000.0, 200.0, out=work)  # in place: the box in float32 is the CAD's unit of memory
    work[~inside] = -1000.0
    scales = [s for s in SCALES_MM if min_diameter_mm / 3.46 * 0.8 <= s <= max_diameter_mm / 3.46 * 1.2]
    candidates, balls = [], {}
    for k, smooth, response, peaks in _scale_space_peaks(work, inside, spacing, scales, min_score):
        for nodule, (z, y, x) in _judge_all(smooth, response, work, spacing, scales[k], peaks, balls):
            if not min_diameter_mm <= nodule.diameter_mm <= max_diameter_mm:
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
    for axis, (k, tight) in enumerate(zip(step, mask_box(mask))):
        lo = max(0, (tight.start // k - margin) * k)
        hi = min(mask.shape[axis], ((tight.stop - 1) // k + margin + 1) * k)
        box.append(slice(int(lo), int(hi)))
    return tuple(box)


def laplacian_mm(volume: np.ndarray, spacing, factor: float = 1.0) -> np.ndarray:
    """factor · Σ ∂²/∂axis² in mm⁻² (three-point stencil per axis, so anisotropic voxels are weighted right);
    the factor and 1/spacing² ride in the stencils: two passes over the volume per axis."""
    out, term = np.empty_like(volume), np.empty_like(volume)
    for axis, s in enumerate(spacing):
        stencil = np.array([1.0, -2.0, 1.0]) * (factor / (s * s))
        ndimage.correlate1d(volume, stencil.astype(volume.dtype), axis=axis, output=out if axis == 0 else term,
                            mode="nearest")
        if axis:
            out += term
    return out


def _scale_space_peaks(work, inside, spacing, scales, min_score):
    """Per scale, in order: (k, smoothed image, scale-normalised LoG response, its peaks (N, 3)): points inside
    with a response ≥ min_score that are maxima of the whole (scale, z, y, x) stack, holding three scales at a time."""
    levels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    planar = {-1: work}  # smoothed in-plane only, the last scale's

    def level(k):
        if k not in levels:
            # in-plane, each scale adds the missing variance to the previous one (shorter kernels); along z
            # each scale smooths directly: thick slices give sub-voxel σ, where sampled kernels do not add up
            extra = np.sqrt(scales[k] ** 2 - (scales[k - 1] ** 2 if k else 0.0))
            planar[k] = ndimage.gaussian_filter(planar.pop(k - 1), [0.0, extra / spacing[1], extra / spacing[2]])
            smooth = ndimage.gaussian_filter1d(planar[k], scales[k] / spacing[0], axis=0)
            response = laplacian_mm(smooth, spacing, -(scales[k] ** 2))
            levels[k] = (smooth, response)
        return levels[k]

    for k in range(len(scales)):
        for old in [j for j in levels if j < k - 1]:
            del levels[old]
        near = list(range(max(k - 1, 0), min(k + 2, len(scales))))
        smooth, response = level(k)
        responses = [level(j)[1] for j in near]
        yield k, smooth, response, local_maxima(responses, near.index(k), (response >= min_score) & inside)


def local_maxima(levels: list[np.ndarray], centre: int, where: np.ndarray) -> np.ndarray:
    """The `where` points (N, 3, `np.argwhere` order) of level `centre` that are ≥ all their 3⁴ neighbours in the
    stack of `levels`: the points where `stack == ndimage.maximum_filter(stack, size=3)` (its reflected border
    repeats the edge value, as clipping does), at the cost of the thresholded points instead of the stack."""
    points = np.argwhere(where)
    upper = np.asarray(where.shape) - 1
    value = levels[centre][tuple(points.T)]
    for offset in np.ndindex(3, 3, 3, 3):  # each test drops most points: the later ones are cheap
        shift = np.asarray(offset[1:]) - 1
        other = min(max(centre + offset[0] - 1, 0), len(levels) - 1)
        if other == centre and not shift.any():
            continue
        keep = value >= levels[other][tuple(np.clip(points + shift, 0, upper).T)]
        points, value = points[keep], value[keep]
    return points


def _judge_all(smooth, response, work, spacing, sigma_mm, points, balls: dict):
    """`(nodule, point)` for the peaks of one scale that are blobs (Hessian) with a dense core standing out of
    its surroundings, in the order of `points`: the cheap tests on all peaks at once, the ball means on the few
    survivors."""
    core_now = smooth[tuple(points.T)]
    interior = np.all((points >= 1) & (points <= np.asarray(smooth.shape) - 2), axis=1)
    alive = (core_now >= MIN_CORE_HU - 250) & interior
    eig = np.ones((len(points), 3))
    if alive.any():
        eig[alive] = _hessian_eigenvalues(smooth, spacing, points[alive])
    alive &= np.all(eig < 0, axis=1)
    magnitude = np.abs(eig)
    blobness = np.min(magnitude, axis=1) / np.max(magnitude, axis=1)
    alive &= blobness >= MIN_BLOBNESS
    radius = np.sqrt(3.0) * sigma_mm
    kept = []
    for point, blob in zip(points[alive], blobness[alive]):
        core, ring, crowded = _ball_means(work, spacing, tuple(point), radius, balls)
        if core < MIN_CORE_HU or core - ring < MIN_CONTRAST_HU or crowded > MAX_CROWDING:
            continue
        score = float(response[tuple(point)])
        kept.append((Nodule((0, 0, 0), (0.0, 0.0, 0.0), 2 * radius, score * float(blob), float(blob), core), point))
    return kept


def _hessian_eigenvalues(smooth: np.ndarray, spacing, points: np.ndarray) -> np.ndarray:
    """Eigenvalues (mm⁻², ascending) of the Hessian of the smoothed image at interior voxels (N, 3), by central
    differences in float64."""
    def at(offset):
        return smooth[tuple((points + offset).T)].astype(np.float64)

    hessian = np.empty((len(points), 3, 3))
    unit = np.eye(3, dtype=int)
    for i in range(3):
        ei = unit[i]
        hessian[:, i, i] = (at(ei) - 2 * at(0 * ei) + at(-ei)) / spacing[i] ** 2
        for j in range(i + 1, 3):
            ej = unit[j]
            mixed = (at(ei + ej) - at(ei - ej) - at(-ei + ej) + at(-ei - ej)) / (4 * spacing[i] * spacing[j])
            hessian[:, i, j] = hessian[:, j, i] = mixed
    return np.linalg.eigvalsh(hessian)


def _ball_means(work, spacing, zyx, radius_mm, cache: dict | None = None):
    """Mean HU inside the ball of `radius_mm`, mean HU of the shell out to twice the radius, and the share of
    dense (> -500 HU) shell voxels: a nodule sits in air, a vessel crossing or the hilum is crowded."""
    reach = np.ceil(2 * radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.asarray(zyx) - reach, 0)
    hi = np.minimum(np.asarray(zyx) + reach + 1, work.shape)
    patch = work[tuple(slice(a, b) for a, b in zip(lo, hi))]
    core, ring = _ball_masks(spacing, radius_mm, reach, {} if cache is None else cache)
    window = tuple(slice(a - c + r, b - c + r) for a, b, c, r in zip(lo, hi, zyx, reach))
    core, ring = core[window], ring[window]
    if not core.any() or not ring.any():
        return -1000.0, -1000.0, 1.0
    return float(patch[core].mean()), float(patch[ring].mean()), float(np.mean(patch[ring] > -500.0))


def _ball_masks(spacing, radius_mm, reach, cache: dict):
    """Core ball and shell around a voxel, over the whole ±reach box (cropped by the caller at the borders)."""
    key = (radius_mm, tuple(reach))
    if key not in cache:
        grid = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(reach, spacing)], indexing="ij")
        d = np.sqrt(sum(g ** 2 for g in grid))
        cache[key] = (d <= max(radius_mm, 0.6 * np.max(spacing)),
                      (d > radius_mm * 1.3) & (d <= 2 * radius_mm + np.max(spacing)))
    return cache[key]


def _overlaps(nodule: Nodule, found: list[Nodule], scan: Scan) -> bool:
    for other in found:
        gap = np.linalg.norm((np.asarray(nodule.center_zyx) - other.center_zyx) * np.asarray(scan.spacing))
        if gap < max(nodule.diameter_mm, other.diameter_mm) / 2 + 2.0:
            return True
    return False


def _in_plane_blocks(volume: np.ndarray, step, reduce) -> np.ndarray:
    """Reduce each ky×kx in-plane block (remainder rows/columns dropped) with `reduce` (np.mean: float32, np.any)."""
    if np.all(step == 1):
        return volume.astype(np.float32) if reduce is np.mean else volume
    z, y, x = volume.shape
    ky, kx = int(step[1]), int(step[2])
    cropped = volume[:, : y - y % ky, : x - x % kx]
    if reduce is np.mean and np.issubdtype(cropped.dtype, np.integer) and cropped.dtype.itemsize <= 2 and ky * kx <= 256:
        # integer HU: float32 sums of the strided views are exact, so this is numpy's float32 mean bit for bit
        # (same division by an intp count) without a float copy of the crop
        total = np.zeros((z, y // ky, x // kx), np.float32)
        for dy in range(ky):
            for dx in range(kx):
                total += cropped[:, dy::ky, dx::kx]
        return np.true_divide(total, np.intp(ky * kx), out=total, casting="unsafe")
    if reduce is np.mean:
        cropped = np.asarray(cropped, dtype=np.float32)
    return reduce(cropped.reshape(z, y // ky, ky, x // kx, kx), axis=(2, 4))


def nodule_near(nodules: list[Nodule], scan: Scan, zyx, radius_mm: float = 5.0) -> Nodule | None:
    """The strongest detection whose centre lies within `radius_mm` of a voxel location."""
    spacing = np.asarray(scan.spacing)
    near = [n for n in nodules if np.linalg.norm((np.asarray(n.center_zyx) - np.asarray(zyx)) * spacing) <= radius_mm]
    return max(near, key=lambda n: n.score) if near else None
