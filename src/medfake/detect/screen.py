"""Score given locations (the BTD protocol) or screen a whole scan into a 3-D anomaly map with findings.

Screening tiles every selected axial slice's lung bounding box with detector-sized patches (stride ≤ patch),
averages the per-pixel anomaly maps where tiles overlap, smooths them over ~`smooth_mm`, standardises the
map by its robust spread inside the lung (median / 1.4826·MAD), and reports peaks by non-maximum
suppression. Skipped slices (`slice_step` > 1) take the map of the nearest scored slice. Scan-level detectors
(selfref, residual) give their own map on a coarse grid (`GridMap`), which screening keeps: only the saved map
and the overlays are expanded to the scan's grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medfake.detect.config import ScreenOptions
from medfake.detect.detectors import Detector
from medfake.detect.gridmap import GridMap, grid_peaks
from medfake.detect.patches import lung_mask_or_none, patches_at, to_unit
from medfake.errors import MedfakeError
from medfake.scan import Scan
from medfake.stats import robust_sigma


LUNG_WINDOW = (-1150.0, -350.0)  # what the patches of scan-level detectors show
VIEW_PATCH = 64


@dataclass
class LocationScore:
    voxel_zyx: tuple[int, int, int]
    world_xyz: tuple[float, float, float]
    score: float


def score_locations(scan: Scan, detector: Detector, centres_zyx, protocol: str = "btd") -> tuple[list[LocationScore], np.ndarray, np.ndarray]:
    """Scores at z,y,x centres, with the centre-slice patches (N, 1, P, P; BTD crops by default) and anomaly
    maps (N, P, P). Scan-level detectors score from the scan itself: their patches show the lung window and
    their maps are the site's score, uniform (they have no per-pixel map of one site)."""
    centres = [tuple(int(v) for v in scan.require_inside(c, "detection location")) for c in centres_zyx]
    if detector.scan_level:
        scores = detector.score_sites(scan, centres)
        patches = patches_at(to_unit(scan, LUNG_WINDOW), centres, VIEW_PATCH, protocol)
        maps = np.broadcast_to(scores[:, None, None], (len(scores), VIEW_PATCH, VIEW_PATCH)).astype(np.float32)
    else:
        patches = detector.patches(detector.unit(scan), centres)
        maps = detector.anomaly_maps(patches)
        scores = detector.scores_from_maps(maps)
        middle = patches.shape[1] // 2
        patches = patches[:, middle: middle + 1]
    rows = [LocationScore(c, tuple(float(v) for v in scan.voxel_to_world(c)), float(s)) for c, s in zip(centres, scores)]
    return rows, patches, maps


@dataclass
class Screening:
    grid: GridMap  # robust z-score of the anomaly (NaN where unmeasured), on the detector's grid
    region: np.ndarray  # bool (z, y, x): where the map is defined (lung mask, or the body for MRI)
    findings: list[LocationScore] = field(default_factory=list)
    scan_score: float = 0.0
    tiles: int = 0
    slices: list[int] = field(default_factory=list)

    @property
    def anomaly(self) -> np.ndarray:
        """The map on the scan's grid, float16 (built on each call; 0 outside the region and where unmeasured)."""
        return self.grid.full(self.region)


def screening_region(scan: Scan) -> np.ndarray:
    """The lungs; without them (no lung found, not a chest CT) the body: a windowed float copy of the whole volume
    is made only then, since it is the memory peak of screening."""
    mask = lung_mask_or_none(scan, cache=False)
    return mask if mask is not None else to_unit(scan) > 0.05


def tile_origins(lo: int, hi: int, size: int, stride: int, limit: int) -> list[int]:
    """Starts of size-long tiles with `stride` covering [lo, hi), kept inside [0, limit) when possible."""
    last = max(lo, hi - size)
    starts = list(range(lo, last + 1, stride))
    if starts[-1] < last:
        starts.append(last)
    return [min(max(0, s), max(0, limit - size)) for s in starts]


