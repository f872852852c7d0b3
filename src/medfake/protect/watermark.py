"""A keyed fragile watermark within the protection's L∞ budget: tampering is not stopped, it becomes detectable.

Embedding: a ±1 field drawn slice by slice from a generator seeded by SHA-256 of the key, the grid's shape and the
slice, smoothed in-plane (σ 0.7 voxel, so a mild blur leaves some of it), scaled to ±budget and rounded onto the
stored voxels (the same `project_stored` as the perturbation methods: |stored − original| ≤ budget at every
voxel). The pattern lives on the voxel grid; the protection record keeps that grid (`Grid`), so a copy resampled
onto another grid is checked by mapping the pattern through world coordinates.

Verification: the scan's in-plane high-pass residual (x − Gaussian(x), clipped to ±60 HU so vessel edges do not
dominate) is correlated with the high-pass of the key's pattern in local windows (~12 mm) over lung voxels.
An untouched watermarked region correlates at ~0.15 (lung1: the pattern's ~5 HU rms against ~18 HU of
parenchyma noise); a region a tamperer rewrote — a CT-GAN cube, an in-painting, a copy-moved patch — carries
no pattern or another place's, and its correlation collapses to ~0. A wrong key, or a scan never
watermarked, correlates at ~0 everywhere: "no watermark found".

The record names the key only by a fingerprint (another SHA-256 domain than the seed), never the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.scan import Scan
from medfake.stats import robust_sigma

PATTERN_SIGMA_VOXELS = 0.7  # in-plane smoothing of the ±1 field
HIGHPASS_SIGMA_VOXELS = 1.0  # in-plane σ of the Gaussian whose residual is the high-pass
RESIDUAL_CLIP_HU = 60.0
SCALE_SIGMAS = 1.5  # the field (unit std) is scaled so ±1.5 σ reaches the budget, then clipped
WINDOW_MM = 12.0
CHUNK_SLICES = 16  # slices held in float at a time
MIN_LUNG_FRACTION = 0.5  # a grid cell is scored when at least this much of its window is lung
PRESENT_CORRELATION = 0.02  # whole-lung correlation above which the scan carries the key's watermark (a wrong
# key: |corr| < 0.002 on lung1's 1.7 M lung voxels)
TAMPERED_STRENGTH = 0.5  # a cell is flagged when its amplitude is below half the scan's ...
DROP_Z = 4.5  # ... and this many standard errors below it (a wrong key's cells: 0.1% beyond 3.5)
NOISE_CORRELATION = 1.2  # variance inflation of the windowed estimate (the smoothed pattern; measured with a
# wrong key on lung1: the z-scores' spread is 1.09)


def require_key(key: str | None) -> str:
    if key is None or not str(key):
        raise MedfakeError("the watermark needs a key (--key); keep it secret, it is never written anywhere")
    return str(key)


def key_fingerprint(key: str) -> str:
    """Names the key in records without revealing it (another hash domain than the pattern's seed)."""
    return hashlib.sha256(b"medfake-watermark-fingerprint\0" + require_key(key).encode()).hexdigest()[:16]


def slice_pattern(shape, key: str, z: int) -> np.ndarray:
    """Slice z of the key's field on a voxel grid of `shape`: unit standard deviation, smoothed in-plane
    (float32). Each slice has its own seed (the key, the grid's shape and z), so any run of slices is made
    without the rest of the volume."""
    seed = b"medfake-watermark-v2\0" + require_key(key).encode() + "\0{}x{}x{}\0{}".format(*shape, z).encode()
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(seed).digest(), dtype=np.uint32))
    signs = rng.integers(0, 2, size=tuple(shape[1:]), dtype=np.int8).astype(np.float32) * 2 - 1
    smooth = ndimage.gaussian_filter(signs, PATTERN_SIGMA_VOXELS)
    return smooth / np.float32(smooth.std() or 1.0)


def key_pattern(shape, key: str, zs: range | None = None) -> np.ndarray:
    """The key's field on slices `zs` (default: all) of a voxel grid of `shape`."""
    zs = range(shape[0]) if zs is None else zs
    out = np.empty((len(zs), *shape[1:]), np.float32)
    for k, z in enumerate(zs):
        out[k] = slice_pattern(shape, key, z)
    return out


def unit_watermark(shape, key: str, zs: range | None = None) -> np.ndarray:
    """The pattern in [−1, 1] (×budget = the change written into the scan)."""
    return np.clip(key_pattern(shape, key, zs) / SCALE_SIGMAS, -1, 1)


