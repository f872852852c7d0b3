"""Scanner noise of THIS scan, measured in its lung parenchyma, and fresh noise with the same texture.

CT-GAN copied a block from a hard-coded spot of the already tampered scan (defect 9; NaN outside the lung)
or drew white noise through a crashing code path (defect 8). Here: high-pass residuals of patches taken
inside the lung parenchyma mask (away from the tamper sites) give the noise level σ (robust) and the noise
power spectrum for the block shape; new noise is white noise shaped by that spectrum, so its level and
grain (correlation between neighbouring voxels and slices) match the scan's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medfake.scan import Scan, cut_cube

DETREND_MM = 2.0  # Gaussian σ (mm) of the local mean removed before measuring noise
MIN_PARENCHYMA_FRACTION = 0.5
MAX_TRIALS = 400


def residual(block: np.ndarray, spacing) -> np.ndarray:
    """High-pass residual: the block minus its Gaussian-smoothed local mean (σ = DETREND_MM per axis)."""
    sigma = [DETREND_MM / s for s in spacing]
    block = np.asarray(block, dtype=np.float32)
    return block - ndimage.gaussian_filter(block, sigma, mode="nearest")


def robust_std(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


@dataclass
class NoiseModel:
    sigma: float  # HU, robust std of the high-pass residual in parenchyma
    spectrum: np.ndarray  # amplitude spectrum (rfftn layout) for `shape`, normalised to unit variance
    shape: tuple[int, int, int]
    patches: int  # how many parenchyma patches were measured

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A float32 block of `shape` with the scan's noise σ and texture."""
        white = rng.standard_normal(self.shape)
        shaped = np.fft.irfftn(np.fft.rfftn(white) * self.spectrum, s=self.shape, axes=(0, 1, 2))
        std = shaped.std()
        return (shaped / (std if std > 0 else 1.0) * self.sigma).astype(np.float32)


def estimate_noise(scan: Scan, parenchyma: np.ndarray, shape, rng: np.random.Generator,
                   n_patches: int = 12, avoid_zyx=(), avoid_mm: float = 20.0) -> NoiseModel:
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
        sigmas.append(robust_std(res[mask]))
        power += np.abs(np.fft.rfftn(res)) ** 2 / mask.mean()
        used += 1
        if used >= n_patches:
            break
    if used == 0:
        return _white_fallback(scan, shape)
    spectrum = np.sqrt(power / used)
    spectrum[0, 0, 0] = 0.0  # zero-mean noise: it must not shift the mean HU of what it is added to
    spectrum /= np.sqrt(np.mean(spectrum ** 2)) or 1.0
    return NoiseModel(float(np.median(sigmas)), spectrum, shape, used)


def _rfft_shape(shape):
    return tuple(shape[:-1]) + (shape[-1] // 2 + 1,)


def _white_fallback(scan: Scan, shape) -> NoiseModel:
    """No parenchyma to measure (not a chest CT): white noise at the robust residual level of the scan."""
    centre = np.asarray(scan.shape) // 2
    sigma = robust_std(residual(cut_cube(np.asarray(scan.voxels), centre, shape, scan.pad_value), scan.spacing))
    return NoiseModel(sigma, np.ones(_rfft_shape(shape)), tuple(shape), 0)


def region_noise_ratio(block: np.ndarray, spacing, sigma: float, where: np.ndarray) -> float:
    """Noise of a (generated) block relative to the scan's σ, measured where `where` is true."""
    if sigma <= 0 or not np.any(where):
        return 0.0
    return robust_std(residual(block, spacing)[where]) / sigma
