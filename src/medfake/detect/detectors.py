"""The detectors behind `medfake detect --method`, and the registry that names them.

- `btd`: Back-in-Time Diffusion residual (unsupervised, our runs or BTD's published checkpoints);
- `btd-forensic`: BTD's network in a lung window without clamp, small t, centre vs ring (two-sided);
- `dae`: denoising-autoencoder reconstruction error (unsupervised);
- `noise`: noise-residual statistics (unsupervised, fitted rather than trained);
- `supervised`: a CNN trained on tampered examples (upper bound; needs tampered training data);
- `supervised-residual`: a CNN on high-pass residuals, real nodules among its negatives;
- `selfref`, `residual`: scan-level detectors (`detect.scanlevel`): self-referenced local statistics,
  training-free or on a learned noise residual.

Every patch detector turns [0, 1] patches (N, C, P, P), cut with its own intensity `window`, into per-pixel
anomaly maps and per-patch scores (higher = more suspicious). Each class is one registry entry (`DETECTORS`):
it knows how to build its network, its training objective (or its fit, for statistics) and how to score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfake.detect.base import Detector, DetectorConfig, NetDetector
from medfake.detect.btd import BTDScorer, ScoreOptions, batched
from medfake.detect.noise import NOISE_WINDOW, NoiseStatistics, fit_noise_statistics
from medfake.detect.scanlevel import SCAN_LEVEL
from medfake.errors import MedfakeError
from medfake.nn import autoencoder
from medfake.nn.ddpm import build_diffusion
from medfake.nn.dncnn import HighPass
from medfake.training import load_checkpoint

CONFIG = "config.json"
CHECKPOINT = "checkpoints/model-latest.pt"  # BTD's Trainer layout: {'step','model','opt','ema','scaler','version'}


class BTDDetector(NetDetector):
    method = "btd"

    def __init__(self, config, diffusion, options=None, source="", device=None):
        super().__init__(config, diffusion, options, source)
        self.diffusion = diffusion
        self.scorer = BTDScorer(diffusion, self.options, device)

    @classmethod
    def build(cls, config):
        unet = {**config.unet, "dim_mults": tuple(config.unet["dim_mults"])} if "dim_mults" in config.unet else config.unet
        return build_diffusion(config.preset, config.patch_size, channels=2 * config.context + 1, **unet)

    def anomaly_maps(self, patches01):
        return self.scorer.anomaly_maps(patches01)

    @staticmethod
    def loss(net, patches, labels, generator):
        return net(patches, generator=generator)

    @staticmethod
    def picture(net, real, seed, sample_steps):
        net.sampling_timesteps = sample_steps
        generator = torch.Generator(device=net.device).manual_seed(seed)
        generated = net.ddim_sample(len(real), generator=generator).float().cpu().numpy()
        return generated, f"EMA samples ({sample_steps} DDIM steps)"


class ForensicBTDDetector(BTDDetector):
    """BTD in forensic mode: a lung window in float (no clamp: parenchyma and its noise are not erased), the
    noise-prediction error at several small t with fixed noise draws, trained with t biased to small values,
    and a two-sided score: |log(error in the centre disc / error in the ring around it)| — an in-painted
    site that is too smooth and one that is too noisy both stand out from their own surroundings."""

    method = "btd-forensic"
    ct_window = (-1150.0, -350.0)
    clip = False
    steps = (1, 3, 10)  # the small t scored (the sigmoid schedule's σ_t ≈ 0.017–0.04 in [−1, 1] units)
    inside_px, ring_px = 16, (24, 40)  # centre disc radius and ring radii (pixels of a 96² patch)
    noise_seed = 0

    @torch.inference_mode()
    def anomaly_maps(self, patches01):
        d, scorer = self.diffusion, self.scorer
        generator = torch.Generator().manual_seed(self.noise_seed)
        draws = [torch.randn((1,) + patches01.shape[1:], generator=generator) for _ in self.steps]

        def error(x01):
            x = x01.to(scorer.device, torch.float32) * 2 - 1
            total = torch.zeros(x.shape[0], *x.shape[2:], device=scorer.device)
            for t, noise in zip(self.steps, draws):
                noise = noise.to(scorer.device).expand_as(x)
                tt = torch.full((x.shape[0],), t, device=scorer.device, dtype=torch.long)
                eps = scorer.net(d.q_sample(x, tt, noise).to(scorer.dtype).contiguous(memory_format=torch.channels_last), tt)
                total += ((eps.float() - noise) ** 2).mean(dim=1)
            return total / len(self.steps)

        return batched(patches01, self.options.batch_size, error, (0,) + patches01.shape[2:], scorer.workers)

    def scores_from_maps(self, maps):
        p = maps.shape[-1]
        yy, xx = np.mgrid[:p, :p] - (p - 1) / 2
        radius = np.hypot(yy, xx) * 96 / p
        inside = maps[:, radius <= self.inside_px].mean(axis=1)
        ring = maps[:, (radius >= self.ring_px[0]) & (radius <= self.ring_px[1])].mean(axis=1)
        return np.abs(np.log(np.maximum(inside, 1e-12) / np.maximum(ring, 1e-12)))

    @staticmethod
    def loss(net, patches, labels, generator):
        """DDPM loss with t = ⌊T·u³⌋: about a fifth of the samples at t ≤ 10 (uniform t: 1%)."""
        u = torch.rand(patches.shape[0], generator=generator, device=patches.device)
        t = (u ** 3 * net.num_timesteps).long().clamp(max=net.num_timesteps - 1)
        noise = torch.randn(patches.shape, device=patches.device, generator=generator)
        return net.p_losses(net.normalize(patches), t, noise)


class DAEDetector(NetDetector):
    """Denoising autoencoder: anomaly = squared reconstruction error of the clean patch."""

    method = "dae"

    @classmethod
    def build(cls, config):
        return autoencoder.denoising_autoencoder()

    @torch.inference_mode()
    def anomaly_maps(self, patches01):
        return batched(patches01, self.options.batch_size, lambda x: ((self.net(x) - x) ** 2).mean(dim=1),
                       (0,) + patches01.shape[2:])

    @staticmethod
    def loss(net, patches, labels, generator):
        noise = torch.randn(patches.shape, generator=generator, dtype=patches.dtype, device=patches.device)
        return F.mse_loss(net(patches + 0.02 * noise), patches)

    @staticmethod
    @torch.inference_mode()
    def picture(net, real, seed, sample_steps):
        device = next(net.parameters()).device
        return net(torch.from_numpy(real).to(device)).float().cpu().numpy(), "EMA reconstructions"


class ClassifierDetector(NetDetector):
    """Supervised CNN: the patch's tamper probability, broadcast over the patch as its 'map'."""

    method = "supervised"
    patch_size = 64
    trains_on_tampered = True

    @classmethod
    def build(cls, config):
        return autoencoder.patch_classifier(config.patch_size)

    @torch.inference_mode()
    def probabilities(self, patches01):
        return batched(patches01, self.options.batch_size, lambda x: torch.sigmoid(self.net(x)[:, 0]), (0,))

    def anomaly_maps(self, patches01):
        p = self.probabilities(patches01)
        return np.broadcast_to(p[:, None, None], (len(p),) + patches01.shape[2:]).astype(np.float32)

    def scores_from_maps(self, maps):
        return maps[:, 0, 0]  # the probability itself: region and reduction do not apply

    def scores(self, patches01):
        return self.probabilities(patches01)

    @staticmethod
    def loss(net, patches, labels, generator):
        return F.binary_cross_entropy_with_logits(net(patches)[:, 0], labels.to(patches.device))


