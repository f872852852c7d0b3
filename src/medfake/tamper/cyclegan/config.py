"""CycleGAN presets and the resolved configuration (the CycleGAN defaults Becker et al. used, reference §C).

becker-256      experiment 1: 256×256, ResNet-9 generator with ngf = 32 (BreastGAN's flags), 70×70 PatchGAN
                ndf = 64, batch 1, LSGAN, cycle λ 10, identity 0.5, pool 50, Adam 2e-4 β₁ 0.5; 200 epochs of
                ~680 images ≈ 136k steps, half constant then linear decay to 0.
becker-512x408  experiment 2: 512 (H) × 408 (W), ResNet-9 ngf = 64, D lr 1e-4 (TF-GAN's), 100k steps
                (their artefacts appeared at 45-50k; selection by grid score picks before them).
cpu-small       ResNet-6 ngf 16 / ndf 32, 64×64 images or 32×32 CT patches, 3000 steps, lr 5e-4: minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from medfake.errors import MedfakeError
from medfake.nn import UPSAMPLE_MODES

PRESETS: dict[str, dict] = {
    "becker-256": dict(size=(256, 256), ngf=32, ndf=64, n_blocks=9, steps=136_000, g_lr=2e-4, d_lr=2e-4,
                       snapshot_every=4000, checkpoint_every=2000),
    "becker-512x408": dict(size=(512, 408), ngf=64, ndf=64, n_blocks=9, steps=100_000, g_lr=2e-4, d_lr=1e-4,
                           snapshot_every=2500, checkpoint_every=2500),
    "cpu-small": dict(size=(64, 64), ngf=16, ndf=32, n_blocks=6, steps=3000, g_lr=5e-4, d_lr=5e-4,
                      snapshot_every=250, checkpoint_every=250),
}
CT_PATCH = 32  # default in-plane CT patch (points) of `trainset cyclegan` from 3-D scans, at 1 mm


@dataclass
class CycleGANConfig:
    preset: str = "cpu-small"
    size: tuple = (64, 64)  # (H, W) of the training set it was built for
    channels: int = 1
    ngf: int = 16
    ndf: int = 32
    n_blocks: int = 6
    upsample: str = "transposed"  # transposed (reference) | resize (nearest ×2 + conv: no checkerboard)
    steps: int = 3000
    batch_size: int = 1
    g_lr: float = 5e-4
    d_lr: float = 5e-4
    beta1: float = 0.5
    decay_from: float = 0.5  # fraction of the steps after which the learning rate decays linearly to 0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # × lambda_cycle, as in the reference
    pool_size: int = 50
    rotation_deg: float = 4.0  # Becker augmentation: rotation ±, scale range, contrast factor range
    scale_range: tuple = (0.98, 1.13)
    contrast_range: tuple = (0.8, 1.2)
    flips: bool = False  # mammograms keep their orientation; CT patches get y/x flips
    val_fraction: float = 0.15
    grid_images: int = 32  # held-out images per domain scored at every snapshot (fewer when fewer are held out)
    grid_threshold: float | None = None  # None: the chance level for the number of images (grid.chance_threshold)
    keep_snapshots: bool = True  # generators of every snapshot, for --select-before-artefacts
    snapshot_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "auto"

    @classmethod
    def resolve(cls, preset: str, **overrides) -> "CycleGANConfig":
        if preset not in PRESETS:
            raise MedfakeError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
        values = dict(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.upsample not in UPSAMPLE_MODES:
            raise MedfakeError(f"upsample must be {' or '.join(UPSAMPLE_MODES)}, not '{self.upsample}'")
        if any(int(s) % 4 for s in self.size):
            raise MedfakeError(f"image size {self.size[0]}×{self.size[1]} must be a multiple of 4 (two down-samplings)")
        if min(self.size) < 16:
            raise MedfakeError("images must be at least 16×16")
        if self.batch_size < 1 or self.steps < 0:
            raise MedfakeError("batch size must be ≥ 1 and steps ≥ 0")
        if not 0.0 <= self.decay_from <= 1.0:
            raise MedfakeError("decay_from must be a fraction of the steps (0..1)")

    def lr_factor(self, step: int) -> float:
        """Constant, then linear decay to 0 at the last step (the reference's `linear` policy, in steps)."""
        start = int(self.decay_from * self.steps)
        if step < start or self.steps <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / float(self.steps - start))

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("size", "scale_range", "contrast_range"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CycleGANConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("size", "scale_range", "contrast_range"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)
