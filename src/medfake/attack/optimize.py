"""Per-scan attacks on a segmentation model: the deformation + bias fields optimised directly (optimize mode,
also deformation-only and bias-only), hitting a requested Dice drop, and the pixel-wise L∞ baselines PGD and
FGSM (a few lines here: torchattacks needs torchvision, which this project cannot install).

Attack losses (x̃ = warp(x, u) + b, see fields.py):
  α mode:    |CE_M(S(x̃), warp(S(x), u)) − α| — the organ-masked cross-entropy between the prediction on x̃ and
             the clean prediction carried along by u (M = organs of S(x) and the labels, dilated, warped by u);
  drop mode: Σ_k (softDice_k(x̃) / softDice_k(x) − (1 − τ))² against the labels warped by u; a hard-Dice check
             every few iterations stops early once every organ is within `tolerance` of τ (else the iterate
             closest to τ), then one scale factor on both fields is bisected so that the mean hard drop is τ.
Regularisers λ₁‖∇u‖² + λ₂‖∇b‖² (0.1, 0.01; u in pixels, b in z-scored intensity), a folding penalty
λ_f·mean(relu(0.2 − det(I + ∇u))²) (λ_f = 1) and the perceptibility itself, λ_P·P (P = RMS of x̃ − x on the
z-scored slices; λ_P = 2); RMSProp (decay 0.9). With `local` (the default) both fields are multiplied by the
organ region blurred over half a control cell and fitted on that region's bounding box (+16 pixels of context
for the target): the smallest perceptibility at a given drop, and fewer pixels per iteration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medfake.attack.config import AttackConfig
from medfake.attack.data import SliceSet
from medfake.attack.fields import (dice_per_class, gradient_energy, jacobian_determinant, smooth_field, soft_dice,
                                   transform, warp, without_folding)
from medfake.attack.target import SegTarget



class Problem:
    """One scan's slices, the frozen target and everything the losses compare against."""

    def __init__(self, target: SegTarget, slices: SliceSet, margin: int = 4, device="cpu"):
        self.target, self.slices, self.device = target, slices, device
        self.classes = target.classes
        self.hu = torch.from_numpy(slices.images[:, None]).float().to(device)
        self.mean, self.std = float(self.hu.mean()), float(self.hu.std()) + 1e-6
        self.x = (self.hu - self.mean) / self.std  # the intensity-normalised image the fields act on
        with torch.no_grad():
            self.clean_logits = self.logits(self.x)
        self.clean_pred = self.clean_logits.argmax(1)
        self.labels = torch.from_numpy(slices.classes.astype(np.int64)).to(device)
        roi = ndimage.binary_dilation((slices.classes > 0) | (self.clean_pred.cpu().numpy() > 0),
                                      iterations=margin, structure=np.ones((1, 3, 3), bool))
        self.mask = torch.from_numpy(roi[:, None].astype(np.float32)).to(device)
        self.onehot_pred = F.one_hot(self.clean_pred, self.classes).permute(0, 3, 1, 2).float()
        self.onehot_labels = F.one_hot(self.labels, self.classes).permute(0, 3, 1, 2).float()
        self.present = self.onehot_labels[:, 1:].sum(dim=(0, 2, 3)) > 0
        self.soft_before = soft_dice(self.clean_logits.softmax(1), self.onehot_labels)
        self.dice_before = dice_per_class(self.clean_pred.cpu().numpy(), slices.classes, self.classes)

    def subset(self, index) -> "Problem":
        """The same problem on some of the slices (a generator's batch)."""
        part = object.__new__(Problem)
        part.__dict__.update(self.__dict__)
        for name in ("hu", "x", "clean_logits", "clean_pred", "labels", "mask", "onehot_pred", "onehot_labels"):
            setattr(part, name, getattr(self, name)[index])
        part.present = part.onehot_labels[:, 1:].sum(dim=(0, 2, 3)) > 0
        part.soft_before = soft_dice(part.clean_logits.softmax(1), part.onehot_labels)
        return part

    def crop(self, rows: slice, cols: slice) -> "Problem":
        """The same problem on a window of the slices (same normalisation); the clean prediction is recomputed
        there, so the attack losses compare like with like."""
        part = object.__new__(Problem)
        part.__dict__.update(self.__dict__)
        s = self.slices
        part.slices = SliceSet(s.images[:, rows, cols], s.classes[:, rows, cols], s.z, s.pixel_mm, s.source)
        for name in ("hu", "x", "labels", "mask", "onehot_labels"):
            setattr(part, name, getattr(self, name)[..., rows, cols])
        with torch.no_grad():
            part.clean_logits = part.logits(part.x)
        part.clean_pred = part.clean_logits.argmax(1)
        part.onehot_pred = F.one_hot(part.clean_pred, self.classes).permute(0, 3, 1, 2).float()
        part.soft_before = soft_dice(part.clean_logits.softmax(1), part.onehot_labels)
        part.dice_before = dice_per_class(part.clean_pred.cpu().numpy(), part.slices.classes, self.classes)
        return part

    def logits(self, x_z: torch.Tensor) -> torch.Tensor:
        return self.target.logits(x_z * self.std + self.mean)

    @property
    def pixel_mm(self) -> float:
        return self.slices.pixel_mm


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