class ResidualClassifierDetector(ClassifierDetector):
    """Supervised on residuals: a fixed high-pass (x − 5×5 local mean) in a lung window without clip, then the
    classifier; trained with real nodules among its negatives (`--exclude` table rows and the sites before each
    removal of `--tampered`), so "there is a nodule" cannot be what it learns."""

    method = "supervised-residual"
    ct_window = (-1150.0, -350.0)
    clip = False
    nodules_as_negatives = True

    @classmethod
    def build(cls, config):
        return nn.Sequential(HighPass(), autoencoder.patch_classifier(config.patch_size))


class NoiseDetector(Detector):
    """Noise-residual statistics: fitted on genuine patches (no training loop, no network)."""

    method = "noise"
    ct_window = NOISE_WINDOW

    def __init__(self, config, statistics: NoiseStatistics, options=None, source=""):
        super().__init__(config, options, source)
        self.statistics = statistics

    @classmethod
    def from_state(cls, config, state, options=None, source="", device=None):
        return cls(config, NoiseStatistics.from_state(state["noise_model"]), options, source)

    @staticmethod
    def fit(patches01: np.ndarray, seed: int) -> dict:
        """The checkpoint entry (`noise_model`) fitted on genuine patches."""
        return fit_noise_statistics(patches01, seed=seed).state()

    def anomaly_maps(self, patches01):
        return self.statistics.anomaly_maps(patches01)