@dataclass(frozen=True)
class Grid:
    """The voxel grid a watermark was embedded on (the protection record keeps it): with it, `verify` finds the
    pattern in a copy resampled onto another grid since."""
    shape: tuple
    spacing: tuple
    origin: tuple
    direction: tuple  # 9 values, row-major

    @classmethod
    def of(cls, scan: Scan) -> "Grid":
        return cls(tuple(int(n) for n in scan.shape), tuple(float(v) for v in scan.spacing),
                   tuple(float(v) for v in scan.origin), tuple(float(v) for v in np.ravel(scan.direction)))

    def as_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict) -> "Grid":
        try:
            grid = cls(*(tuple(data[k]) for k in ("shape", "spacing", "origin", "direction")))
        except (KeyError, TypeError) as exc:
            raise MedfakeError(f"not a watermark grid ({exc})") from None
        if len(grid.shape) != 3 or len(grid.spacing) != 3 or len(grid.origin) != 3 or len(grid.direction) != 9:
            raise MedfakeError("not a watermark grid (shape, spacing, origin: 3 values; direction: 9)")
        return grid

    def matches(self, scan: Scan) -> bool:
        """The scan lies on this grid (to 1e-4 mm: a DICOM round trip keeps it)."""
        other = Grid.of(scan)
        return self.shape == other.shape and all(np.allclose(getattr(self, f), getattr(other, f), atol=1e-4)
                                                 for f in ("spacing", "origin", "direction"))


def mapped_watermark(grid: Grid, scan: Scan, key: str, zs: range) -> np.ndarray:
    """The unit watermark embedded on `grid`, seen on slices `zs` of `scan`'s grid: each voxel's world position
    read back on the watermarked grid by linear interpolation (0 outside it)."""
    source = Scan(np.zeros((1, 1, 1), np.int16), grid.spacing, grid.origin, np.reshape(grid.direction, (3, 3)))
    unit_steps = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    mapped = source.world_to_continuous(scan.voxel_to_world(unit_steps))
    offset, steps = mapped[0], mapped[1:] - mapped[0]  # where voxel 0 lands, and one step along z, y, x
    yy, xx = np.mgrid[0:scan.shape[1], 0:scan.shape[2]].astype(np.float64)
    out = np.zeros((len(zs), *scan.shape[1:]), np.float32)
    for k, z in enumerate(zs):
        coords = [offset[a] + steps[0, a] * z + steps[1, a] * yy + steps[2, a] * xx for a in range(3)]
        lo = max(int(np.floor(coords[0].min())), 0)
        hi = min(int(np.ceil(coords[0].max())), grid.shape[0] - 1)
        if lo > hi:
            continue
        block = unit_watermark(grid.shape, key, range(lo, hi + 1))
        out[k] = ndimage.map_coordinates(block, [coords[0] - lo, coords[1], coords[2]], order=1, cval=0.0)
    return out


def slice_chunks(depth: int, size: int = CHUNK_SLICES):
    """Runs of `size` slices covering 0..depth: everything here works a chunk at a time, so memory stays
    bounded on a 512×512×300 CT."""
    return [range(z0, min(z0 + size, depth)) for z0 in range(0, depth, size)]


def embed(scan: Scan, key: str, budget_hu: float, allowed: np.ndarray) -> Scan:
    """The watermarked copy of `scan` (same dtype; the change is ≤ budget at every stored voxel, 0 outside
    `allowed`)."""
    from medfake.protect.optimize import project_stored

    out = np.empty_like(scan.voxels)
    for zs in slice_chunks(scan.shape[0]):
        part = slice(zs.start, zs.stop)
        delta = np.where(allowed[part], np.float32(budget_hu) * unit_watermark(scan.shape, key, zs), np.float32(0))
        out[part] = project_stored(scan.voxels[part], delta, budget_hu)
    return scan.with_voxels(out)


def highpass(volume: np.ndarray) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    return v - ndimage.gaussian_filter(v, (0, HIGHPASS_SIGMA_VOXELS, HIGHPASS_SIGMA_VOXELS))


