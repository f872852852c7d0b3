"""Per-scan attacks on a segmentation model: the deformation + bias fields optimised directly (optimize mode,
also deformation-only and bias-only), hitting a requested Dice drop, and the pixel-wise L∞ baselines PGD and
FGSM (a few lines here: torchattacks needs torchvision, which this project cannot install).

Attack losses (x̃ = warp(x, u) + b, see fields.py):
  α mode:    |CE_M(S(x̃), warp(S(x), u)) − α| — the organ-masked cross-entropy between the prediction on x̃ and
             the clean prediction carried along by u (M = organs of S(x) and the labels, dilated, warped by u);
  drop mode: Σ_k (softDice_k(x̃) / softDice_k(x) − (1 − τ))² against the labels warped by u; a hard-Dice check
             every few iterations stops early once every organ is within `tolerance` of τ (else the iterate
             closest to τ), then calibrated per organ to τ (calibrate.py).
Regularisers λ₁‖∇u‖² + λ₂‖∇b‖² (0.1, 0.01; u in pixels, b in z-scored intensity), a folding penalty
λ_f·mean(relu(0.2 − det(I + ∇u))²) (λ_f = 1) and the perceptibility itself, λ_P·P (P = RMS of x̃ − x on the
z-scored slices; λ_P = 2); RMSProp (decay 0.9). With `local` (the default) both fields are multiplied by the
organ region blurred over half a control cell and fitted on that region's bounding box (+16 pixels of context
for the target): the smallest perceptibility at a given drop, and fewer pixels per iteration.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from medfake.attack.calibrate import bisect, calibrate_to_drop, organ_weights
from medfake.attack.config import AttackConfig
from medfake.attack.fields import (gradient_energy, jacobian_determinant, smooth_field, soft_dice, transform, warp,
                                   without_folding)
from medfake.attack.problem import (Outcome, Problem, evaluate, mean_drop, organ_envelope,
                                    relative_drops, zero_fields)


# --- losses ----------------------------------------------------------------------------------------------
def alpha_loss(problem: Problem, logits: torch.Tensor, u: torch.Tensor, alpha: float) -> torch.Tensor:
    reference = warp(problem.onehot_pred, u)
    mask = warp(problem.mask, u)
    ce = -(reference * logits.log_softmax(1)).sum(1, keepdim=True)
    return ((ce * mask).sum() / mask.sum().clamp_min(1.0) - alpha).abs()


def drop_loss(problem: Problem, logits: torch.Tensor, u: torch.Tensor, drop: float) -> torch.Tensor:
    after = soft_dice(logits.softmax(1), warp(problem.onehot_labels, u))
    ratio = after / problem.soft_before.clamp_min(1e-3)
    return 10.0 * ((ratio - (1 - drop)) ** 2)[problem.present].sum()


def attack_loss(problem, logits, u, config: AttackConfig) -> torch.Tensor:
    if config.drop is not None:
        return drop_loss(problem, logits, u, config.drop)
    return alpha_loss(problem, logits, u, config.alpha)


def regulariser(u: torch.Tensor, b: torch.Tensor, config) -> torch.Tensor:
    folding = F.relu(0.2 - jacobian_determinant(u)).pow(2).mean()
    return config.lambda_u * gradient_energy(u) + config.lambda_b * gradient_energy(b) + config.lambda_fold * folding


def perceptibility_term(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """P of the batch, differentiable: sqrt(mean((x̃ − x)²)) on the z-scored slices (fields.perceptibility)."""
    return (x_adv - x).pow(2).mean().add(1e-10).sqrt()


# --- optimize mode ---------------------------------------------------------------------------------------
class FieldParams(torch.nn.Module):
    """Control grids every `cell` pixels, tanh-bounded, upsampled bicubically to smooth full-size fields,
    optionally weighted by a smooth envelope (the organ region)."""

    def __init__(self, shape, cell: int, max_disp: float, max_bias: float, components: str,
                 envelope: torch.Tensor | None = None):
        super().__init__()
        n, _, h, w = shape
        grid = (n, h // cell + 1, w // cell + 1)
        self.size, self.max_disp, self.max_bias, self.components = (h, w), max_disp, max_bias, components
        self.cu = torch.nn.Parameter(torch.zeros(grid[0], 2, *grid[1:]))
        self.cb = torch.nn.Parameter(torch.zeros(grid[0], 1, *grid[1:]))
        self.envelope = envelope

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = smooth_field(self.max_disp * torch.tanh(self.cu), self.size)
        b = smooth_field(self.max_bias * torch.tanh(self.cb), self.size)
        if self.envelope is not None:
            u, b = u * self.envelope, b * self.envelope
        u = without_folding(u)
        if self.components == "bias":
            u = torch.zeros_like(u)
        if self.components == "deformation":
            b = torch.zeros_like(b)
        return u, b


def organ_box(envelope: torch.Tensor, context: int = 16, multiple: int = 16) -> tuple[slice, slice]:
    """The envelope's bounding box over all slices, widened by `context` pixels (the target sees beyond the
    organs) and to a multiple of `multiple` (the U-Net's strides), inside the slice."""
    support = (envelope > 0).any(dim=0)[0].cpu().numpy()
    if not support.any():
        return slice(None), slice(None)
    box = []
    for axis, size in ((1, support.shape[0]), (0, support.shape[1])):
        hits = np.nonzero(support.any(axis=axis))[0]
        low, high = max(0, hits[0] - context), min(size, hits[-1] + 1 + context)
        length = min(size, -(-(high - low) // multiple) * multiple)
        low = min(low, size - length)
        box.append(slice(int(low), int(low + length)))
    return box[0], box[1]


def paste(field: torch.Tensor, rows: slice, cols: slice, shape) -> torch.Tensor:
    out = torch.zeros(field.shape[0], field.shape[1], *shape[-2:], device=field.device)
    out[..., rows, cols] = field
    return out


def optimize_fields(problem: Problem, config: AttackConfig, method: str | None = None) -> Outcome:
    """Fit u and b to the slices (on the organ box when `config.local`), stop early at the requested drop,
    scale to it, and evaluate on the whole slices."""
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    envelope = organ_envelope(problem, config.cell) if config.local else None
    rows, cols = organ_box(envelope) if envelope is not None else (slice(None), slice(None))
    work = problem.crop(rows, cols) if envelope is not None else problem
    params = FieldParams(work.x.shape, config.cell, config.max_disp_mm / problem.pixel_mm,
                         config.max_bias_hu / problem.std, config.components,
                         None if envelope is None else envelope[..., rows, cols]).to(problem.device)
    opt = torch.optim.RMSprop(params.parameters(), lr=config.learning_rate, alpha=0.9)
    best, best_gap, step = None, float("inf"), -1
    for step in range(config.steps):
        u, b = params()
        x_adv = transform(work.x, u, b)
        loss = attack_loss(work, work.logits(x_adv), u, config) + regulariser(u, b, config) + \
            config.lambda_p * perceptibility_term(work.x, x_adv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if config.drop is not None and (step % config.check_every == config.check_every - 1 or step == config.steps - 1):
            with torch.no_grad():
                u, b = (paste(f, rows, cols, problem.x.shape) for f in params())
            gap = float(np.nanmax(np.abs(relative_drops(problem.dice_before, evaluate(problem, u, b, "").dice_after)
                                         - config.drop)))  # on the whole slices: the crop sees less context
            if gap < best_gap:
                best, best_gap = (u, b), gap
            if gap <= config.tolerance:  # early stop: the requested drop is reached for every organ
                break
    if best is None:
        with torch.no_grad():
            best = tuple(paste(f, rows, cols, problem.x.shape) for f in params())
    u, b = best
    calibration = None
    if config.drop is not None:
        u, b, calibration = calibrate_to_drop(problem, u, b, config.drop, organ_weights(problem, config.margin))
    name = method or ("optimize" if config.components == "both" else f"{config.components}-only")
    outcome = evaluate(problem, u, b, name, time.perf_counter() - start)
    outcome.iterations, outcome.calibration = step + 1, calibration
    return outcome


# --- pixel-wise baselines --------------------------------------------------------------------------------
def masked_ce(problem: Problem, logits: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, problem.clean_pred, reduction="none")[:, None]
    return (ce * problem.mask).sum() / problem.mask.sum().clamp_min(1.0)


def pgd(problem: Problem, eps_hu: float, steps: int = 10, fgsm: bool = False, seed: int = 0) -> Outcome:
    """L∞ PGD (Madry: random start, step 2.5ε/steps, sign of the gradient of the organ-masked CE against the
    clean prediction), or FGSM (one step of size ε, no random start), in HU."""
    start = time.perf_counter()
    eps = eps_hu / problem.std
    generator = torch.Generator(device="cpu").manual_seed(seed)
    delta = torch.zeros_like(problem.x) if fgsm else \
        (torch.rand(problem.x.shape, generator=generator) * 2 - 1).to(problem.device) * eps
    step_size = eps if fgsm else 2.5 * eps / steps
    for _ in range(1 if fgsm else steps):
        delta.requires_grad_(True)
        loss = masked_ce(problem, problem.logits(problem.x + delta))
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
    u, _ = zero_fields(problem)
    outcome = evaluate(problem, u, delta.detach(), "FGSM" if fgsm else "PGD", time.perf_counter() - start)
    outcome.note = f"L∞ ε = {eps_hu:.1f} HU"
    return outcome


def pgd_at_drop(problem: Problem, drop: float, fgsm: bool = False, high_hu: float = 200.0,
                iters: int = 10) -> Outcome:
    """The baseline with ε bisected so that its mean drop matches `drop` (equal-drop comparisons)."""
    cache = {}

    def run(eps):
        cache[eps] = pgd(problem, eps, fgsm=fgsm)
        return mean_drop(problem, cache[eps])

    eps = bisect(run, drop, 0.0, high_hu, iters)
    return cache[eps] if eps in cache else pgd(problem, eps, fgsm=fgsm)
