"""Per-scan attacks on a segmentation model: the deformation + bias fields optimised directly (optimize mode,
also deformation-only and bias-only), hitting a requested Dice drop, and the pixel-wise L∞ baselines PGD and
FGSM (a few lines here: torchattacks needs torchvision, which this project cannot install).

Attack losses (x̃ = warp(x, u) + b, see fields.py):
  α mode:    |CE_M(S(x̃), warp(S(x), u)) − α| — the organ-masked cross-entropy between the prediction on x̃ and
             the clean prediction carried along by u (M = organs of S(x) and the labels, dilated, warped by u);
  drop mode: Σ_k (softDice_k(x̃) / softDice_k(x) − (1 − τ))² against the labels warped by u, then the iterate
             whose hard per-organ drops are closest to τ, then one scale factor on both fields bisected so that
             the mean hard drop is τ.
Regularisers λ₁‖∇u‖² + λ₂‖∇b‖² (0.1, 0.01; u in pixels, b in z-scored intensity) and a folding penalty
λ_f·mean(relu(0.2 − det(I + ∇u))²) (λ_f = 1); RMSProp (decay 0.9).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medfake.attack.data import SliceSet
from medfake.attack.fields import (dice_per_class, gradient_energy, jacobian_determinant, smooth_field, soft_dice,
                                   transform, warp)
from medfake.attack.target import SegTarget
from medfake.errors import MedfakeError

COMPONENTS = ("both", "deformation", "bias")


@dataclass
class AttackConfig:
    alpha: float | None = None  # default 2.0 when no drop is requested
    drop: float | None = None  # requested relative Dice drop, e.g. 0.3
    components: str = "both"
    lambda_u: float = 0.1
    lambda_b: float = 0.01
    steps: int = 150
    lr: float = 0.05
    cell: int = 8  # control-grid spacing of the optimised fields (pixels)
    max_disp_mm: float = 12.0
    max_bias_hu: float = 150.0
    margin: int = 4  # organ-mask dilation (pixels)
    lambda_fold: float = 1.0  # penalty on det(I + ∇u) < 0.2, against folding
    seed: int = 0

    def __post_init__(self):
        if self.alpha is not None and self.drop is not None:
            raise MedfakeError("give either --alpha or --drop, not both")
        if self.alpha is None and self.drop is None:
            self.alpha = 2.0
        if self.drop is not None and not 0 < self.drop < 1:
            raise MedfakeError(f"--drop is a relative Dice drop in (0, 1), got {self.drop}")
        if self.alpha is not None and self.alpha <= 0:
            raise MedfakeError(f"--alpha must be positive, got {self.alpha}")
        if self.components not in COMPONENTS:
            raise MedfakeError(f"components must be one of {', '.join(COMPONENTS)}, not '{self.components}'")


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
    """Control grids every `cell` pixels, tanh-bounded, upsampled bicubically to smooth full-size fields."""

    def __init__(self, shape, cell: int, max_disp: float, max_bias: float, components: str):
        super().__init__()
        n, _, h, w = shape
        grid = (n, h // cell + 1, w // cell + 1)
        self.size, self.max_disp, self.max_bias, self.components = (h, w), max_disp, max_bias, components
        self.cu = torch.nn.Parameter(torch.zeros(grid[0], 2, *grid[1:]))
        self.cb = torch.nn.Parameter(torch.zeros(grid[0], 1, *grid[1:]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = smooth_field(self.max_disp * torch.tanh(self.cu), self.size)
        b = smooth_field(self.max_bias * torch.tanh(self.cb), self.size)
        if self.components == "bias":
            u = torch.zeros_like(u)
        if self.components == "deformation":
            b = torch.zeros_like(b)
        return u, b


def optimize_fields(problem: Problem, config: AttackConfig, method: str | None = None) -> Outcome:
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    params = FieldParams(problem.x.shape, config.cell, config.max_disp_mm / problem.pixel_mm,
                         config.max_bias_hu / problem.std, config.components).to(problem.device)
    opt = torch.optim.RMSprop(params.parameters(), lr=config.lr, alpha=0.9)
    best, best_gap = None, float("inf")
    for step in range(config.steps):
        u, b = params()
        loss = attack_loss(problem, problem.logits(transform(problem.x, u, b)), u, config) + regulariser(u, b, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if config.drop is not None and (step % 10 == 9 or step == config.steps - 1):
            with torch.no_grad():
                u, b = params()
            outcome = evaluate(problem, u, b, "")
            gap = float(np.nanmax(np.abs(relative_drops(problem.dice_before, outcome.dice_after) - config.drop)))
            if gap < best_gap:
                best, best_gap = (u.detach().clone(), b.detach().clone()), gap
    if best is None:
        with torch.no_grad():
            best = params()
    u, b = best
    if config.drop is not None:
        u, b = scale_to_drop(problem, u, b, config.drop)
    name = method or ("optimize" if config.components == "both" else f"{config.components}-only")
    return evaluate(problem, u, b, name, time.perf_counter() - start)


def scale_to_drop(problem: Problem, u: torch.Tensor, b: torch.Tensor, drop: float, iters: int = 10,
                  high: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One factor s on both fields, bisected in [0, high] so that the mean hard drop is `drop`."""
    scaled = lambda s: mean_drop(problem, evaluate(problem, s * u, s * b, ""))
    s = bisect(scaled, drop, 0.0, high, iters)
    return s * u, s * b


def bisect(fn, goal: float, low: float, high: float, iters: int) -> float:
    """The x in [low, high] with fn(x) ≈ goal for an increasing fn (high when even fn(high) < goal)."""
    if fn(high) < goal:
        return high
    for _ in range(iters):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if fn(mid) < goal else (low, mid)
    return high


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
                iters: int = 6) -> Outcome:
    """The baseline with ε bisected so that its mean drop matches `drop` (equal-drop comparisons)."""
    cache = {}

    def run(eps):
        cache[eps] = pgd(problem, eps, fgsm=fgsm)
        return mean_drop(problem, cache[eps])

    eps = bisect(run, drop, 0.0, high_hu, iters)
    return cache[eps] if eps in cache else pgd(problem, eps, fgsm=fgsm)
