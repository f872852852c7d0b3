"""Scanner noise of THIS scan, measured in its lung parenchyma, and fresh noise with the same texture.

CT-GAN copied a block from a hard-coded spot of the already tampered scan (defect 9; NaN outside the lung)
or drew white noise through a crashing code path (defect 8). Here: high-pass residuals of patches taken
inside the lung parenchyma mask (away from the tamper sites) give the noise level σ (robust) and the noise
power spectrum for the block shape; new noise is white noise shaped by that spectrum, so its grain
(correlation between neighbouring voxels and slices) matches the scan's. Its level is set per location:
the noise the scan had in the flat parenchyma of that very region (noise is not stationary across a CT), and
`match_noise`/`settle_noise` bring the in-painted block to it whether the generator over- or under-shoots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medfake.scan import Scan, cut_cube
from medfake.stats import robust_sigma

DETREND_MM = 2.0  # Gaussian σ (mm) of the local mean removed before measuring noise
MIN_PARENCHYMA_FRACTION = 0.5
MAX_TRIALS = 400
FLAT_MAX_HU = -750.0
PARENCHYMA_SOFT_HU = -600.0  # tone_down fades out between FLAT_MAX_HU and this
FLAT_MARGIN_MM = 2.0
MIN_FLAT_VOXELS = 200
FULL_WEIGHT = 0.99  # blend weight from which a voxel counts as in-painted (its noise is the generator's)


def residual(block: np.ndarray, spacing) -> np.ndarray:
    """High-pass residual: the block minus its Gaussian-smoothed local mean (σ = DETREND_MM per axis)."""
    sigma = [DETREND_MM / s for s in spacing]
    block = np.asarray(block, dtype=np.float32)
    return block - ndimage.gaussian_filter(block, sigma, mode="nearest")


@dataclass
class ParenchymaNoise:
    """The scanner noise of one scan's lung parenchyma: its level and its texture (spectrum) for one block
    shape; `sample` draws fresh noise like it."""

    sigma: float  # HU, robust std of the high-pass residual in parenchyma
    spectrum: np.ndarray  # amplitude spectrum (rfftn layout) for `shape`, normalised to unit variance
    shape: tuple[int, int, int]
    patches: int  # how many parenchyma patches were measured

    def sample(self, rng: np.random.Generator, sigma: float | None = None) -> np.ndarray:
        """A float32 block of `shape` with the scan's noise texture and σ (default: the scan's median σ)."""
        white = rng.standard_normal(self.shape)
        shaped = np.fft.irfftn(np.fft.rfftn(white) * self.spectrum, s=self.shape, axes=(0, 1, 2))
        std = shaped.std()
        return (shaped / (std if std > 0 else 1.0) * (self.sigma if sigma is None else sigma)).astype(np.float32)


def estimate_noise(scan: Scan, parenchyma: np.ndarray, shape, rng: np.random.Generator,
                   n_patches: int = 12, avoid_zyx=(), avoid_mm: float = 20.0) -> ParenchymaNoise:
    """Measure noise in up to `n_patches` blocks of `shape` that are mostly parenchyma, away from `avoid_zyx`."""
    shape = tuple(int(s) for s in shape)
    candidates = np.argwhere(parenchyma[:: 2, :: 4, :: 4]) * np.array([2, 4, 4])
    if len(candidates) == 0:
        return _white_fallback(scan, shape)
    spacing = np.asarray(scan.spacing)
    avoid = np.atleast_2d(np.asarray(avoid_zyx, dtype=float)) if len(avoid_zyx) else np.zeros((0, 3))
    power, sigmas, used = np.zeros(_rfft_shape(shape)), [], 0
    for index in rng.choice(len(candidates), size=min(MAX_TRIALS, len(candidates)), replace=False):
        centre = candidates[index]
        if len(avoid) and np.min(np.linalg.norm((avoid - centre) * spacing, axis=1)) < avoid_mm:
            continue
        mask = cut_cube(parenchyma, centre, shape, False)
        if mask.mean() < MIN_PARENCHYMA_FRACTION:
            continue
        res = residual(cut_cube(np.asarray(scan.voxels), centre, shape, scan.pad_value), scan.spacing)
        res = np.where(mask, res, 0.0)
        sigmas.append(robust_sigma(res[mask]))
        power += np.abs(np.fft.rfftn(res)) ** 2 / mask.mean()
        used += 1
        if used >= n_patches:
            break
    if used == 0:
        return _white_fallback(scan, shape)
    spectrum = np.sqrt(power / used)
    spectrum[0, 0, 0] = 0.0  # zero-mean noise: it must not shift the mean HU of what it is added to
    spectrum /= np.sqrt(np.mean(spectrum ** 2)) or 1.0
    return ParenchymaNoise(float(np.median(sigmas)), spectrum, shape, used)


def _rfft_shape(shape):
    return tuple(shape[:-1]) + (shape[-1] // 2 + 1,)


def _white_fallback(scan: Scan, shape) -> ParenchymaNoise:
    """No parenchyma to measure (not a chest CT): white noise at the robust residual level of the scan."""
    centre = np.asarray(scan.shape) // 2
    sigma = robust_sigma(residual(cut_cube(np.asarray(scan.voxels), centre, shape, scan.pad_value), scan.spacing))
    return ParenchymaNoise(sigma, np.ones(_rfft_shape(shape)), tuple(shape), 0)


def flat_parenchyma(block: np.ndarray, spacing, max_hu: float = FLAT_MAX_HU, margin_mm: float = FLAT_MARGIN_MM):
    """Voxels of air-filled lung at least `margin_mm` from anything brighter (vessels, nodules, pleura): there
    the high-pass residual is scanner noise, not the edge of a structure."""
    smooth = ndimage.gaussian_filter(np.asarray(block, dtype=np.float32), [1.0 / s for s in spacing])
    flat = ndimage.distance_transform_edt(smooth < max_hu, sampling=spacing) > margin_mm
    for axis, s in enumerate(spacing):  # the detrend is biased within ~2σ of the block's faces
        edge = min(int(np.ceil(2 * DETREND_MM / s)), (flat.shape[axis] - 1) // 2)
        index = [slice(None)] * 3
        index[axis] = np.r_[0:edge, flat.shape[axis] - edge:flat.shape[axis]]
        flat[tuple(index)] = False
    return flat


def noise_level(block: np.ndarray, spacing, where: np.ndarray) -> float | None:
    """Robust σ of the high-pass residual where `where` holds, or None with too few voxels to tell."""
    if np.count_nonzero(where) < MIN_FLAT_VOXELS:
        return None
    return robust_sigma(residual(block, spacing)[where])


def inpainted_flat(block: np.ndarray, spacing, weight: np.ndarray) -> np.ndarray:
    """Flat parenchyma of the part a paste of blend `weight` fully replaces: where a site's noise is measured."""
    return flat_parenchyma(block, spacing) & (weight >= FULL_WEIGHT)


