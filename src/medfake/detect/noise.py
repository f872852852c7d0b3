"""Noise-residual statistics: a tampered region rarely carries the scanner's noise texture.

Per pixel: the high-pass residual r = x − G_σ(x), its local energy s = log √mean_w(r²) in a w×w window,
and a context bin (local intensity × local gradient). Training fits the mean and spread of s per bin on
genuine patches; the anomaly of a pixel is its squared z-score, so both too-smooth (in-painted, GAN-made)
and too-noisy (pasted from another scan) areas stand out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medfake.stats import robust_sigma

NOISE_WINDOW = (-1200.0, 800.0)  # keep lung parenchyma unclipped: its noise is the evidence
INTENSITY_BINS = 12
GRADIENT_BINS = 6


def local_features(patches01: np.ndarray, window: int = 7, sigma: float = 1.0) -> tuple[np.ndarray, ...]:
    """(log local noise energy, local mean, local gradient magnitude), each (N, P, P)."""
    x = patches01[:, 0].astype(np.float32)
    smooth = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma))
    energy = ndimage.uniform_filter((x - smooth) ** 2, size=(1, window, window))
    log_energy = 0.5 * np.log(energy + 1e-10)
    mean = ndimage.uniform_filter(smooth, size=(1, window, window))
    gradient = np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    return log_energy, mean, ndimage.uniform_filter(gradient, size=(1, window, window))


@dataclass
class NoiseStatistics:
    """Per context bin, the typical log noise energy of genuine patches and its robust spread."""

    gradient_edges: np.ndarray  # (GRADIENT_BINS - 1,) quantile edges
    mean: np.ndarray  # (INTENSITY_BINS, GRADIENT_BINS)
    spread: np.ndarray  # same shape

    def bins(self, mean: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip((mean * INTENSITY_BINS).astype(int), 0, INTENSITY_BINS - 1)
        return i, np.searchsorted(self.gradient_edges, gradient)

    def anomaly_maps(self, patches01: np.ndarray) -> np.ndarray:
        log_energy, mean, gradient = local_features(patches01)
        i, g = self.bins(mean, gradient)
        z = (log_energy - self.mean[i, g]) / self.spread[i, g]
        return np.minimum(z ** 2, 100.0).astype(np.float32)

    def state(self) -> dict:
        return {"gradient_edges": self.gradient_edges.tolist(), "mean": self.mean.tolist(), "spread": self.spread.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "NoiseStatistics":
        return cls(*(np.asarray(state[k], dtype=np.float64) for k in ("gradient_edges", "mean", "spread")))


def fit_noise_statistics(patches01: np.ndarray, pixels_per_patch: int = 2000, seed: int = 0) -> NoiseStatistics:
    """Per-bin mean and robust spread (1.4826·MAD) of the log noise energy over genuine patches; empty
    bins fall back to the pooled statistics of their intensity row, then to the global ones."""
    rng = np.random.default_rng(seed)
    log_energy, mean, gradient = local_features(patches01)
    count = log_energy[0].size
    pick = np.stack([rng.choice(count, size=min(pixels_per_patch, count), replace=False) for _ in range(len(patches01))])
    take = lambda a: np.take_along_axis(a.reshape(len(a), -1), pick, axis=1).ravel()  # noqa: E731
    e, m, g = take(log_energy), take(mean), take(gradient)
    edges = np.quantile(g, np.linspace(0, 1, GRADIENT_BINS + 1)[1:-1])
    model = NoiseStatistics(edges, np.zeros((INTENSITY_BINS, GRADIENT_BINS)), np.ones((INTENSITY_BINS, GRADIENT_BINS)))
    i, j = model.bins(m, g)
    global_stats = _robust(e)
    for a in range(INTENSITY_BINS):
        row = e[i == a]
        row_stats = _robust(row) if len(row) >= 50 else global_stats
        for b in range(GRADIENT_BINS):
            cell = e[(i == a) & (j == b)]
            model.mean[a, b], model.spread[a, b] = _robust(cell) if len(cell) >= 50 else row_stats
    return model


def _robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, max(robust_sigma(values), 1e-3)
