"""Self-referenced local statistics: a training-free tamper detector that compares a site with its own
surroundings, in the same slices, on flat lung parenchyma only.

A tamperer in-paints a region and matches its noise *level*; what it rarely matches at every scale at once is
the scanner's noise *texture*. For each scale band (a difference of in-plane Gaussians, in mm) the robust σ of
the band is measured on flat parenchyma (smoothed HU within `flat_hu`, ≥ `flat_margin_mm` from anything
denser) inside a disc of `inside_mm` around the site and in a ring `ring_mm` around it, over the slices within
`slab_mm` of the site. The features are log(σ_inside/σ_ring) per band, i.e. the level and the spectral shape.
The same features measured at `references` random lung positions of the same scan calibrate them (median and
robust spread), so the score is self-referenced: Σ_b z_b², two-sided (a too-smooth and a too-noisy inside
both score high), in units of "this scan's own site-to-site variation".

It needs the scan (mm, 3-D context), not 2-D patches: `score_sites(scan, sites)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.lungmask import lung_mask
from medfake.scan import Scan
from medfake.stats import robust_sigma


@dataclass(frozen=True)
class SelfRefConfig:
    inside_mm: float = 10.0
    ring_mm: tuple[float, float] = (14.0, 24.0)
    slab_mm: float = 6.0  # slices within this distance of the site (same slices for inside and ring)
    bands_mm: tuple[float, ...] = (0.0, 0.7, 1.4, 2.8)  # band k = G(bands[k]) − G(bands[k+1]); 0 = the image
    flat_hu: tuple[float, float] = (-960.0, -700.0)  # smoothed HU of flat parenchyma
    flat_margin_mm: float = 2.0  # away from anything above flat_hu[1]
    min_voxels: int = 40  # fewer flat voxels inside or in the ring: the band's feature is not measured
    references: int = 48  # random lung positions of the same scan that calibrate the features
    reference_gap_mm: float = 30.0  # references keep this far from the scored sites
    seed: int = 0
    # the screening map (selfref_map) measures at nodule scale: the regions a tamperer rewrites are 10-20 mm
    # across, and a 10 mm disc dilutes them with untouched lung; it drops the coarsest band, whose response to
    # vessel and pleural edges reaches ≈ 3σ = 8 mm, and keeps flat voxels ≥ 3σ of its coarsest band from denser
    # tissue; a cell is scored only where this share of its disc is lung (a disc across the pleura measures anatomy)
    screen_inside_mm: float = 5.0
    screen_bands_mm: tuple[float, ...] = (0.0, 0.7, 1.4)
    screen_flat_margin_mm: float = 4.0
    screen_lung_share: float = 0.9

    def screening(self) -> "SelfRefConfig":
        """The settings the screening map measures with."""
        return replace(self, inside_mm=self.screen_inside_mm, bands_mm=self.screen_bands_mm,
                       flat_margin_mm=self.screen_flat_margin_mm)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SelfRefConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def band_stack(crop: Scan, config: SelfRefConfig) -> np.ndarray:
    """(bands, z, y, x) in-plane difference-of-Gaussian bands of a crop's HU (float, never clipped)."""
    voxels = crop.voxels.astype(np.float32)
    pixel = np.asarray(crop.spacing[1:])
    blurred = [voxels if s == 0 else ndimage.gaussian_filter(voxels, (0, *(s / pixel))) for s in config.bands_mm]
    return np.stack([a - b for a, b in zip(blurred[:-1], blurred[1:])])


def flat_parenchyma(crop: Scan, config: SelfRefConfig) -> np.ndarray:
    """Voxels of flat lung: smoothed HU in the parenchyma range and ≥ flat_margin_mm from denser tissue."""
    pixel = np.asarray(crop.spacing[1:])
    smooth = ndimage.gaussian_filter(crop.voxels.astype(np.float32), (0, *(1.0 / pixel)))
    lo, hi = config.flat_hu
    dense = smooth > hi
    reach = np.ceil(config.flat_margin_mm / pixel).astype(int)
    near_dense = ndimage.binary_dilation(dense, structure=_disc(reach, pixel, config.flat_margin_mm)[None])
    return (smooth >= lo) & ~dense & ~near_dense


def _disc(reach, pixel, radius_mm: float) -> np.ndarray:
    yy, xx = np.mgrid[-reach[0]: reach[0] + 1, -reach[1]: reach[1] + 1]
    return (yy * pixel[0]) ** 2 + (xx * pixel[1]) ** 2 <= radius_mm ** 2


