"""Histogram equalization + normalization of HU cubes to the generator's [-1, 1] range, and back.

Fitted on the training cubes, saved with the training set and copied into every model folder. Unlike
CT-GAN's pickle (cdf running to 32³, values in about [-0.5, 0.5]) the map is a strictly increasing
piecewise-linear function HU → [-1, 1], so `to_hu(to_net(v)) == v` inside the fitted range (exactly up to
float rounding) and values outside it are clipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError

BINS = 2048
FLOOR = 1e-3  # share of a uniform histogram mixed in so the cdf is strictly increasing (invertible)


@dataclass
class Equalizer:
    edges: np.ndarray  # HU, increasing, BINS + 1 values
    cdf: np.ndarray  # 0..1 at the edges, strictly increasing
    mean: float  # mean equalized value of the training cubes (for the record)

    @classmethod
    def fit(cls, cubes: np.ndarray, bins: int = BINS, sample: int = 4_000_000, seed: int = 0) -> "Equalizer":
        values = np.asarray(cubes, dtype=np.float32).ravel()
        if values.size > sample:
            values = np.random.default_rng(seed).choice(values, sample, replace=False)
        lo, hi = float(values.min()), float(values.max())
        if hi - lo < 1.0:
            hi = lo + 1.0
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        density = counts / counts.sum() * (1 - FLOOR) + FLOOR / bins
        cdf = np.concatenate([[0.0], np.cumsum(density)])
        cdf /= cdf[-1]
        eq = cls(edges.astype(np.float64), cdf, 0.0)
        eq.mean = float(np.mean(eq.to_net(values[: min(values.size, 1_000_000)])))
        return eq

    def to_net(self, hu: np.ndarray) -> np.ndarray:
        """HU → [-1, 1] (float32)."""
        return (2.0 * np.interp(hu, self.edges, self.cdf) - 1.0).astype(np.float32)

    def to_hu(self, net: np.ndarray) -> np.ndarray:
        """[-1, 1] → HU (float32); the exact inverse of `to_net` inside the fitted range."""
        u = (np.clip(np.asarray(net, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0
        return np.interp(u, self.cdf, self.edges).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, edges=self.edges, cdf=self.cdf, mean=np.float64(self.mean))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Equalizer":
        path = Path(path)
        if not path.exists():
            raise MedfakeError("missing equalizer (equalizer.npz)", path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["edges"], data["cdf"], float(data["mean"]))
        except (KeyError, ValueError, OSError) as exc:
            raise MedfakeError(f"not a medfake equalizer ({exc.__class__.__name__})", path) from None
