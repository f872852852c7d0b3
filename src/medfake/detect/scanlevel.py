"""Scan-level detectors: they score sites of a scan in mm with its 3-D context, not 2-D patches.

- `selfref` (training-free): the self-referenced local statistics of `detect.selfref` on difference-of-Gaussian
  bands of the HU, calibrated on the scan's own lung;
- `residual` (learned noise residual, the DnCNN / Noiseprint idea): a small 2.5-D noise estimator trained on
  genuine CT to find Gaussian noise of σ 5–60 HU added in a lung window (float, never clipped); its residual —
  the noise it sees in the scan itself — replaces the HU in those same self-referenced statistics.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from medfake.detect.base import Detector, DetectorConfig, NetDetector
from medfake.detect.patches import slab_indices
from medfake.detect.selfref import SelfRefConfig, band_stack, score_sites
from medfake.detect.selfref_map import selfref_map
from medfake.nn.dncnn import NoiseEstimator

LUNG_WINDOW = (-1150.0, -350.0)
NOISE_HU = (5.0, 60.0)  # σ of the training noise


def selfref_config(config: DetectorConfig) -> SelfRefConfig:
    return SelfRefConfig.from_dict(config.params.get("selfref", {}))


class SelfRefDetector(Detector):
    """Training-free: nothing to fit; a run folder (or just the name `selfref`) only records the settings."""

    method = "selfref"
    ct_window = LUNG_WINDOW
    patch_size = 64  # only what location reports show
    clip = False
    scan_level = True
    training_free = True

    @classmethod
    def from_state(cls, config, state, options=None, source="", device=None):
        return cls(config, options, source)

    @staticmethod
    def fit(patches01: np.ndarray, seed: int) -> dict:
        return {"selfref": SelfRefConfig(seed=seed).as_dict()}

    def bands(self, crop, config):
        return band_stack(crop, config)

    def score_sites(self, scan, sites_zyx) -> np.ndarray:
        return score_sites(scan, sites_zyx, selfref_config(self.config), bands_fn=self.bands)

    def screen_map(self, scan, region, options) -> np.ndarray:
        return selfref_map(scan, region, selfref_config(self.config), self.bands, step_mm=options.step_mm,
                           halo=self.config.context)


class ResidualDetector(NetDetector, SelfRefDetector):
    """The learned noise residual in the self-referenced statistics."""

    method = "residual"
    patch_size = 40
    context = 1
    training_free = False

    def __init__(self, config, net, options=None, source="", device=None):
        NetDetector.__init__(self, config, net, options, source, device)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self.net.to(self.device, memory_format=torch.channels_last)  # oneDNN's fast layout on CPU

    @classmethod
    def build(cls, config):
        return NoiseEstimator(2 * config.context + 1)

    @staticmethod
    def loss(net, patches, labels, generator):
        """Find added Gaussian noise (σ uniform in NOISE_HU, window units) in the centre slice, relative to σ."""
        width = LUNG_WINDOW[1] - LUNG_WINDOW[0]
        b, c = patches.shape[:2]
        sigma = (NOISE_HU[0] + (NOISE_HU[1] - NOISE_HU[0]) * torch.rand(b, generator=generator, device=patches.device)) / width
        noise = torch.randn(patches.shape, generator=generator, device=patches.device) * sigma[:, None, None, None]
        predicted = net(patches + noise)[:, 0]
        return (((predicted - noise[:, c // 2]) / sigma[:, None, None]) ** 2).mean()

    @torch.inference_mode()
    def residual_hu(self, crop, batch: int = 4) -> np.ndarray:
        """(z, y, x) the network's noise estimate of every slice of a crop, in HU (a few slices per pass)."""
        lo, hi = self.config.window
        unit = (crop.voxels.astype(np.float32) - lo) / (hi - lo)
        out = np.empty(unit.shape, np.float32)
        for z0 in range(0, unit.shape[0], batch):
            zs = range(z0, min(z0 + batch, unit.shape[0]))
            x = np.stack([unit[slab_indices(z, self.config.context, unit.shape[0])] for z in zs])
            x = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            out[z0:z0 + len(zs)] = self.net(x)[:, 0].float().cpu().numpy()
        return out * (hi - lo)

    def bands(self, crop, config):
        return band_stack(crop.with_voxels(self.residual_hu(crop)), config)

    @staticmethod
    @torch.inference_mode()
    def picture(net, real, seed, sample_steps):
        device = next(net.parameters()).device
        residual = net(torch.from_numpy(real).to(device)).float().cpu().numpy()
        return 0.5 + 5 * residual, "noise estimate (×5, centred)"


SCAN_LEVEL: tuple[type[Detector], ...] = (SelfRefDetector, ResidualDetector)