def site_sigma(original: np.ndarray, spacing, weight: np.ndarray, fallback: float) -> float:
    """The noise a site's block had before tampering: in the flat parenchyma of its in-painted part, else of
    the whole block (a removed nodule leaves no flat parenchyma inside), else `fallback`."""
    flat = flat_parenchyma(original, spacing)
    return (noise_level(original, spacing, flat & (weight >= FULL_WEIGHT))
            or noise_level(original, spacing, flat) or fallback)


def noise_ratio(content: np.ndarray, spacing, sigma: float | None, where: np.ndarray) -> float:
    """The generator's own noise ratio r = σ_content / σ measured in `where`; 0 when either is unknown."""
    if sigma is None or sigma <= 0:
        return 0.0
    level = noise_level(content, spacing, where)
    return 0.0 if level is None else level / sigma


def match_noise(content: np.ndarray, spacing, sigma: float, where: np.ndarray) -> tuple[np.ndarray, float]:
    """(content, r) for the noise ratio measured in `where` (flat parenchyma of the in-painted part): see
    `match_ratio`."""
    return match_ratio(content, spacing, noise_ratio(content, spacing, sigma, where))


def match_ratio(content, spacing, r: float, tone=None):
    """(content, r after) for a measured noise ratio r: a generator noisier than the scan (r > 1, its
    high-frequency artefacts) has its high-pass part scaled down by 1/r, so r becomes 1; a smoother one is
    topped up later with fresh noise. `tone`: the tone-down (default `tone_down`; the protection surrogate
    passes its differentiable torch twin)."""
    if r <= 1.0:
        return content, r
    return (tone or tone_down)(content, spacing, 1.0 - 1.0 / r), 1.0


def lung_likeness(smooth):
    """1 in air-filled lung (smoothed HU below FLAT_MAX_HU), 0 from PARENCHYMA_SOFT_HU up, linear between;
    for numpy arrays and torch tensors alike."""
    return ((PARENCHYMA_SOFT_HU - smooth) / (PARENCHYMA_SOFT_HU - FLAT_MAX_HU)).clip(0.0, 1.0)


def tone_down(block: np.ndarray, spacing, amount) -> np.ndarray:
    """Remove `amount` (scalar or per voxel) of the high-pass part, in air-filled lung only: a nodule or
    vessel keeps its edges (a small nodule is almost all high-pass at this scale)."""
    smooth = ndimage.gaussian_filter(np.asarray(block, dtype=np.float32), [1.0 / s for s in spacing])
    return (block - amount * lung_likeness(smooth) * residual(block, spacing)).astype(np.float32)


def settle_noise(block: np.ndarray, spacing, sigma: float, where: np.ndarray, weight: np.ndarray,
                 fresh, rounds: int = 3, tolerance: float = 0.02) -> np.ndarray:
    """Final check on the blended block: where the noise σ measured in `where` (flat parenchyma of the
    in-painted part) still differs from `sigma`, scale the high-pass part down or add more of `fresh()` (a
    noise block at `sigma`, drawn only when needed), in proportion to the blend weight so the untouched scan around is left as it is.
    Toning down is not exact for correlated noise (part of the removed residual comes back in the next
    high-pass), hence a few rounds."""
    for _ in range(rounds):
        level = noise_level(block, spacing, where)
        if level is None or sigma <= 0 or level == 0 or abs(level / sigma - 1.0) <= tolerance:
            return block
        q = level / sigma
        if q < 1.0:
            return (block + weight * np.sqrt(1.0 - q * q) * fresh()).astype(np.float32)
        block = tone_down(block, spacing, weight * (1.0 - 1.0 / q))
    return block
