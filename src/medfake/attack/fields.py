"""The attack transform and its measures.

Composition: x̃ = warp(x, u) + b, i.e. x̃(p) = x(p + u(p)) + b(p): the image is resampled at the displaced
positions (bilinear, `grid_sample`, border padding) and the bias field is then added in the deformed frame.
u is in pixels of the model grid, (dx, dy) per pixel; b and x are in intensity-normalised units (the scan's
attacked slices z-scored: (HU − mean) / std), so b in HU is b · std.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def identity_grid(height: int, width: int, device=None) -> torch.Tensor:
    """Pixel coordinates (x, y) of every pixel, shape (1, H, W, 2)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys], dim=-1)[None]


def warp(image: torch.Tensor, u: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """image (B,C,H,W) sampled at p + u(p); u (B,2,H,W) in pixels. A zero field returns the image exactly."""
    _, _, height, width = image.shape
    grid = identity_grid(height, width, image.device) + u.permute(0, 2, 3, 1)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=image.device)
    return F.grid_sample(image, grid * scale - 1.0, mode=mode, padding_mode="border", align_corners=True)


def transform(x: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return warp(x, u) + b


def gradient_energy(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference ‖∇f‖² over pixels and channels (the smoothness regulariser)."""
    dy = field[..., 1:, :] - field[..., :-1, :]
    dx = field[..., :, 1:] - field[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def max_gradient(field: torch.Tensor) -> float:
    dy = (field[..., 1:, :] - field[..., :-1, :]).abs().max()
    dx = (field[..., :, 1:] - field[..., :, :-1]).abs().max()
    return float(torch.maximum(dx, dy).detach())


def jacobian_determinant(u: torch.Tensor) -> torch.Tensor:
    """det(I + ∇u) of p ↦ p + u(p) by central differences, (B, H-2, W-2)."""
    dux_dx = (u[:, 0, 1:-1, 2:] - u[:, 0, 1:-1, :-2]) / 2
    dux_dy = (u[:, 0, 2:, 1:-1] - u[:, 0, :-2, 1:-1]) / 2
    duy_dx = (u[:, 1, 1:-1, 2:] - u[:, 1, 1:-1, :-2]) / 2
    duy_dy = (u[:, 1, 2:, 1:-1] - u[:, 1, :-2, 1:-1]) / 2
    return (1 + dux_dx) * (1 + duy_dy) - dux_dy * duy_dx


def without_folding(u: torch.Tensor, bound: float = 0.9) -> torch.Tensor:
    """u scaled down (per slice, only where needed) so that the Frobenius norm of its Jacobian stays below
    `bound` < 1 at every pixel: every eigenvalue of ∇u then has modulus < 1, so det(I + ∇u) > 0 — no folding,
    by construction (the same central differences as jacobian_determinant)."""
    with torch.no_grad():  # a projection: no gradient through the factor (sqrt at a zero field has none)
        dx = (u[..., 1:-1, 2:] - u[..., 1:-1, :-2]) / 2
        dy = (u[..., 2:, 1:-1] - u[..., :-2, 1:-1]) / 2
        norm = (dx.pow(2) + dy.pow(2)).sum(dim=1).amax(dim=(-2, -1)).sqrt()  # (B,)
        factor = (bound / norm.clamp_min(1e-12)).clamp(max=1.0)
    return u * factor[:, None, None, None]


def smooth_field(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A coarse control grid upsampled bicubically to full resolution (the optimize mode's parametrisation)."""
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)


# --- measures --------------------------------------------------------------------------------------------
def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """Dice of classes 1..classes-1 over the whole stack (NaN where a class is absent from both)."""
    out = np.full(classes - 1, np.nan)
    for k in range(1, classes):
        p, t = pred == k, truth == k
        total = p.sum() + t.sum()
        if total:
            out[k - 1] = 2.0 * np.logical_and(p, t).sum() / total
    return out


def soft_dice(probabilities: torch.Tensor, onehot: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-class soft Dice over the batch, (C-1,) for classes 1.. (the differentiable drop target)."""
    p, t = probabilities[:, 1:], onehot[:, 1:]
    inter = (p * t).sum(dim=(0, 2, 3))
    return (2 * inter + eps) / (p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3)) + eps)


def perceptibility(x: np.ndarray, adversarial: np.ndarray) -> float:
    """P = sqrt(mean((x̃ − x)²)) / std(x): Szegedy's RMS distortion on the intensity-normalised (z-scored)
    slices, over all pixels of all attacked slices."""
    return float(np.sqrt(np.mean((adversarial - x) ** 2)) / (np.std(x) + 1e-8))


def ssim(x_hu: np.ndarray, adversarial_hu: np.ndarray, low: float = -1000.0, high: float = 1000.0) -> float:
    """Mean SSIM over slices, on HU clipped to [low, high] (data range = high − low)."""
    from skimage.metrics import structural_similarity

    a, b = np.clip(x_hu, low, high), np.clip(adversarial_hu, low, high)
    return float(np.mean([structural_similarity(a[i], b[i], data_range=high - low) for i in range(len(a))]))
