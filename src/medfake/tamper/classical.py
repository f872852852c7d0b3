"""Classical tampering that no detector is trained on: copy-move injection and in-painting removal.

- `copy_move_inject`: a real nodule is cut from a donor scan (resampled to the target's spacing, randomly
  mirrored) and blended in with a soft 3-D weight; the blend keeps the brighter of donor and target
  ("lighten"), so the target's own parenchyma, vessels and noise stay around the pasted nodule.
- `inpaint_remove`: the nodule (an ellipsoid of the given diameter plus a margin) is filled slice by slice
  by biharmonic in-painting from the surrounding tissue, then given fresh noise matched to the local
  scanner noise, and blended with a soft edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.restoration import inpaint_biharmonic

from medfake.scan import Scan, cube_bounds, overlap
from medfake.stats import robust_sigma
from medfake.tamper.blend import radial_weight

NODULE_HU = -500.0  # nodule voxels are denser than this
MAX_NODULE_RADIUS_MM = 15.0
EDGE_MM = 3.0  # width of the soft blend edge
MARGIN_MM = 2.0  # removal region beyond the nodule radius


def _offsets_mm(radius_mm: float, spacing) -> tuple[np.ndarray, list[np.ndarray]]:
    """Odd shape (z,y,x voxels) of a block covering ±radius_mm around a voxel, and its mm offsets per axis."""
    half = np.array([int(np.ceil(radius_mm / s)) for s in spacing])
    return 2 * half + 1, [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]


def _distance_mm(axes_mm: list[np.ndarray]) -> np.ndarray:
    z, y, x = np.meshgrid(*axes_mm, indexing="ij")
    return np.sqrt(z ** 2 + y ** 2 + x ** 2)


def nodule_radius_mm(scan: Scan, center_zyx) -> float:
    """Equivalent-sphere radius of the dense component at `center` (voxels > NODULE_HU within 15 mm)."""
    shape, axes_mm = _offsets_mm(MAX_NODULE_RADIUS_MM, scan.spacing)
    block = scan.crop(center_zyx, shape, pad=NODULE_HU)  # beyond the scan: not dense
    dense = (block.voxels > NODULE_HU) & (_distance_mm(axes_mm) <= MAX_NODULE_RADIUS_MM)
    labels, _ = ndimage.label(dense)
    label = labels[tuple(shape // 2)]
    if label == 0:
        return 4.0
    volume_mm3 = np.count_nonzero(labels == label) * float(np.prod(scan.spacing))
    return float(np.clip((3 * volume_mm3 / (4 * np.pi)) ** (1 / 3), 2.0, MAX_NODULE_RADIUS_MM))


def copy_move_inject(scan: Scan, center_zyx, donor: Scan, donor_zyx, rng: np.random.Generator) -> np.ndarray:
    """Copy the donor's nodule at `donor_zyx` to `center_zyx` of `scan`; returns the new float32 HU voxels."""
    center = scan.require_inside(center_zyx, "injection location")
    donor_center = donor.require_inside(donor_zyx, "donor nodule location")
    radius = nodule_radius_mm(donor, donor_center)
    outer = radius + EDGE_MM
    shape, axes_mm = _offsets_mm(outer, scan.spacing)
    flips = rng.random(2) < 0.5
    coords = np.meshgrid(*[c + (-m if f else m) / s for c, m, s, f in
                           zip(donor_center, axes_mm, donor.spacing, (False, *flips))], indexing="ij")
    content = ndimage.map_coordinates(np.asarray(donor.voxels, np.float32), coords, order=1, mode="nearest")
    weight = radial_weight(_distance_mm(axes_mm), radius, outer)
    canvas = scan.with_voxels(np.asarray(scan.voxels, dtype=np.float32))
    target = canvas.crop(center, shape)
    return canvas.paste(target.with_voxels(np.maximum(content, target.voxels)), weight).voxels


def inpaint_remove(scan: Scan, center_zyx, diameter_mm: float) -> np.ndarray:
    """Remove the nodule of `diameter_mm` at `center_zyx` by biharmonic in-painting plus matched noise;
    returns the new float32 HU voxels."""
    center = scan.require_inside(center_zyx, "removal location")
    inner = diameter_mm / 2 + MARGIN_MM
    outer = inner + EDGE_MM
    shape, axes_mm = _offsets_mm(outer + 4 * max(scan.spacing[1:]), scan.spacing)
    start, stop = cube_bounds(center, shape)
    vol, cube = overlap(start, stop, scan.shape)  # clipped at the border: in-painting must not see padding
    out = np.asarray(scan.voxels, dtype=np.float32).copy()
    block = out[vol]
    distance = _distance_mm(axes_mm)[cube]
    hole = distance <= outer
    filled = block.copy()
    for k in range(block.shape[0]):
        if hole[k].any():
            filled[k] = inpaint_biharmonic(block[k], hole[k])
    sigma = _local_noise_hu(block, ~hole & (block < NODULE_HU), scan.spacing)
    seed = int(np.sum(center * np.array([1_000_003, 1009, 1]))) % (2 ** 32)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(block.shape), (0, 0.7, 0.7))
    noise *= sigma / max(float(noise.std()), 1e-6)
    weight = radial_weight(distance, inner, outer)
    out[vol] = weight * (filled + noise) + (1 - weight) * block
    return out


def _local_noise_hu(block: np.ndarray, where: np.ndarray, spacing) -> float:
    """Robust std of the high-pass residual over `where` (parenchyma around the hole); 20 HU if too few voxels."""
    residual = block - ndimage.gaussian_filter(block, [0] + [1.5 / s for s in spacing[1:]])
    values = residual[where]
    if values.size < 50:
        return 20.0
    return robust_sigma(values)