def window_voxels(spacing, window_mm: float = WINDOW_MM) -> tuple[int, int, int]:
    """An odd window edge per axis, at least one voxel."""
    return tuple(max(1, int(round(window_mm / s)) // 2 * 2 + 1) for s in spacing)


@dataclass
class Evidence:
    """A scan's high-pass residual against the high-pass of a key's pattern, over its lung voxels, made a run
    of slices at a time (never the whole volume in float); `reference` is the watermark's amplitude over all
    of them (HU of the unit pattern's high-pass found in the residual). With `grid` (the watermarked grid, when
    the scan has been resampled since) the pattern is the one embedded there, mapped onto the scan's grid."""
    scan: Scan
    key: str
    lung: np.ndarray
    expected_volume: np.ndarray | None = None  # the whole `expected_residual`, when a caller reuses it
    grid: Grid | None = None  # set only when the scan is not on it (`evidence` drops a matching grid)
    reference: float = 0.0
    correlation: float = 0.0

    @property
    def shape(self) -> tuple:
        return self.scan.shape

    @property
    def spacing(self) -> tuple:
        return self.scan.spacing

    def residual(self, zs: range) -> np.ndarray:
        part = np.asarray(self.scan.voxels[zs.start: zs.stop])
        return np.clip(highpass(part), -RESIDUAL_CLIP_HU, RESIDUAL_CLIP_HU)

    def expected(self, zs: range) -> np.ndarray:
        if self.expected_volume is not None:
            return self.expected_volume[zs.start: zs.stop]
        if self.grid is not None:
            return highpass(mapped_watermark(self.grid, self.scan, self.key, zs))
        return expected_residual(self.shape, self.key, zs)

    def sums_in(self, box: tuple[slice, ...]) -> tuple[float, float, float, int]:
        zs = range(*box[0].indices(self.shape[0])[:2])
        m = self.lung[box]
        r = self.residual(zs)[:, box[1], box[2]][m].astype(np.float64)
        h = self.expected(zs)[:, box[1], box[2]][m].astype(np.float64)
        return float((r * h).sum()), float((r * r).sum()), float((h * h).sum()), int(m.sum())


def expected_residual(shape, key: str, zs: range | None = None) -> np.ndarray:
    """What the watermark leaves in the high-pass residual (up to its amplitude), on slices `zs`."""
    return highpass(unit_watermark(shape, key, zs))


def evidence(scan: Scan, key: str, lung: np.ndarray | None = None, expected: np.ndarray | None = None,
             grid: Grid | None = None) -> Evidence:
    """`expected`: `expected_residual(scan.shape, key)` when the caller checks many scans of one shape; `grid`:
    the watermarked grid, when the scan may have been resampled since."""
    from medfake.lungmask import lung_mask

    lung = lung_mask(scan) if lung is None else lung
    grid = None if grid is None or grid.matches(scan) else grid
    ev = Evidence(scan, require_key(key), np.asarray(lung, bool), expected, grid)
    rh = rr = hh = 0.0
    for zs in slice_chunks(scan.shape[0]):
        a, b, c, _ = ev.sums_in((slice(zs.start, zs.stop), slice(None), slice(None)))
        rh, rr, hh = rh + a, rr + b, hh + c
    ev.reference = rh / hh if hh > 0 else 0.0
    ev.correlation = rh / np.sqrt(rr * hh) if rr * hh > 0 else 0.0
    return ev


def site_box(shape, spacing, zyx, window_mm: float = WINDOW_MM) -> tuple[slice, ...]:
    half = [w // 2 for w in window_voxels(spacing, window_mm)]
    return tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, n)) for c, h, n in zip(zyx, half, shape))


def site_score(ev: Evidence, zyx, window_mm: float = WINDOW_MM) -> float:
    """The watermark's local amplitude (HU per unit of the pattern's high-pass) in a window centred at `zyx`
    over lung voxels: about the scan's `reference` (~0.95 × budget) where untouched, ~0 where a tamperer
    rewrote the voxels or with a wrong key; 0 where the window holds no lung."""
    rh, _, hh, _ = ev.sums_in(site_box(ev.shape, ev.spacing, zyx, window_mm))
    return float(rh / hh) if hh > 0 else 0.0


@dataclass
class Verification:
    key_fingerprint: str
    present: bool
    global_correlation: float
    reference_amplitude: float
    grid_step_zyx: tuple
    window_zyx: tuple
    strength: np.ndarray  # coarse grid: local amplitude / the scan's (1 intact, 0 gone; NaN: not enough lung)
    drop_z: np.ndarray  # (reference − local amplitude) / its standard error
    centers_zyx: list  # per grid axis, the voxel index of each cell centre
    findings: list = field(default_factory=list)


