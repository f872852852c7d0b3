"""What the tamperer is configured with: the actions and methods, a tamper request, the model presets and the
GAN training configuration. Free of torch, so the CLI reads its defaults here without paying torch's import
time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from medfake.errors import MedfakeError

ACTIONS = ("inject", "remove")
METHODS = ("ctgan", "copy-move", "inpaint", "cyclegan")
COORD_SYSTEMS = ("vox", "world")
DEFAULT_VIEWS = {"inject": 4, "remove": 1}  # generator views per location; a faint injection gets 4 tries

# Learning rates: the reference trains G at 2e-4 and D at 1e-6 (defect 12: D barely learns, so the
# adversarial term is noise). With λ·L1 = 100 dominating, D only has to judge texture; 10x below G keeps it
# learning without overpowering G on small training sets (the collapse users reported in issue #1).
PRESETS: dict[str, dict] = {
    "paper": dict(g_filters=(100, 200, 400, 800, 800), d_filters=(100, 200, 400, 800), dropout=0.5,
                  batch_size=32, steps=70_000, g_lr=2e-4, d_lr=2e-5, snapshot_every=500, checkpoint_every=1000,
                  data_workers=4),
    "cpu-small": dict(g_filters=(8, 16, 32, 64, 64), d_filters=(8, 16, 32, 64), dropout=0.2,
                      batch_size=8, steps=1500, g_lr=1e-3, d_lr=1e-4, snapshot_every=250, checkpoint_every=250),
}


def require_action(action: str) -> str:
    if action not in ACTIONS:
        raise MedfakeError(f"action must be {' or '.join(ACTIONS)}, not '{action}'")
    return action


def require_method(method: str) -> str:
    if method not in METHODS:
        raise MedfakeError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    return method


def require_system(system: str) -> str:
    if system not in COORD_SYSTEMS:
        raise MedfakeError(f"coordinate system must be {' or '.join(COORD_SYSTEMS)}, not '{system}'")
    return system


@dataclass(kw_only=True)
class TamperRequest:
    """Everything `medfake tamper` is asked to do to one scan (see `medfake.tamper.run.tamper_file`)."""

    target: str | Path  # the scan: DICOM folder/file, .mhd, .nrrd, .nii[.gz], .npz
    outdir: str | Path  # the tampered scan and manifest.csv go here
    action: str  # inject | remove
    coords: Sequence = ()  # 'z,y,x' texts or numbers (x,y,z mm with system world)
    system: str = "vox"
    table: str | Path | None = None  # location table; its rows naming this scan are tampered
    auto: int = 0  # locations chosen automatically
    label: str | Path | None = None  # nodule label volume: removal targets for `auto`
    method: str = "ctgan"
    model_dir: str | Path | None = None  # RUN folder of `medfake train` (method ctgan)
    fmt: str = "same"  # output format: same | dicom | mhd | nrrd | nifti | npz
    seed: int = 0  # noise and automatic locations
    donor: str | Path | None = None  # copy-move: scan to copy the nodule from (default: the target)
    donor_coord: str | None = None  # copy-move: donor nodule 'z,y,x' voxel
    series: str | None = None  # SeriesInstanceUID when the folder holds several
    blend_mm: tuple[float, float] | None = None  # ctgan: (full weight up to, zero from) mm
    views: int | None = None  # ctgan: generator views, the strongest is kept

    def validate(self) -> "TamperRequest":
        require_action(self.action)
        require_method(self.method)
        require_system(self.system)
        return self


@dataclass
class GanTrainConfig:
    """The 3-D pix2pix in-painting GAN and how it is trained (a preset's values, then the overrides)."""

    action: str = "inject"
    preset: str = "cpu-small"
    g_filters: tuple = (8, 16, 32, 64, 64)
    d_filters: tuple = (8, 16, 32, 64)
    dropout: float = 0.2
    cube: int = 32
    hole: int = 20  # the reference code's 20³ (its paper figure draws 16³)
    iso_spacing: float = 1.0
    l1_weight: float = 100.0
    l1_region: str = "cube"  # cube | hole
    batch_size: int = 8
    steps: int = 1500
    g_lr: float = 1e-3
    d_lr: float = 1e-4
    beta1: float = 0.5
    val_fraction: float = 0.1
    snapshot_every: int = 250  # preview PNG, validation L1 in the hole, exported model/
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "auto"
    data_workers: int = 0  # processes drawing the augmented cubes ahead of training (a GPU machine wants some)

    @classmethod
    def resolve(cls, action: str, preset: str, **overrides) -> "GanTrainConfig":
        require_action(action)
        if preset not in PRESETS:
            raise MedfakeError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
        values = dict(PRESETS[preset], action=action, preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.cube % 2 ** len(self.g_filters):
            raise MedfakeError(f"cube size {self.cube} must be divisible by 2^{len(self.g_filters)} (generator depth)")
        if not 0 < self.hole < self.cube:
            raise MedfakeError(f"hole {self.hole} must be between 0 and the cube size {self.cube}")
        if self.l1_region not in ("cube", "hole"):
            raise MedfakeError(f"l1 region must be cube or hole, not '{self.l1_region}'")
        if self.batch_size < 2:
            raise MedfakeError("batch size must be at least 2 (batch norm at the 1³ bottleneck)")
        if self.data_workers < 0:
            raise MedfakeError(f"data workers must be ≥ 0, got {self.data_workers}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["g_filters"], d["d_filters"] = list(self.g_filters), list(self.d_filters)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GanTrainConfig":
        """Unknown keys are ignored, so model folders written before a field was dropped still load."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("g_filters", "d_filters"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class AugmentConfig:
    flips: bool = True  # y, x, both
    shift: int = 4  # grid points; the four diagonal (±s, ±s) in-plane shifts, 0 = none
    rotation_step_deg: float = 6.0  # in-plane rotations step, 2·step … 360-step; 0 = none

    def views(self) -> list[tuple]:
        """(rotation_deg, flip_y, flip_x, (dy, dx)) for every version; the reference's 67 by default."""
        views = [(0.0, False, False, (0, 0))]
        if self.flips:
            views += [(0.0, True, False, (0, 0)), (0.0, False, True, (0, 0)), (0.0, True, True, (0, 0))]
        if self.shift:
            s = self.shift
            views += [(0.0, False, False, (dy, dx)) for dy in (s, -s) for dx in (s, -s)]
        if self.rotation_step_deg:
            views += [(float(a), False, False, (0, 0)) for a in np.arange(self.rotation_step_deg, 360.0 - 1e-6,
                                                                           self.rotation_step_deg)]
        return views


@dataclass
class TrainsetConfig:
    action: str
    cube: int = 32
    iso_spacing: float = 1.0
    coord_system: str = "world"
    auto_healthy: int = 0
    min_diameter_mm: float = 0.0  # injector: skip table nodules smaller than this (when the table has sizes)
    max_diameter_mm: float = 1e9  # ... or larger than this (they would not fit the hole)
    augment: AugmentConfig = None

    def __post_init__(self):
        if self.augment is None:
            self.augment = AugmentConfig()
