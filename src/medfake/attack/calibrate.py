"""Per-organ calibration of a pair of fields to a requested Dice drop, with segmenter forward passes only (both
modes end with it: the optimised fields and the generator's proposals).

A smooth partition of unity over the slice: every pixel within `margin` pixels of an organ (S(x) ∪ the labels)
goes to the nearest organ; the indicator of organ k's share, blurred with σ = `sigma` pixels, is its weight w_k,
and the background's is w_0 = 1 − Σ_k w_k. The calibrated fields are

    u_s = F((w_0 + Σ_k s_k w_k) · u),   b_s = (w_0 + Σ_k s_k w_k) · b,

F the folding guard (fields.without_folding: ‖∇u‖_F < 0.9, so det(I + ∇u) > 0): s = 1 leaves the fields as they
are, s_k scales them on organ k only. Each organ's Dice drop depends mainly on its own s_k, so all the s_k are
bisected at once (`bisect_many`): one pass of the target per iteration, `iters` passes at most.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medfake.attack.fields import without_folding
from medfake.attack.problem import Problem, evaluate, relative_drops


def organ_weights(problem: Problem, margin: int = 4, sigma: float = 3.0) -> torch.Tensor:
    """The organs' weights w_k, (N, K, H, W): every pixel of the organ region (S(x) ∪ labels, dilated by `margin`)
    goes to its nearest organ, and each organ's share is blurred (σ = `sigma` pixels); Σ_k w_k ≤ 1, and an
    organ's weight is ~1 on itself and 0 on the others' cores (little cross-talk between the s_k)."""
    pred, labels = problem.clean_pred.cpu().numpy(), problem.slices.classes
    count = problem.classes - 1
    share = np.zeros((len(pred), count) + pred.shape[1:], np.float32)
    for i in range(len(pred)):
        distance = np.stack([ndimage.distance_transform_edt(~((pred[i] == k) | (labels[i] == k)))
                             if ((pred[i] == k) | (labels[i] == k)).any() else np.full(pred.shape[1:], np.inf)
                             for k in range(1, count + 1)])
        nearest = distance.argmin(axis=0)
        inside = distance.min(axis=0) <= margin
        for k in range(count):
            share[i, k] = inside & (nearest == k)
    weights = ndimage.gaussian_filter(share, sigma=(0, 0, sigma, sigma))
    weights[weights < 0.01] = 0.0
    return torch.from_numpy(weights).to(problem.device)


def scale_map(weights: torch.Tensor, scales) -> torch.Tensor:
    """w_0 + Σ_k s_k w_k = 1 + Σ_k (s_k − 1) w_k, (N, 1, H, W)."""
    s = torch.as_tensor(np.asarray(scales, dtype=np.float32), device=weights.device)
    return 1.0 + ((s - 1.0)[None, :, None, None] * weights).sum(dim=1, keepdim=True)


def scaled_fields(u: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, scales) -> tuple[torch.Tensor, torch.Tensor]:
    factor = scale_map(weights, scales)
    return without_folding(factor * u), factor * b


def bisect_many(fn, goal: float, low: float, high: float, iters: int, count: int, tolerance: float = 0.005):
    """Simultaneous bisections: fn maps `count` arguments to `count` values (NaN: nothing to reach), value k
    increasing in argument k and mainly independent of the others. Each argument is bisected on its own
    bracket [low, high], starting at the middle, while its value is farther than `tolerance` from `goal`; all
    are evaluated together, and the evaluated set with the smallest squared distance to the goal is returned
    (its values were measured together: no cross-talk left unseen). Returns (arguments, fn calls ≤ iters)."""
    lo, hi = np.full(count, float(low)), np.full(count, float(high))
    x, best, best_score = 0.5 * (lo + hi), None, np.inf
    for calls in range(1, iters + 1):
        value = np.asarray(fn(x), dtype=float)
        gap = np.abs(value - goal)
        score = float(np.nansum(gap ** 2))
        if score < best_score:
            best, best_score = x.copy(), score
        active = np.isfinite(value) & (gap > tolerance)
        if not active.any():
            break
        below = value < goal
        lo, hi = np.where(active & below, x, lo), np.where(active & ~below, x, hi)
        x = np.where(active, 0.5 * (lo + hi), x)
    return best, calls


def bisect(fn, goal: float, low: float, high: float, iters: int, tolerance: float = 0.005) -> float:
    """bisect_many for one increasing scalar function."""
    best, _ = bisect_many(lambda x: [fn(float(x[0]))], goal, low, high, iters, 1, tolerance)
    return float(best[0])


def calibrate_to_drop(problem: Problem, u: torch.Tensor, b: torch.Tensor, drop: float, weights: torch.Tensor,
                      iters: int = 8, high: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The organ scales bisected so that every organ's relative Dice drop (over the stack, against the labels
    warped by u) is `drop`: s_k = d_k·t_k, t_k in [0, high] (4: a proposal may fall short of the drop);
    d_k = −1 for an organ whose Dice rises under the fields as proposed (its drop at s = 1 is negative: the
    opposite sign is searched), none for an organ with no drop to reach (absent, or not segmented at all: its s
    stays 1), else 1. Returns the calibrated fields and {scales, passes} (1 + `iters` target
    passes at most)."""

    def drops(scales):
        after = evaluate(problem, *scaled_fields(u, b, weights, scales), "").dice_after
        return relative_drops(problem.dice_before, after)

    at_one = drops(np.ones(problem.classes - 1))
    direction = np.where(np.isnan(at_one), 0.0, np.where(at_one < 0, -1.0, 1.0))
    unscaled = direction == 0  # kept as proposed
    amounts, passes = bisect_many(lambda t: drops(np.where(unscaled, 1.0, direction * t)), drop, 0.0, high, iters,
                                  problem.classes - 1)
    scales = np.where(unscaled, 1.0, direction * amounts)
    u_s, b_s = scaled_fields(u, b, weights, scales)
    return u_s, b_s, {"scales": [round(float(s), 4) for s in scales], "passes": passes + 1}
