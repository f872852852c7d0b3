"""One scan's attack problem (the slices, the frozen target and what the losses compare against), the organ
envelope the fields are confined to, and the evaluation of a pair of fields (Dice per organ against the labels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medfake.attack.data import SliceSet
from medfake.attack.fields import dice_per_class, soft_dice, transform, warp
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
    calibration: dict | None = None  # drop mode: the per-organ scales and the target passes (calibrate.py)


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


def organ_envelope(problem: Problem, cell: int) -> torch.Tensor:
    """The dilated organ region blurred over half a control cell, (N,1,H,W) in [0, 1], exactly 0 far from the
    organs: fields over air, fat and the body outline cost perceptibility and move no organ boundary."""
    blurred = ndimage.gaussian_filter(problem.mask.cpu().numpy(), sigma=(0, 0, cell / 2, cell / 2))
    blurred = np.clip(blurred / max(float(blurred.max()), 1e-6), 0, 1)
    return torch.from_numpy(np.where(blurred < 0.01, 0.0, blurred)).float().to(problem.device)
