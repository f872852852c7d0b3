"""The self-referenced statistics as a dense 3-D map, for screening a whole scan.

The same features as `selfref.site_features`, at nodule scale (`SelfRefConfig.screening()`), at every point of a
coarse in-plane grid (≈ `step_mm`): for each band, σ inside a disc of `screen_inside_mm` and in the ring `ring_mm`,
over the slices within `slab_mm`, on flat parenchyma only. The map stays on that grid (`GridMap`). σ here is
the RMS (sums of squares convolve; the site scorer's median-based σ does not), and
the calibration is the scan's own distribution of the feature over its lung: the map is Σ_b z_b².
Slices are processed in chunks (every filter is in-plane), so memory stays bounded on a 512×512×300 CT.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from medfake.detect.gridmap import GridMap
from medfake.detect.selfref import SelfRefConfig, band_stack, flat_parenchyma
from medfake.scan import Scan, mask_box
from medfake.stats import robust_sigma

CHUNK = 12  # slices per chunk


def _pool(volume: np.ndarray, factor: int) -> np.ndarray:
    """Sums over factor×factor in-plane blocks (zero-padded to a multiple of factor)."""
    z, y, x = volume.shape
    ny, nx = -(-y // factor), -(-x // factor)
    padded = np.zeros((z, ny * factor, nx * factor), volume.dtype)
    padded[:, :y, :x] = volume
    return padded.reshape(z, ny, factor, nx, factor).sum(axis=(2, 4))


def _kernels(pixel_mm: float, config: SelfRefConfig) -> tuple[np.ndarray, np.ndarray]:
    reach = int(np.ceil(config.ring_mm[1] / pixel_mm))
    yy, xx = np.mgrid[-reach: reach + 1, -reach: reach + 1] * pixel_mm
    radius = np.hypot(yy, xx)
    disc = (radius <= config.inside_mm).astype(np.float32)
    ring = ((radius >= config.ring_mm[0]) & (radius <= config.ring_mm[1])).astype(np.float32)
    return disc, ring


def pooled_energies(scan: Scan, box: tuple[slice, slice, slice], config: SelfRefConfig, factor: int,
                    bands_fn=band_stack, halo: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bands, z, y', x') pooled squared bands on flat parenchyma, and (z, y', x') pooled flat counts."""
    energy, counts = [], []
    zs = range(box[0].start, box[0].stop)
    for z0 in range(zs.start, zs.stop, CHUNK):
        z1 = min(z0 + CHUNK, zs.stop)
        lo, hi = max(0, z0 - halo), min(scan.shape[0], z1 + halo)
        crop = scan.crop_box((lo, box[1].start, box[2].start), (hi, box[1].stop, box[2].stop))
        keep = slice(z0 - lo, z0 - lo + (z1 - z0))
        bands = bands_fn(crop, config)[:, keep]
        flat = flat_parenchyma(crop, config)[keep].astype(np.float32)
        energy.append(np.stack([_pool(b.astype(np.float32) ** 2 * flat, factor) for b in bands]))
        counts.append(_pool(flat, factor))
    return np.concatenate(energy, axis=1), np.concatenate(counts, axis=0)


def dense_features(energy: np.ndarray, counts: np.ndarray, spacing_z: float, pixel_mm: float,
                   config: SelfRefConfig) -> np.ndarray:
    """(bands, z, y', x') log(σ_inside/σ_ring), NaN where inside or ring has too few flat voxels."""
    size = 2 * int(config.slab_mm // spacing_z) + 1
    slab = lambda a: ndimage.uniform_filter1d(a, size, axis=-3, mode="constant") * size  # noqa: E731
    disc, ring = _kernels(pixel_mm, config)
    conv = lambda a, k: signal.fftconvolve(a, k[None], mode="same", axes=(-2, -1))  # noqa: E731
    n = slab(counts)
    n_in, n_ring = conv(n, disc), conv(n, ring)
    valid = (n_in >= config.min_voxels) & (n_ring >= config.min_voxels)
    out = np.full(energy.shape, np.nan, np.float32)
    for b, e in enumerate(energy):
        e = slab(e)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (conv(e, disc) / np.maximum(n_in, 1)) / (conv(e, ring) / np.maximum(n_ring, 1))
            out[b][valid] = 0.5 * np.log(np.maximum(ratio[valid], 1e-12))
    return out


def selfref_map(scan: Scan, region: np.ndarray, config: SelfRefConfig | None = None, bands_fn=band_stack,
                step_mm: float = 2.0, halo: int = 0) -> GridMap:
    """Σ_b z_b² on a ≈ `step_mm` in-plane grid (NaN outside the region or where unmeasured). A cell is scored
    only when its centre is lung, at least `screen_lung_share` of its inside disc is lung (a disc across the
    pleura compares chest wall and partial-volume edges with lung: anatomy, not tampering) and its slab (and a
    network's 2.5-D context) lies inside the scan. It measures with `config.screening()`."""
    config = config or SelfRefConfig()
    min_lung_share = config.screen_lung_share
    config = config.screening()
    pixel = float(np.mean(scan.spacing[1:]))
    factor = max(1, int(round(step_mm / pixel)))
    tight = mask_box(region)
    if tight is None:
        return GridMap(np.full((0, 0, 0), np.nan, np.float32), factor, (0, 0, 0), scan.shape)
    reach = int(np.ceil((config.ring_mm[1] + 3 * max(config.bands_mm) + config.flat_margin_mm) / pixel))
    box = (tight[0], slice(max(0, tight[1].start - reach), min(scan.shape[1], tight[1].stop + reach)),
           slice(max(0, tight[2].start - reach), min(scan.shape[2], tight[2].stop + reach)))
    energy, counts = pooled_energies(scan, box, config, factor, bands_fn, halo)
    features = dense_features(energy, counts, float(scan.spacing[0]), pixel * factor, config)
    del energy
    # the lung share of every cell, chunk by chunk: no float copy of the whole mask
    lung = np.concatenate([_pool(region[z0:min(z0 + CHUNK, box[0].stop), box[1], box[2]].astype(np.float32), factor)
                           for z0 in range(box[0].start, box[0].stop, CHUNK)]) / factor ** 2
    disc, _ = _kernels(pixel * factor, config)
    share = signal.fftconvolve(lung, disc[None] / disc.sum(), mode="same", axes=(-2, -1))
    inside = (lung > 0.5) & (share >= min_lung_share)
    half = max(int(config.slab_mm // scan.spacing[0]), halo)  # the slab (and a network's context) must fit in the scan
    z = np.arange(box[0].start, box[0].stop)
    inside &= ((z >= half) & (z < scan.shape[0] - half))[:, None, None]
    usable = inside & np.all(np.isfinite(features), axis=0)
    corner = (box[0].start, box[1].start, box[2].start)
    if usable.sum() < 8:
        return GridMap(np.full(lung.shape, np.nan, np.float32), factor, corner, scan.shape)
    centre = np.array([np.median(f[usable]) for f in features])
    spread = np.maximum([robust_sigma(f[usable]) for f in features], 1e-3)
    z = (features - centre[:, None, None, None]) / spread[:, None, None, None]
    finite = np.isfinite(z).any(axis=0)
    score = np.where(finite & inside, np.nansum(z ** 2, axis=0), np.nan).astype(np.float32)
    return GridMap(score, factor, corner, scan.shape)
