"""The segmentation audit's settings: the attack, its generator and the target U-Net. Torch-free, so that the
CLI reads its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from medfake.attack.data import parse_classes
from medfake.errors import MedfakeError

COMPONENTS = ("both", "deformation", "bias")


@dataclass
class AttackConfig:
    alpha: float | None = None  # default 2.0 when no drop is requested
    drop: float | None = None  # requested relative Dice drop, e.g. 0.3
    components: str = "both"
    lambda_u: float = 0.1
    lambda_b: float = 0.01
    steps: int = 150  # at most (drop mode stops early at the requested drop)
    lr: float | None = None  # default 0.01 in drop mode (small steps: stop near the smallest fields), 0.05 for α
    cell: int = 4  # control-grid spacing of the optimised fields (pixels)
    max_disp_mm: float = 3.0  # a bound per field before the drop-mode scale (≤ 2×)
    max_bias_hu: float = 150.0
    margin: int = 4  # organ-mask dilation (pixels)
    lambda_fold: float = 1.0  # penalty on det(I + ∇u) < 0.2, against folding
    lambda_p: float = 2.0  # weight of the perceptibility P (RMS of x̃ − x on z-scored slices) in the loss
    tolerance: float = 0.03  # drop mode: stop once every organ's hard drop is within this of the request
    check_every: int = 5  # drop mode: hard-Dice check (and early stop) every this many iterations
    local: bool = True  # optimize mode: fields weighted by the blurred organ region, fitted on its bounding box
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

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.drop is not None else 0.05)


@dataclass
class GeneratorConfig:
    steps: int = 600
    batch_size: int = 4
    lr: float = 1e-3
    n_critic: int = 5
    lambda_gp: float = 10.0
    w_adv: float = 0.05
    beta_kl: float = 1e-3
    width: int = 16
    latent: int = 4
    coarse: int = 4
    critic_width: int = 16
    conditioned: bool = True  # the generator also sees the target's clean class probabilities S(x)
    w_teacher: float = 5.0  # >0: also imitate optimize mode's fields on the training slices (fitted first)
    seed: int = 0
    snapshot_every: int = 500

    def network(self, pixel_mm: float, std_hu: float, attack: AttackConfig, classes: int) -> dict:
        return {"width": self.width, "latent": self.latent, "depth": 4, "coarse": self.coarse,
                "max_disp": attack.max_disp_mm / pixel_mm, "max_bias": attack.max_bias_hu / std_hu,
                "in_channels": 1 + (classes if self.conditioned else 0)}


@dataclass
class SegmenterConfig:
    classes: str = "liver,spleen,kidneys,stomach,pancreas"
    pixel_mm: float = 3.0
    window: tuple[float, float] = (-200.0, 300.0)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    steps: int = 1500
    batch_size: int = 8
    crop: int = 96
    lr: float = 2e-3
    seed: int = 0
    holdout_every: int = 0  # >0: slices whose (z // 4) % holdout_every == 0 are held out for validation
    snapshot_every: int = 500

    def __post_init__(self):
        parse_classes(self.classes)
        if self.crop % 2 ** (len(self.channels) - 1):
            raise MedfakeError(f"crop {self.crop} must be a multiple of {2 ** (len(self.channels) - 1)}")

    @property
    def monai(self) -> dict:
        return {"name": "UNet", "args": {"spatial_dims": 2, "in_channels": 1,
                                         "out_channels": len(parse_classes(self.classes)) + 1,
                                         "channels": list(self.channels),
                                         "strides": [2] * (len(self.channels) - 1), "num_res_units": 1,
                                         "norm": "batch"}}
