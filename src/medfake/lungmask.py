"""Lung segmentation for chest CT with classic image processing (scipy / scikit-image).

Steps: HU threshold → drop the air outside the body → find the trachea near the top of the chest and grow
the large airways with a rising threshold until it leaks → remove them → keep the lung-sized components
(split lungs that touch) → close and fill each lung slice by slice, so vessels, nodules and juxtapleural
lesions belong to the mask → restore the border at full resolution.

The heavy steps run on a grid coarsened in-plane to ~1.2 mm pixels; thick (5 mm) and thin slices alike.
"""

from __future__ import annotations

import edt
import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.scan import Scan, mask_box

AIR_THRESHOLD_HU = -400.0
PARENCHYMA_MAX_HU = -500.0
COARSE_PIXEL_MM = 1.2
AIRWAY_THRESHOLDS_HU = (-990.0, -975.0, -960.0, -945.0, -930.0, -915.0, -900.0)
MIN_LUNG_ML = 5.0  # smaller air pockets inside the body (bowel gas, table foam) are not lungs
MAX_AIRWAY_ML = 120.0  # trachea + main and lobar bronchi are ~30-80 mL; more means the growth leaked
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


# --- public API ----------------------------------------------------------------------------------
def lung_mask(scan: Scan, threshold: float = AIR_THRESHOLD_HU, closing_mm: float = 8.0) -> np.ndarray:
    """Boolean (z,y,x) mask of both lungs, including vessels and nodules inside them, without the trachea
    and main bronchi. Raises MedfakeError when no lung-sized air region is found."""
    return _mask_and_coarse_labels(scan, threshold, closing_mm)[0]


def lung_labels(scan: Scan, threshold: float = AIR_THRESHOLD_HU, closing_mm: float = 8.0) -> np.ndarray:
    """uint8 (z,y,x): 1 = right lung, 2 = left lung (patient sides; lungs that touch are split at their
    junction). A single air region that cannot be split is labelled 1. Nonzero exactly where `lung_mask` is."""
    mask, filled, factor = _mask_and_coarse_labels(scan, threshold, closing_mm)
    return order_by_side(fine_labels(mask, filled, factor), scan)