def screen_scan(scan: Scan, detector: Detector, progress=None, **options) -> Screening:
    """`options`: the fields of `ScreenOptions` (tile stride, slice step, smoothing, findings, batch size)."""
    try:
        opts = ScreenOptions(**options)
    except TypeError as exc:
        raise MedfakeError(f"bad screening options ({exc})") from None
    region = screening_region(scan)
    if detector.scan_level:
        return screen_scan_level(scan, detector, region, opts)
    unit = detector.unit(scan)
    size = detector.config.patch_size
    stride = opts.stride or size // 2
    batch_tiles = opts.batch_tiles
    slices = [int(z) for z in np.flatnonzero(region.any(axis=(1, 2)))][::max(1, opts.slice_step)]
    total = np.zeros((len(slices),) + unit.shape[1:], np.float32)
    count = np.zeros_like(total)
    tiles = []
    for k, z in enumerate(slices):
        ys, xs = np.nonzero(region[z])
        for y0 in tile_origins(ys.min(), ys.max() + 1, size, stride, unit.shape[1]):
            for x0 in tile_origins(xs.min(), xs.max() + 1, size, stride, unit.shape[2]):
                if region[z, y0:y0 + size, x0:x0 + size].any():
                    tiles.append((k, y0, x0))
    task = progress.add_task("screening", total=len(tiles), status="") if progress else None
    for start in range(0, len(tiles), batch_tiles):
        chunk = tiles[start: start + batch_tiles]
        patches = np.concatenate([patches_at(unit, [(slices[k], y0 + size // 2, x0 + size // 2)], size, "centred",
                                             detector.config.context) for k, y0, x0 in chunk])
        for (k, y0, x0), amap in zip(chunk, detector.anomaly_maps(patches)):
            h, w = total[k, y0:y0 + size, x0:x0 + size].shape
            total[k, y0:y0 + h, x0:x0 + w] += amap[:h, :w]
            count[k, y0:y0 + h, x0:x0 + w] += 1
        if task is not None:
            progress.advance(task, len(chunk))
    per_slice = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    anomaly = standardise(smooth_slices(per_slice, scan.spacing, opts.smooth_mm), region[slices])
    volume = np.full(unit.shape, np.nan, np.float32)
    if slices:
        nearest = np.abs(np.arange(unit.shape[0])[:, None] - np.asarray(slices)[None]).argmin(axis=1)
        volume = np.where(region, anomaly[nearest], np.nan).astype(np.float32)
    return finish(scan, GridMap(volume, 1, (0, 0, 0), scan.shape), region, opts, len(tiles), slices)


def screen_scan_level(scan: Scan, detector: Detector, region: np.ndarray, opts: ScreenOptions) -> Screening:
    """A scan-level detector's own map on its coarse grid, standardised inside the lung like the tiled one."""
    grid = detector.screen_map(scan, region, opts)
    measured = np.isfinite(grid.values)
    if measured.any():
        standardise(grid.values, measured, out=grid.values)
    slices = [grid.corner[0] + int(k) for k in np.flatnonzero(measured.any(axis=(1, 2)))]
    return finish(scan, grid, region, opts, 0, slices)


def finish(scan: Scan, grid: GridMap, region: np.ndarray, opts: ScreenOptions, tiles: int, slices) -> Screening:
    """The findings of a standardised map: its highest cells, `separation_mm` apart."""
    findings = []
    for cell, value in grid_peaks(grid, scan.spacing, opts.top, opts.separation_mm):
        zyx = grid.cell_voxel(cell, region)
        findings.append(LocationScore(zyx, tuple(float(v) for v in scan.voxel_to_world(zyx)), value))
    return Screening(grid, region, findings, findings[0].score if findings else 0.0, tiles, list(slices))


def smooth_slices(maps: np.ndarray, spacing, smooth_mm: float) -> np.ndarray:
    sigma = [0.0] + [smooth_mm / 2.355 / s for s in spacing[1:]]  # FWHM = smooth_mm
    return ndimage.gaussian_filter(maps, sigma=sigma)


def standardise(maps: np.ndarray, region: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Robust z-score of float32 `maps` against its values inside `region`; `out=maps` works in place."""
    values = maps[region]
    if values.size == 0:
        return np.zeros_like(maps)
    median = float(np.median(values))
    spread = max(robust_sigma(values), 1e-12)
    del values
    out = np.subtract(maps, median, out=out, dtype=np.float32)
    return np.divide(out, spread, out=out)