def strength_grid(ev: Evidence, window_mm: float = WINDOW_MM, calibrate: bool = True):
    """Local amplitude of the watermark on a grid of half-window steps, relative to the scan's, and how many
    standard errors it lies below it (NaN where the window is mostly not lung). Grid rows are computed a few
    at a time on the slices their windows reach. `calibrate=False`: the z-scores of the error model alone (what
    benchmarks/protect_watermark_design.py reports beside the calibrated ones)."""
    window = window_voxels(ev.spacing, window_mm)
    step = tuple(max(1, w // 2) for w in window)
    centers = [np.arange(min(s // 2, n - 1), n, s) for s, n in zip(step, ev.shape)]
    sums = [np.empty((len(centers[0]), len(centers[1]), len(centers[2])), np.float64) for _ in range(4)]
    half, rows = window[0] // 2, max(1, CHUNK_SLICES // step[0])
    for k0 in range(0, len(centers[0]), rows):
        zc = centers[0][k0: k0 + rows]
        zs = range(max(0, int(zc[0]) - half), min(ev.shape[0], int(zc[-1]) + half + 1))
        m = ev.lung[zs.start: zs.stop].astype(np.float32)
        r, h = ev.residual(zs), ev.expected(zs)
        pick = np.ix_(zc - zs.start, centers[1], centers[2])
        local = lambda a: ndimage.uniform_filter(a, window, mode="constant")[pick]  # noqa: E731
        for total, a in zip(sums, (r * h * m, r * r * m, h * h * m, m)):
            total[k0: k0 + len(zc)] = local(a)
    rh, rr, hh, share = sums
    count = share * np.prod(window)
    with np.errstate(invalid="ignore", divide="ignore"):
        amplitude = rh / hh
        stderr = np.sqrt(rr / (hh * count) * NOISE_CORRELATION)
        strength = amplitude / ev.reference if ev.reference > 0 else np.zeros_like(amplitude)
        drop_z = (ev.reference - amplitude) / stderr
    bad = (count < MIN_LUNG_FRACTION * np.prod(window)) | ~np.isfinite(strength) | ~np.isfinite(drop_z)
    strength[bad], drop_z[bad] = np.nan, np.nan
    if calibrate and (~bad).sum() >= 20:
        # self-calibrated: on a resampled copy the residual is smoother and its windows noisier than the model
        # above (benchmarks/protect_watermark_design.py: robust spread up to 1.45, ~1.0 on the watermarked
        # grid); never narrowed
        drop_z /= max(1.0, robust_sigma(drop_z[~bad]))
    return strength.astype(np.float32), drop_z.astype(np.float32), centers, step, window


def verify(scan: Scan, key: str, lung: np.ndarray | None = None, window_mm: float = WINDOW_MM,
           ev: Evidence | None = None, grid: Grid | None = None) -> Verification:
    """Where the key's watermark is present and where it collapsed (findings: connected groups of cells whose
    strength fell below TAMPERED_STRENGTH and DROP_Z standard errors below the scan's). `grid`: the watermarked
    grid (the protection record's), for a scan resampled since."""
    ev = evidence(scan, key, lung, grid=grid) if ev is None else ev
    if not ev.lung.any():
        raise MedfakeError("no lungs found in this scan: the watermark is checked in lung voxels", scan.path)
    strength, drop_z, centers, step, window = strength_grid(ev, window_mm)
    present = ev.correlation >= PRESENT_CORRELATION
    result = Verification(key_fingerprint(key), bool(present), float(ev.correlation), float(ev.reference), step,
                          window, strength, drop_z, [c.tolist() for c in centers])
    if present:
        low = np.isfinite(strength) & (strength < TAMPERED_STRENGTH) & (drop_z > DROP_Z)
        result.findings = collapsed_regions(scan, low, strength, drop_z, centers)
    return result


def collapsed_regions(scan: Scan, low: np.ndarray, strength, drop_z, centers) -> list[dict]:
    """Connected groups (26-neighbourhood on the grid) of flagged cells, most significant first."""
    labels, count = ndimage.label(low, structure=np.ones((3, 3, 3), bool))
    findings = []
    for index in range(1, count + 1):
        inside = labels == index
        cells, weights = np.argwhere(inside), drop_z[inside]
        grid = (cells * weights[:, None]).sum(0) / weights.sum()
        zyx = [float(np.interp(g, np.arange(len(c)), c)) for g, c in zip(grid, centers)]
        findings.append({"voxel_zyx": [round(v, 1) for v in zyx],
                         "world_xyz": [round(float(v), 2) for v in scan.voxel_to_world(zyx)],
                         "cells": int(inside.sum()), "min_strength": round(float(strength[inside].min()), 3),
                         "max_drop_z": round(float(weights.max()), 2)})
    return sorted(findings, key=lambda f: -f["max_drop_z"])


def verification_record(result: Verification) -> dict:
    return {"key_fingerprint": result.key_fingerprint, "watermark_found": result.present,
            "verdict": verdict(result), "global_correlation": round(result.global_correlation, 4),
            "reference_amplitude": round(result.reference_amplitude, 3),
            "present_correlation": PRESENT_CORRELATION, "tampered_strength": TAMPERED_STRENGTH, "drop_z": DROP_Z,
            "window_voxels_zyx": list(result.window_zyx), "grid_step_voxels_zyx": list(result.grid_step_zyx),
            "scored_cells": int(np.isfinite(result.strength).sum()),
            "median_cell_strength": float(np.nanmedian(result.strength)) if np.isfinite(result.strength).any()
            else None, "findings": result.findings}


def verdict(result: Verification) -> str:
    if not result.present:
        return ("no watermark found (wrong key, never watermarked, resampled onto another grid: give the protection "
                "record, or processed beyond what the watermark survives)")
    if result.findings:
        return f"watermark found; {len(result.findings)} region(s) where it collapsed (possible tampering)"
    return "watermark found intact"