def _mask_and_coarse_labels(scan: Scan, threshold: float, closing_mm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(full-resolution mask, lung labels on the coarse grid, the grid's factor)."""
    if scan.modality not in ("CT", "", None):
        raise MedfakeError(f"lung mask needs a CT scan, got modality {scan.modality}", scan.path)
    voxels = np.asarray(scan.voxels)
    factor = coarse_factor(scan.spacing)
    coarse = block_mean(voxels, factor)
    spacing = (scan.spacing[0], scan.spacing[1] * factor, scan.spacing[2] * factor)
    inner = inside_air(coarse < threshold)
    airway = airway_tree(coarse, inner, spacing, superior_is_last(scan))
    del coarse  # the full-resolution steps below are the memory peak: hold nothing they do not need
    lungs = lung_components(inner & ~ndimage.binary_dilation(airway, IN_PLANE, iterations=2), spacing)
    del inner, airway
    if lungs.max() == 0:
        raise MedfakeError("no lung found (no large air region inside the body)", scan.path)
    filled = fill_lungs(lungs, spacing, closing_mm)
    return refine_border(filled > 0, voxels, threshold, factor), filled, factor


def lung_parenchyma(scan: Scan, mask: np.ndarray | None = None, max_hu: float = PARENCHYMA_MAX_HU,
                    erode_mm: float = 1.0) -> np.ndarray:
    """Lung voxels away from vessels, airways walls and nodules (HU < max_hu inside the mask, eroded):
    homogeneous tissue for sampling noise."""
    mask = lung_mask(scan) if mask is None else mask
    soft = mask & (np.asarray(scan.voxels) < max_hu)
    steps = max(1, int(round(erode_mm / min(scan.spacing[1:]))))
    return ndimage.binary_erosion(soft, IN_PLANE, iterations=steps)


def split_lungs(mask: np.ndarray, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lung masks of a lung mask, by patient side (world x < midline is the patient's right)."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2] + 1
    parts = [labels == k for k in order]
    if len(parts) < 2:
        raise MedfakeError("lung mask has a single component; cannot tell right from left", scan.path)
    x_of = [scan.voxel_to_world(centroid(p))[0] for p in parts]
    return (parts[0], parts[1]) if x_of[0] < x_of[1] else (parts[1], parts[0])


# --- grid ---------------------------------------------------------------------------------------
def coarse_factor(spacing) -> int:
    return max(1, int(round(COARSE_PIXEL_MM / min(spacing[1], spacing[2]))))


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """In-plane float32 block average by an integer factor (edges padded by replication)."""
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    z, y, x = volume.shape
    pad = ((0, 0), (0, -y % factor), (0, -x % factor))
    padded = np.pad(volume, pad, mode="edge") if any(p for _, p in pad) else volume
    zz, yy, xx = padded.shape
    if not (np.issubdtype(padded.dtype, np.integer) and padded.dtype.itemsize <= 2 and factor <= 16):
        blocks = np.asarray(padded, dtype=np.float32).reshape(zz, yy // factor, factor, xx // factor, factor)
        return blocks.mean(axis=(2, 4))
    # integer HU: float32 sums of ≤ 256 16-bit values are exact in any order, so adding the strided views
    # gives numpy's mean bit for bit (same division, by an intp count) without a float copy of the volume
    total = np.zeros((zz, yy // factor, xx // factor), np.float32)
    for dy in range(factor):
        for dx in range(factor):
            total += padded[:, dy::factor, dx::factor]
    return np.true_divide(total, np.intp(factor * factor), out=total, casting="unsafe")


def below(volume: np.ndarray, threshold: float) -> np.ndarray:
    """volume < threshold as the float32 comparison (integers compare exactly as they are)."""
    if np.issubdtype(volume.dtype, np.integer):
        return volume < threshold
    return np.asarray(volume, dtype=np.float32) < np.float32(threshold)


def upsample(mask: np.ndarray, factor: int, shape) -> np.ndarray:
    if factor == 1:
        return mask
    big = mask.repeat(factor, axis=1).repeat(factor, axis=2)
    return big[:, : shape[1], : shape[2]]


def superior_is_last(scan: Scan) -> bool:
    """True when the last slice is the most superior (highest world z, LPS)."""
    first, last = scan.voxel_to_world([0, 0, 0]), scan.voxel_to_world([scan.shape[0] - 1, 0, 0])
    return bool(last[2] >= first[2])


# --- steps --------------------------------------------------------------------------------------
def inside_air(air: np.ndarray) -> np.ndarray:
    """Air not connected to the in-plane border of the volume (the air around the patient)."""
    labels, count = label_small(air)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    outside = np.zeros(count + 1, bool)
    outside[border[border > 0]] = True
    return air & ~outside[labels]


def trachea_seed(coarse: np.ndarray, inner: np.ndarray, spacing, superior_last: bool):
    """A voxel inside the trachea, or None: at the lung apices (the first slices from the top with a
    lung-sized air region off the midline) the trachea is the small, very dark component near the
    body's left-right centre."""
    pixel_mm2 = spacing[1] * spacing[2]
    slices = list(range(coarse.shape[0] - 1, -1, -1) if superior_last else range(coarse.shape[0]))
    apex = next((i for i, z in enumerate(slices) if slice_has_lung(coarse[z], inner[z], spacing)), None)
    if apex is None:
        return None
    best = None
    for z in slices[apex: apex + 4]:
        body_x = body_centre_x(coarse[z], inner[z])
        labels, _ = ndimage.label(inner[z])
        for k, found in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[found] == k
            area = component.sum() * pixel_mm2
            cx = mean_index(component.sum(axis=0)) + found[1].start
            values = coarse[z][found]
            darkest = float(values[component].min())
            width = (found[1].stop - found[1].start) * spacing[2]
            if 40 <= area <= 800 and abs(cx - body_x) * spacing[2] < 25 and darkest < -950 and width < 40:
                if best is None or area > best[0]:
                    where = np.argwhere(component & (values == darkest))[0]
                    best = (area, (z, where[0] + found[0].start, where[1] + found[1].start))
    return None if best is None else best[1]


def body_centre_x(coarse_slice: np.ndarray, inner_slice: np.ndarray) -> float:
    body = ndimage.binary_fill_holes(coarse_slice > AIR_THRESHOLD_HU) | inner_slice
    return mean_index(body.sum(axis=0))


def mean_index(counts: np.ndarray) -> float:
    """Mean position along an axis given the number of voxels at each index."""
    return float((counts * np.arange(counts.size)).sum() / max(counts.sum(), 1))


def slice_has_lung(coarse_slice: np.ndarray, inner_slice: np.ndarray, spacing) -> bool:
    """A slice with an air region of ≥ 300 mm² whose centre is ≥ 25 mm off the body's midline."""
    labels, count = ndimage.label(inner_slice)
    if count == 0:
        return False
    counts = np.bincount(labels.ravel())
    areas = counts[1:] * spacing[1] * spacing[2]
    big = np.flatnonzero(areas >= 300) + 1
    if big.size == 0:
        return False
    body_x = body_centre_x(coarse_slice, inner_slice)
    columns = np.broadcast_to(np.arange(labels.shape[1]), labels.shape)
    centres_x = np.bincount(labels.ravel(), weights=columns.ravel())[big] / counts[big]
    return bool(np.any(np.abs(centres_x - body_x) * spacing[2] >= 25))


def airway_tree(coarse: np.ndarray, inner: np.ndarray, spacing, superior_last: bool) -> np.ndarray:
    """Trachea and large bronchi by region growing from the trachea with a rising HU threshold; stops
    at the last threshold before the region leaks into the lung (volume jump or too large)."""
    seed = trachea_seed(coarse, inner, spacing, superior_last)
    airway = np.zeros_like(inner)
    if seed is None:
        return airway
    # every stricter threshold's region lies inside the loosest one's: label the rest in that region's box
    labels, _ = label_small(inner & (coarse < AIRWAY_THRESHOLDS_HU[-1]))
    if labels[seed] == 0:
        return airway
    reach = labels == labels[seed]
    del labels
    box = mask_box(reach)
    reach, local = reach[box], tuple(int(v - b.start) for v, b in zip(seed, box))
    local_coarse = coarse[box]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    previous = 0.0
    for threshold in AIRWAY_THRESHOLDS_HU:
        labels, _ = label_small(reach & (local_coarse < threshold))
        if labels[local] == 0:
            continue
        grown = labels == labels[local]
        volume = grown.sum() * voxel_ml
        if volume > MAX_AIRWAY_ML or (previous > 0 and volume > 2.0 * previous + 5.0):
            break
        airway[:] = False
        airway[box] = grown
        previous = volume
    return airway


def lung_components(candidates: np.ndarray, spacing, keep_fraction: float = 0.15) -> np.ndarray:
    """Label image of the lungs: the largest air components inside the body (≥ keep_fraction of the
    largest, at most two), and the largest split in two when the lungs touch."""
    labels, count = label_small(candidates)
    if count == 0:
        return labels
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    big = [k + 1 for k in order[:2] if sizes[k] >= keep_fraction * sizes[order[0]]]
    big = [k for k in big if sizes[k - 1] * np.prod(spacing) / 1000.0 >= MIN_LUNG_ML]
    lungs = np.zeros(labels.shape, np.uint8)
    for i, k in enumerate(big, start=1):
        lungs[labels == k] = i
    if len(big) == 1:
        lungs = separate_touching_lungs(lungs == 1, spacing)
    return lungs


def separate_touching_lungs(lung: np.ndarray, spacing) -> np.ndarray:
    """Split one component holding both lungs at its thinnest junction: raise an in-plane distance
    threshold until two large cores appear, then give every voxel to the nearer core (watershed)."""
    from skimage.segmentation import watershed

    distance = np.stack([distance_mm(s, spacing[1:]) for s in lung])
    for core_mm in (1.5, 3.0, 4.5, 6.0, 8.0):
        cores, count = ndimage.label(distance > core_mm)
        if count < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= 0.25 * sizes[order[0]]:
            markers = np.zeros(lung.shape, np.int32)
            markers[cores == order[0] + 1] = 1
            markers[cores == order[1] + 1] = 2
            return watershed(-distance, markers, mask=lung).astype(np.uint8)
    return lung.astype(np.uint8)


def fill_lungs(lungs: np.ndarray, spacing, closing_mm: float) -> np.ndarray:
    """Each lung closed with an in-plane disk of `closing_mm` and hole-filled slice by slice (labels kept;
    where two filled lungs overlap the first keeps the voxel)."""
    filled = np.zeros(lungs.shape, np.uint8)
    pad = int(np.ceil(closing_mm / min(spacing[1:]))) + 2
    for index, found in enumerate(ndimage.find_objects(lungs), start=1):
        if found is None:
            continue
        z0, z1 = found[0].start, found[0].stop
        y0, x0 = max(found[1].start - pad, 0), max(found[2].start - pad, 0)
        y1, x1 = min(found[1].stop + pad, lungs.shape[1]), min(found[2].stop + pad, lungs.shape[2])
        for z in range(z0, z1):
            piece = lungs[z, y0:y1, x0:x1] == index
            if piece.any():
                piece = np.pad(piece, pad)
                closed = close_disk(piece, spacing[1:], closing_mm)[pad:-pad, pad:-pad]
                target = filled[z, y0:y1, x0:x1]
                target[ndimage.binary_fill_holes(closed) & (target == 0)] = index
    return filled


def close_disk(mask2d: np.ndarray, pixel, radius_mm: float) -> np.ndarray:
    grown = distance_mm(~mask2d, pixel) <= radius_mm
    return distance_mm(grown, pixel) > radius_mm


def distance_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every True voxel to the nearest False one, 0 on False: the exact Euclidean distance
    transform of `ndimage.distance_transform_edt`, from the `edt` package (float32, ~2× faster)."""
    return edt.edt(np.ascontiguousarray(mask), anisotropy=tuple(float(s) for s in spacing), black_border=False,
                   parallel=1)


def refine_border(filled: np.ndarray, voxels: np.ndarray, threshold: float, factor: int) -> np.ndarray:
    """Full-resolution mask: the coarse interior, plus fine air voxels (< threshold) in a one-coarse-pixel band."""
    if factor == 1:
        return filled
    shape = voxels.shape
    dilated = ndimage.binary_dilation(filled, IN_PLANE)
    out = np.zeros(shape, bool)
    if not dilated.any():
        return out
    # everything happens inside the band, so work in its bounding box (at full resolution)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(*bounds(dilated)))
    fine_box = (box[0], *(slice(b.start * factor, min(b.stop * factor, n)) for b, n in zip(box[1:], shape[1:])))
    crop_shape = tuple(b.stop - b.start for b in fine_box)
    eroded = ndimage.binary_erosion(filled, IN_PLANE)[box]
    dilated = dilated[box]
    fine = voxels[fine_box]
    mask = np.empty(crop_shape, bool)
    for z in slabs(crop_shape[0]):  # a few slices at a time: no full-size temporaries
        core = upsample(eroded[z], factor, mask[z].shape)
        mask[z] = core | (upsample(dilated[z], factor, mask[z].shape) & below(fine[z], threshold))
    labels, count = label_small(mask)
    attached = np.zeros(count + 1, bool)
    for z in slabs(crop_shape[0]):
        attached[labels[z][upsample(eroded[z], factor, mask[z].shape)]] = True
    attached[0] = False
    target = out[fine_box]
    for z in slabs(crop_shape[0]):
        target[z] = attached[labels[z]]
    return out


def slabs(depth: int, size: int = 16):
    return [slice(z, min(z + size, depth)) for z in range(0, depth, size)]


def label_small(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """`ndimage.label` into uint16 when the components fit (half the memory of int32 on a full volume)."""
    try:
        labels = np.empty(mask.shape, np.uint16)
        return labels, ndimage.label(mask, output=labels)
    except RuntimeError:  # more than 65535 components
        return ndimage.label(mask)


def bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last + 1) index of the True voxels along each axis."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    return np.array(lo), np.array(hi)


def fine_labels(mask: np.ndarray, coarse_labels: np.ndarray, factor: int) -> np.ndarray:
    """Labels for the full-resolution mask from the coarse labels (border voxels take a neighbour's: every mask
    voxel lies within one coarse pixel of the coarse labels, so every one gets a label)."""
    if factor == 1:
        return np.where(mask, coarse_labels, 0).astype(np.uint8)
    spread = ndimage.grey_dilation(coarse_labels, footprint=IN_PLANE)
    out = np.zeros(mask.shape, np.uint8)
    for z in slabs(mask.shape[0]):
        shape = mask[z].shape
        up = upsample(coarse_labels[z], factor, shape)
        out[z] = np.where(mask[z], np.where(up > 0, up, upsample(spread[z], factor, shape)), 0)
    return out


def order_by_side(labels: np.ndarray, scan: Scan) -> np.ndarray:
    """Relabel two lungs so that 1 is the patient's right (smaller world x, LPS) and 2 the left."""
    if labels.max() < 2:
        return labels
    x_right, x_left = (scan.voxel_to_world(centroid(labels == k))[0] for k in (1, 2))
    if x_right > x_left:
        labels = np.where(labels > 0, 3 - labels, 0).astype(np.uint8)
    return labels


def centroid(mask: np.ndarray) -> np.ndarray:
    """Centre of mass (z,y,x) of a 3-D mask from its axis projections (fast on large volumes)."""
    return np.array([mean_index(mask.sum(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)])


def save_lung_mask(path, output, series: str | None = None, overwrite: bool = False):
    """Load a CT, compute its lung mask and write it (uint8, same geometry, atomic). Returns (path, mL)."""
    from pathlib import Path

    from medfake.io import format_from_name, load_scan, save_scan

    output = Path(output)
    fmt = format_from_name(output)
    if fmt is None:
        raise MedfakeError("mask output must end in .nii.gz, .nii, .nrrd, .mhd or .npz", output)
    scan = load_scan(path, series=series)
    mask = lung_mask(scan)
    mask_scan = scan.with_voxels(mask.astype(np.uint8), modality="SEG",
                                 meta={"format": fmt})
    written = save_scan(mask_scan, output, format=fmt, overwrite=overwrite)
    return written, float(mask.sum() * np.prod(scan.spacing) / 1000.0)
