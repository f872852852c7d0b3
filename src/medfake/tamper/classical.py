"""Classical tampering that no detector is trained on: copy-move injection and in-painting removal.

- `copy_move_inject`: a real nodule is cut from a donor scan (resampled to the target's spacing, randomly
  mirrored) and blended in with a soft 3-D weight; the blend keeps the brighter of donor and target
  ("lighten"), so the target's own parenchyma, vessels and noise stay around the pasted nodule.
- `inpaint_remove`: the nodule (an ellipsoid of the given diameter plus a margin) is filled slice by slice
  by biharmonic in-painting from the surrounding tissue, then given fresh noise matched to the local
  scanner noise, and blended with a soft edge.

Both return the whole volume as float32; the pipeline calls their `*_patch` forms, which return only the
changed box (volume slices, float32 values) and read the current voxels through `read(slices)`, so
tampering never holds a float copy of the volume.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from medfake.scan import Scan, cube_bounds, overlap
from medfake.stats import robust_sigma
from medfake.tamper.blend import radial_weight

NODULE_HU = -500.0  # nodule voxels are denser than this
MAX_NODULE_RADIUS_MM = 15.0
EDGE_MM = 3.0  # width of the soft blend edge
MARGIN_MM = 2.0  # removal region beyond the nodule radius

Region = tuple[slice, slice, slice]
Reader = Callable[[Region], np.ndarray]  # float32 copy of the current voxels in a box of the volume


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


def float_reader(scan: Scan) -> Reader:
    """`read` over the scan's own voxels."""
    return lambda region: np.array(scan.voxels[region], dtype=np.float32)


def whole_volume(scan: Scan, region: Region, block: np.ndarray) -> np.ndarray:
    out = np.asarray(scan.voxels, dtype=np.float32).copy()
    out[region] = block
    return out


def copy_move_inject(scan: Scan, center_zyx, donor: Scan, donor_zyx, rng: np.random.Generator) -> np.ndarray:
    """Copy the donor's nodule at `donor_zyx` to `center_zyx` of `scan`; returns the new float32 HU voxels."""
    return whole_volume(scan, *copy_move_patch(scan, center_zyx, donor, donor_zyx, rng))


def copy_move_patch(scan: Scan, center_zyx, donor: Scan, donor_zyx, rng: np.random.Generator,
                    read: Reader | None = None) -> tuple[Region, np.ndarray]:
    """`copy_move_inject` as (region of the volume, its new float32 voxels); `read` gives the current voxels
    (default: the scan's own)."""
    read = read or float_reader(scan)
    center = scan.require_inside(center_zyx, "injection location")
    donor_center = donor.require_inside(donor_zyx, "donor nodule location")
    radius = nodule_radius_mm(donor, donor_center)
    outer = radius + EDGE_MM
    shape, axes_mm = _offsets_mm(outer, scan.spacing)
    flips = rng.random(2) < 0.5
    coords = np.meshgrid(*[c + (-m if f else m) / s for c, m, s, f in
                           zip(donor_center, axes_mm, donor.spacing, (False, *flips))], indexing="ij")
    content = _sample_linear(donor.voxels, coords)
    weight = radial_weight(_distance_mm(axes_mm), radius, outer)
    start, stop = cube_bounds(center, shape)
    region, inside = overlap(start, stop, scan.shape)  # the part of the box in the volume; the rest is dropped
    current = read(region)
    w = weight[inside]
    return region, (w * np.maximum(content[inside], current) + (1.0 - w) * current).astype(np.float32)


def _sample_linear(volume: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """`map_coordinates(volume as float32, coords, order=1, mode="nearest")` from the box of the volume
    the coordinates reach (the same values: linear interpolation reads floor and floor + 1, and the box
    keeps the volume's own edges where the clamping happens)."""
    lo = [int(np.clip(np.floor(c.min()) - 1, 0, n - 1)) for c, n in zip(coords, volume.shape)]
    hi = [int(np.clip(np.floor(c.max()) + 3, 1, n)) for c, n in zip(coords, volume.shape)]
    box = np.asarray(volume[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    shifted = [c - a if a else c for c, a in zip(coords, lo)]  # exact: integers off non-negative coordinates
    return ndimage.map_coordinates(box, shifted, order=1, mode="nearest")


def inpaint_remove(scan: Scan, center_zyx, diameter_mm: float) -> np.ndarray:
    """Remove the nodule of `diameter_mm` at `center_zyx` by biharmonic in-painting plus matched noise;
    returns the new float32 HU voxels."""
    return whole_volume(scan, *inpaint_patch(scan, center_zyx, diameter_mm))


def inpaint_patch(scan: Scan, center_zyx, diameter_mm: float,
                  read: Reader | None = None) -> tuple[Region, np.ndarray]:
    """`inpaint_remove` as (region of the volume, its new float32 voxels); `read` gives the current voxels."""
    from skimage.restoration import inpaint_biharmonic  # scipy.sparse & co: only removal pays the import

    read = read or float_reader(scan)
    center = scan.require_inside(center_zyx, "removal location")
    inner = diameter_mm / 2 + MARGIN_MM
    outer = inner + EDGE_MM
    shape, axes_mm = _offsets_mm(outer + 4 * max(scan.spacing[1:]), scan.spacing)
    start, stop = cube_bounds(center, shape)
    vol, cube = overlap(start, stop, scan.shape)  # clipped at the border: in-painting must not see padding
    block = read(vol)
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
    return vol, (weight * (filled + noise) + (1 - weight) * block).astype(np.float32)


def _local_noise_hu(block: np.ndarray, where: np.ndarray, spacing) -> float:
    """Robust std of the high-pass residual over `where` (parenchyma around the hole); 20 HU if too few voxels."""
    residual = block - ndimage.gaussian_filter(block, [0] + [1.5 / s for s in spacing[1:]])
    values = residual[where]
    if values.size < 50:
        return 20.0
    return robust_sigma(values)
