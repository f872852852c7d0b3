"""What every detector shares: its saved configuration and the two ways it scores.

- patch detectors (BTD, DAE, noise statistics, supervised CNNs) turn [0, 1] axial patches (N, C, P, P), cut
  with their own intensity `window` (C = 2·context + 1 slices), into per-pixel anomaly maps and per-patch
  scores; `score_sites` cuts those patches at sites of a scan;
- scan-level detectors (`scan_level = True`: the self-referenced statistics and the learned noise residual)
  need the scan in mm and its 3-D context: they implement `score_sites(scan, sites)` and `screen_map(scan,
  region, options)` themselves.
Higher scores are always more suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from medfake.detect.btd import ScoreOptions, reduce_maps
from medfake.detect.patches import CT_WINDOW, patches_at, to_unit
from medfake.errors import MedfakeError


@dataclass
class DetectorConfig:
    method: str = "btd"
    modality: str = "ct"  # ct | mri
    patch_size: int = 96
    window: tuple[float, float] = CT_WINDOW
    preset: str = "cpu-small"
    unet: dict = field(default_factory=dict)  # explicit Unet arguments (override the preset)
    context: int = 0  # 2.5-D: this many neighbouring slices on each side become input channels
    clip: bool = True  # clip intensities to the window (False: the window only scales, float beyond it)
    params: dict = field(default_factory=dict)  # method-specific settings (e.g. the self-referenced statistics)

    @classmethod
    def default(cls, method: str, modality: str, preset: str = "cpu-small") -> "DetectorConfig":
        from medfake.detect.detectors import detector_class
        from medfake.detect.patches import PATCH_SIZE

        kind = detector_class(method)
        window = kind.ct_window if modality == "ct" else CT_WINDOW
        return cls(method, modality, kind.patch_size or PATCH_SIZE[modality], window, preset,
                   context=kind.context, clip=kind.clip or modality != "ct")

    def as_dict(self) -> dict:
        out = {"method": self.method, "modality": self.modality, "patch_size": self.patch_size,
               "window": list(self.window), "preset": self.preset, "unet": self.unet}
        # written only when they differ from the defaults, so older run folders compare equal
        if self.context:
            out["context"] = self.context
        if not self.clip:
            out["clip"] = False
        if self.params:
            out["params"] = self.params
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        return cls(data["method"], data["modality"], int(data["patch_size"]), tuple(data["window"]),
                   data.get("preset", "cpu-small"), data.get("unet", {}), int(data.get("context", 0)),
                   bool(data.get("clip", True)), data.get("params", {}))


class Detector:
    """Base: patch detectors implement `anomaly_maps`; scores reduce the maps (region, mean/top-k)."""

    method: ClassVar[str]
    patch_size: ClassVar[int | None] = None  # None: the modality's (96² CT, 128² MRI, as BTD)
    ct_window: ClassVar[tuple[float, float]] = CT_WINDOW
    context: ClassVar[int] = 0
    clip: ClassVar[bool] = True
    trains_on_tampered: ClassVar[bool] = False
    nodules_as_negatives: ClassVar[bool] = False  # genuine nodules are drawn among the training negatives
    scan_level: ClassVar[bool] = False
    training_free: ClassVar[bool] = False

    def __init__(self, config: DetectorConfig, options: ScoreOptions | None = None, source: str = ""):
        self.config = config
        self.options = options or ScoreOptions()
        self.source = source

    @classmethod
    def from_state(cls, config: DetectorConfig, state: dict, options=None, source="", device=None) -> "Detector":
        raise NotImplementedError

    def unit(self, scan) -> np.ndarray:
        return to_unit(scan, self.config.window, clip=self.config.clip)

    def patches(self, unit: np.ndarray, sites_zyx) -> np.ndarray:
        return patches_at(unit, sites_zyx, self.config.patch_size, "btd", self.config.context)

    def anomaly_maps(self, patches01: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores_from_maps(self, maps: np.ndarray) -> np.ndarray:
        return reduce_maps(maps, self.options)

    def scores(self, patches01: np.ndarray) -> np.ndarray:
        return self.scores_from_maps(self.anomaly_maps(patches01))

    def score_sites(self, scan, sites_zyx) -> np.ndarray:
        """One score per z,y,x site of a scan (patch detectors: the BTD crop protocol)."""
        return self.scores(self.patches(self.unit(scan), sites_zyx))

    def screen_map(self, scan, region: np.ndarray, options):
        """Scan-level detectors: their anomaly map as a `gridmap.GridMap` on a coarse grid (higher = more
        suspicious, NaN = not measured)."""
        raise NotImplementedError


class NetDetector(Detector):
    """A detector around one torch network (in eval mode), trained by `medfake.training.fit` on `loss`."""

    def __init__(self, config, net, options=None, source="", device=None):
        super().__init__(config, options, source)
        self.net = net.eval()

    @classmethod
    def build(cls, config: DetectorConfig) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_state(cls, config, state, options=None, source="", device=None):
        net = cls.build(config)
        try:
            net.load_state_dict(state["model"], strict=True)
        except (RuntimeError, KeyError) as exc:
            raise MedfakeError(f"checkpoint weights do not fit a {config.method} detector "
                               f"({' '.join(str(exc).split())[:160]})", source) from None
        return cls(config, net, options, source, device)

    @staticmethod
    def loss(net, patches: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """The training objective on a batch of [0, 1] patches (labels: 1 tampered, for supervised methods)."""
        raise NotImplementedError

    @staticmethod
    def picture(net, real: np.ndarray, seed: int, sample_steps: int) -> tuple[np.ndarray, str] | None:
        """What samples.png shows beside the training patches (None: nothing)."""
        return None