# the registry; config.METHODS lists the same names without importing torch (a test keeps them equal)
DETECTORS: dict[str, type[Detector]] = {kind.method: kind for kind in (
    BTDDetector, ForensicBTDDetector, DAEDetector, NoiseDetector, ClassifierDetector, ResidualClassifierDetector,
    *SCAN_LEVEL)}


def detector_class(method: str) -> type[Detector]:
    if method not in DETECTORS:
        raise MedfakeError(f"unknown detector method '{method}' (choose from {', '.join(DETECTORS)})")
    return DETECTORS[method]


# --- loading -------------------------------------------------------------------------------------------------

def unet_arguments_from_state(state: dict, path) -> dict:
    """Width, multipliers and attention kinds of a 1.8.3 U-Net, read off its state dict."""
    try:
        dim = state["model.init_conv.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("model.downs.")})
        widths = [state[f"model.downs.{i}.0.block1.proj.weight"].shape[0] for i in levels]
        widths.append(state["model.mid_block1.block1.proj.weight"].shape[0])
        full_attn = [f"model.downs.{i}.2.to_out.weight" in state for i in levels]
        hidden = state["model.mid_attn.to_qkv.weight"].shape[0] // 3
    except (KeyError, AttributeError, IndexError):
        raise MedfakeError("not a denoising-diffusion-pytorch 1.8.x / BTD checkpoint (unexpected model keys)", path) from None
    return {"dim": dim, "dim_mults": [w // dim for w in widths[1:]], "full_attn": full_attn,
            "init_dim": widths[0] if widths[0] != dim else None,
            "attn_heads": max(1, hidden // 32), "attn_dim_head": min(hidden, 32)}


def modality_from_filename(path: Path) -> str | None:
    """BTD publishes CT_model.pt and MRI_model.pt: the file name is all a foreign checkpoint says."""
    name = path.name.lower()
    return "mri" if "mri" in name or "mr_" in name else "ct" if "ct" in name else None


def load_detector(path, modality: str | None = None, options: ScoreOptions | None = None, device=None,
                  weights: str = "model") -> Detector:
    """A detector from a training RUN folder or a checkpoint file (ours, or BTD's CT_model.pt/MRI_model.pt).

    `modality` is needed only for foreign checkpoints that do not record it (BTD's: CT 96², MRI 128²);
    `weights` = model (the online weights, as BTD) or ema. Keys a detector does not use (our resume state,
    the training loop's) are ignored."""
    path = Path(path)
    if not path.exists() and str(path) in DETECTORS and DETECTORS[str(path)].training_free:
        kind = DETECTORS[str(path)]  # a training-free detector by name, with its default settings
        config = DetectorConfig.default(kind.method, modality or "ct")
        config.params = kind.fit(None, 0)
        return kind(config, options, kind.method)
    if path.is_dir():
        config_path, ckpt_path = path / CONFIG, path / CHECKPOINT
        if not config_path.exists() or not ckpt_path.exists():
            raise MedfakeError(f"not a detector run folder (needs {CONFIG} and {CHECKPOINT})", path)
        config = DetectorConfig.from_dict(json.loads(config_path.read_text()))
        checkpoint = load_checkpoint(ckpt_path, trusted=False)
    else:
        checkpoint = load_checkpoint(path, trusted=False)
        if not isinstance(checkpoint, dict) or not (isinstance(checkpoint.get("model", checkpoint.get("noise_model")), dict)
                                                    or "medfake_config" in checkpoint):
            raise MedfakeError("not a detector checkpoint (no 'model' state dict inside)", path)
        if "medfake_config" in checkpoint:
            config = DetectorConfig.from_dict(checkpoint["medfake_config"])
        else:
            modality = modality or modality_from_filename(path)
            if modality is None:
                raise MedfakeError("checkpoint does not record its modality: pass --model-modality ct|mri", path)
            config = DetectorConfig.default(BTDDetector.method, modality)
            config.unet = unet_arguments_from_state(checkpoint["model"], path)
    if modality is not None and modality != config.modality:
        raise MedfakeError(f"this is a {config.modality.upper()} detector, but {modality.upper()} was requested", path)
    kind = detector_class(config.method)
    state = dict(checkpoint)
    if weights == "ema" and issubclass(kind, NetDetector):
        ema = checkpoint.get("ema") or {}
        state["model"] = {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}
        if not state["model"]:
            raise MedfakeError("checkpoint has no EMA weights", path)
    return kind.from_state(config, state, options, str(path), device)
