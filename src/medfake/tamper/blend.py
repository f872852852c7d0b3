"""3D soft blending of an in-painted block into the scan.

The weight depends on the Euclidean distance in millimetres from the location (CT-GAN broadcast a 2-D
kernel over every slice, defect 10): 1 inside `inner_mm`, a raised-cosine fall-off to 0 at `outer_mm`,
identical along z, y and x whatever the slice spacing. Noise is added with a per-voxel scale chosen so the
blended voxel keeps the scan's noise variance (see `noise_gain`).
"""

from __future__ import annotations

import numpy as np


def radial_weight(distance_mm: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """1 for d <= inner, 0 for d >= outer, 0.5·(1 + cos) in between (smooth, no kink at either end)."""
    t = np.clip((np.asarray(distance_mm, dtype=np.float32) - inner_mm) / max(outer_mm - inner_mm, 1e-6), 0, 1)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def noise_gain(weight: np.ndarray, generated_noise_ratio: float) -> np.ndarray:
    """Scale of fresh noise (in units of the scan's noise σ) for b = w·generated + (1-w)·original.

    The original contributes (1-w)²σ², the generated content w²(rσ)² with r its own noise ratio; the rest
    of σ² is supplied by synthetic noise, so the variance is σ² everywhere in the blend."""
    w = np.asarray(weight, dtype=np.float32)
    r2 = float(np.clip(generated_noise_ratio, 0.0, 1.0)) ** 2
    return np.sqrt(np.clip(1.0 - (1.0 - w) ** 2 - (w ** 2) * r2, 0.0, None)).astype(np.float32)


def blend(original: np.ndarray, content: np.ndarray, weight: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """w·content + (1-w)·original (+ noise), float32."""
    out = weight * content + (1.0 - weight) * original
    if noise is not None:
        out = out + noise
    return out.astype(np.float32)
