"""Protection settings (no torch here: the CLI reads its defaults from these)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medfake.errors import MedfakeError
from medfake.tamper.config import ACTIONS

METHODS = ("optimize", "network", "watermark")
REGIONS = ("lungs", "all")


@dataclass
class OptimizeConfig:
    passes: int = 2  # how often each tile is visited on average
    sites_per_step: int = 4
    step_hu: float = 2.0  # sign-gradient step (the budget is reached in budget/step_hu steps)
    tile_fraction: float = 1.0  # tile stride as a fraction of the hole edge (mm); each voxel is read by
    # about (source cube / stride)³ ≈ 4 jittered tiles a pass, so 2 passes reach an 8 HU budget in 2 HU steps
    max_tiles: int = 4000
    seed: int = 0
    focus_zyx: list = field(default_factory=list)  # API/benchmarks: only tiles within focus_mm of these
    focus_mm: float = 12.0
    jitter_mm: float | None = None  # random shift of a tile per visit; None: half the tile stride
    soft_views_hu: float | None = 20.0  # smooth max over the flip views (None: follow the attacker's argmax)
    # expectation over transformations, for attackers the protection does not see exactly:
    eot_blur_mm: float = 0.0  # the tamperer reads the scan blurred by σ ∈ {0, ½, 1}·this (a PACS's smoothing)
    ghosts: int = 0  # generator passes with its dropout on per site ("ghost networks": a cheap ensemble)


@dataclass
class ProtectConfig:
    budget_hu: float = 8.0
    method: str = "optimize"
    region: str = "lungs"
    action: str | None = None  # only models trained for this action (None: any)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    key: str | None = field(default=None, repr=False)  # method watermark; never written to a record

    def validate(self) -> None:
        if not np.isfinite(self.budget_hu) or self.budget_hu <= 0:
            raise MedfakeError(f"the budget must be a positive number of HU, not {self.budget_hu:g}")
        if self.method not in METHODS:
            raise MedfakeError(f"unknown protection method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.region not in REGIONS:
            raise MedfakeError(f"region must be {' or '.join(REGIONS)}, not '{self.region}'")
        if self.action not in (None, *ACTIONS):
            raise MedfakeError(f"action must be inject or remove, not '{self.action}'")
        if self.method == "watermark" and not self.key:
            raise MedfakeError("method watermark needs a key (--key)")
        if self.optimize.eot_blur_mm < 0 or self.optimize.ghosts < 0:
            raise MedfakeError("eot_blur_mm and ghosts must not be negative")