def site_features(scan: Scan, zyx, config: SelfRefConfig, bands_fn=band_stack) -> np.ndarray:
    """log(σ_inside/σ_ring) per band at one site (NaN where too few flat voxels were found). `bands_fn(crop,
    config)` gives the bands (default: difference-of-Gaussian bands of the HU; a learned residual's bands)."""
    outer = config.ring_mm[1] + 3 * max(config.bands_mm) + config.flat_margin_mm
    half = np.ceil(np.r_[config.slab_mm, outer, outer] / np.asarray(scan.spacing)).astype(int)
    crop = scan.crop(zyx, 2 * half + 1)
    bands = bands_fn(crop, config)
    flat = flat_parenchyma(crop, config)
    zz, yy, xx = np.meshgrid(*(np.arange(n) - h for n, h in zip(crop.shape, half)), indexing="ij")
    radius = np.hypot(yy * crop.spacing[1], xx * crop.spacing[2])
    slab = np.abs(zz * crop.spacing[0]) <= config.slab_mm
    inside = flat & slab & (radius <= config.inside_mm)
    ring = flat & slab & (radius >= config.ring_mm[0]) & (radius <= config.ring_mm[1])
    if inside.sum() < config.min_voxels or ring.sum() < config.min_voxels:
        return np.full(len(bands), np.nan)
    return np.array([np.log(robust_sigma(b[inside]) / robust_sigma(b[ring])) for b in bands])


def reference_sites(scan: Scan, avoid_zyx, config: SelfRefConfig, lung: np.ndarray | None = None) -> np.ndarray:
    """Random lung positions (flat-ish parenchyma at the centre) far from the scored sites."""
    lung = lung_mask(scan) if lung is None else lung
    margin = np.ceil(np.r_[config.slab_mm, config.ring_mm[1], config.ring_mm[1]] / np.asarray(scan.spacing)).astype(int)
    candidates = np.argwhere(lung[:, ::4, ::4]) * [1, 4, 4]
    keep = np.all((candidates >= margin) & (candidates < np.asarray(scan.shape) - margin), axis=1)
    candidates = candidates[keep]
    if len(avoid_zyx):
        world = scan.voxel_to_world(candidates.astype(float))
        avoid = scan.voxel_to_world(np.asarray(avoid_zyx, dtype=float).reshape(-1, 3))
        distance = np.min(np.linalg.norm(world[:, None] - avoid[None], axis=2), axis=1)
        candidates = candidates[distance >= config.reference_gap_mm]
    if len(candidates) == 0:
        raise MedfakeError("no lung left to calibrate the self-referenced statistics", scan.path)
    rng = np.random.default_rng(config.seed)
    return candidates[rng.choice(len(candidates), size=min(len(candidates), 6 * config.references), replace=False)]


def calibration(scan: Scan, avoid_zyx, config: SelfRefConfig, lung=None,
                bands_fn=band_stack) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust spread of each band's feature over this scan's own reference positions."""
    rows = []
    for zyx in reference_sites(scan, avoid_zyx, config, lung):
        features = site_features(scan, zyx, config, bands_fn)
        if np.all(np.isfinite(features)):
            rows.append(features)
        if len(rows) == config.references:
            break
    if len(rows) < 8:
        raise MedfakeError(f"only {len(rows)} reference positions with flat parenchyma in this scan", scan.path)
    rows = np.asarray(rows)
    return np.median(rows, axis=0), np.maximum([robust_sigma(c) for c in rows.T], 1e-3)


def score_sites(scan: Scan, sites_zyx, config: SelfRefConfig | None = None, lung=None,
                bands_fn=band_stack) -> np.ndarray:
    """Σ_b z_b² per site (higher = less like this scan's genuine lung); a site without enough flat
    parenchyma around it scores by the bands it has, or 0 when it has none."""
    config = config or SelfRefConfig()
    sites = np.asarray(sites_zyx, dtype=int).reshape(-1, 3)
    centre, spread = calibration(scan, sites, config, lung, bands_fn)
    scores = []
    for zyx in sites:
        z = (site_features(scan, zyx, config, bands_fn) - centre) / spread
        scores.append(float(np.nansum(z ** 2)) if np.isfinite(z).any() else 0.0)
    return np.asarray(scores)


def dense_fraction(scan: Scan, sites_zyx, radius_mm: float = 5.0, threshold_hu: float = -400.0) -> np.ndarray:
    """The content-only baseline: the fraction of voxels denser than `threshold_hu` within `radius_mm` of each
    site. It knows nothing of tampering, only of "is there a nodule here"; on rows whose positives and
    negatives hold the same content it must sit near AUC 0.5."""
    half = np.ceil(radius_mm / np.asarray(scan.spacing)).astype(int)
    zz, yy, xx = np.meshgrid(*(np.arange(-h, h + 1) * s for h, s in zip(half, scan.spacing)), indexing="ij")
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= radius_mm ** 2
    out = []
    for zyx in np.asarray(sites_zyx, dtype=int).reshape(-1, 3):
        crop = scan.crop(zyx, 2 * half + 1, pad=-1000.0).voxels
        out.append(float(np.mean(crop[ball] > threshold_hu)))
    return np.asarray(out)