# --- evaluation ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    method: str
    adversarial_hu: np.ndarray  # N,H,W
    u: np.ndarray  # N,2,H,W pixels
    b_hu: np.ndarray  # N,H,W
    prediction: np.ndarray  # N,H,W classes on x̃
    dice_after: np.ndarray  # vs the labels warped by u (the anatomy x̃ shows)
    dice_after_unwarped: np.ndarray  # vs the original labels
    seconds: float = 0.0
    note: str = ""
    iterations: int | None = None  # optimize mode: iterations run (early stop at the requested drop)


@torch.no_grad()
def evaluate(problem: Problem, u: torch.Tensor, b: torch.Tensor, method: str, seconds: float = 0.0) -> Outcome:
    x_adv = transform(problem.x, u, b)
    prediction = problem.logits(x_adv).argmax(1).cpu().numpy().astype(np.uint8)
    warped_labels = warp(problem.labels[:, None].float(), u, mode="nearest")[:, 0].cpu().numpy().astype(np.uint8)
    truth = problem.slices.classes
    return Outcome(method, (x_adv[:, 0] * problem.std + problem.mean).cpu().numpy(), u.cpu().numpy(),
                   (b[:, 0] * problem.std).cpu().numpy(), prediction,
                   dice_per_class(prediction, warped_labels, problem.classes),
                   dice_per_class(prediction, truth, problem.classes), seconds)


def relative_drops(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before > 0, (before - after) / before, np.nan)


def mean_drop(problem: Problem, outcome: Outcome) -> float:
    return float(np.nanmean(relative_drops(problem.dice_before, outcome.dice_after)))


def zero_fields(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, h, w = problem.x.shape
    return torch.zeros(n, 2, h, w, device=problem.device), torch.zeros(n, 1, h, w, device=problem.device)


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


def organ_envelope(problem: Problem, cell: int) -> torch.Tensor:
    """The dilated organ region blurred over half a control cell, (N,1,H,W) in [0, 1], exactly 0 far from the
    organs: fields over air, fat and the body outline cost perceptibility and move no organ boundary."""
    blurred = ndimage.gaussian_filter(problem.mask.cpu().numpy(), sigma=(0, 0, cell / 2, cell / 2))
    blurred = np.clip(blurred / max(float(blurred.max()), 1e-6), 0, 1)
    return torch.from_numpy(np.where(blurred < 0.01, 0.0, blurred)).float().to(problem.device)


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
    if config.drop is not None:
        u, b = scale_to_drop(problem, u, b, config.drop)
    name = method or ("optimize" if config.components == "both" else f"{config.components}-only")
    outcome = evaluate(problem, u, b, name, time.perf_counter() - start)
    outcome.iterations = step + 1
    return outcome


def scale_to_drop(problem: Problem, u: torch.Tensor, b: torch.Tensor, drop: float, iters: int = 10,
                  high: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One factor s on both fields, bisected in [0, high] so that the mean hard drop is `drop` (u kept fold-free)."""
    scaled = lambda s: mean_drop(problem, evaluate(problem, without_folding(s * u), s * b, ""))
    s = bisect(scaled, drop, 0.0, high, iters)
    return without_folding(s * u), s * b


def bisect(fn, goal: float, low: float, high: float, iters: int, tolerance: float = 0.005) -> float:
    """For an increasing fn: the evaluated x in [low, high] whose fn(x) is closest to `goal` (high when even
    fn(high) < goal), stopping once within `tolerance`."""
    value = fn(high)
    if value < goal:
        return high
    best = (abs(value - goal), high)
    for _ in range(iters):
        mid = 0.5 * (low + high)
        value = fn(mid)
        best = min(best, (abs(value - goal), mid))
        if best[0] <= tolerance:
            break
        low, high = (mid, high) if value < goal else (low, mid)
    return best[1]


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
