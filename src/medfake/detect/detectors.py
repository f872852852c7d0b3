"""The detectors behind `medfake detect --method`: one interface, four methods.

- `btd`: Back-in-Time Diffusion residual (unsupervised, our runs or BTD's published checkpoints);
- `dae`: denoising-autoencoder reconstruction error (unsupervised);
- `noise`: noise-residual statistics (unsupervised);
- `supervised`: a CNN trained on tampered examples (upper bound; needs tampered training data).

Every detector turns [0, 1] patches (N, 1, P, P), cut with its own intensity `window`, into per-pixel
anomaly maps and per-patch scores (higher = more suspicious).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfake.detect.btd import BTDScorer, ScoreOptions, batched, reduce_maps
from medfake.detect.noise import NOISE_WINDOW, NoiseModel
from medfake.detect.patches import CT_WINDOW, PATCH_SIZE
from medfake.errors import MedfakeError

METHODS = ("btd", "dae", "noise", "supervised")
CONFIG = "config.json"
CHECKPOINT = "checkpoints/model-latest.pt"


@dataclass
class DetectorConfig:
    method: str = "btd"
    modality: str = "ct"  # ct | mri
    patch_size: int = 96
    window: tuple[float, float] = CT_WINDOW
    preset: str = "cpu-small"
    unet: dict = field(default_factory=dict)  # explicit Unet arguments (override the preset)

    @classmethod
    def default(cls, method: str, modality: str, preset: str = "cpu-small") -> "DetectorConfig":
        size = 64 if method == "supervised" else PATCH_SIZE[modality]
        window = NOISE_WINDOW if method == "noise" and modality == "ct" else CT_WINDOW
        return cls(method, modality, size, window, preset)

    def as_dict(self) -> dict:
        return {"method": self.method, "modality": self.modality, "patch_size": self.patch_size,
                "window": list(self.window), "preset": self.preset, "unet": self.unet}

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        return cls(data["method"], data["modality"], int(data["patch_size"]), tuple(data["window"]),
                   data.get("preset", "cpu-small"), data.get("unet", {}))


class Detector:
    """Base: subclasses implement `anomaly_maps`; scores reduce the maps (region, mean/top-k)."""

    def __init__(self, config: DetectorConfig, options: ScoreOptions | None = None, source: str = ""):
        self.config = config
        self.options = options or ScoreOptions()
        self.source = source

    @property
    def method(self) -> str:
        return self.config.method

    def anomaly_maps(self, patches01: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, patches01: np.ndarray) -> np.ndarray:
        return reduce_maps(self.anomaly_maps(patches01), self.options)


class BTDDetector(Detector):
    def __init__(self, config, diffusion, options=None, source="", device=None):
        super().__init__(config, options, source)
        self.diffusion = diffusion
        self.scorer = BTDScorer(diffusion, self.options, device)

    def anomaly_maps(self, patches01):
        return self.scorer.anomaly_maps(patches01)


class NetDetector(Detector):
    """A detector around one torch network, always in eval mode."""

    def __init__(self, config, net, options=None, source=""):
        super().__init__(config, options, source)
        self.net = net.eval()


class TorchMapDetector(NetDetector):
    """Denoising autoencoder: anomaly = squared reconstruction error of the clean patch."""

    @torch.inference_mode()
    def anomaly_maps(self, patches01):
        return batched(patches01, self.options.batch_size, lambda x: ((self.net(x) - x) ** 2).mean(dim=1),
                       (0,) + patches01.shape[2:])


class ClassifierDetector(NetDetector):
    """Supervised CNN: the patch's tamper probability, broadcast over the patch as its 'map'."""

    @torch.inference_mode()
    def probabilities(self, patches01):
        return batched(patches01, self.options.batch_size, lambda x: torch.sigmoid(self.net(x)[:, 0]), (0,))

    def anomaly_maps(self, patches01):
        p = self.probabilities(patches01)
        return np.broadcast_to(p[:, None, None], (len(p),) + patches01.shape[2:]).astype(np.float32)

    def scores(self, patches01):
        return self.probabilities(patches01)


class NoiseDetector(Detector):
    def __init__(self, config, model: NoiseModel, options=None, source=""):
        super().__init__(config, options, source)
        self.model = model

    def anomaly_maps(self, patches01):
        return self.model.anomaly_maps(patches01)


# --- building and loading ----------------------------------------------------------------------------------

def build_network(config: DetectorConfig):
    """A fresh network for a config (the noise detector has none)."""
    from medfake.nn import autoencoder
    from medfake.nn.ddpm import build_diffusion

    if config.method == "btd":
        unet = {**config.unet, "dim_mults": tuple(config.unet["dim_mults"])} if "dim_mults" in config.unet else config.unet
        return build_diffusion(config.preset, config.patch_size, channels=1, **unet)
    if config.method == "dae":
        return autoencoder.denoising_autoencoder()
    if config.method == "supervised":
        return autoencoder.patch_classifier(config.patch_size)
    return None


def make_detector(config: DetectorConfig, state: dict, options=None, source="", device=None) -> Detector:
    """A detector from a config and its weights (`model` state dict, or the noise statistics)."""
    if config.method == "noise":
        return NoiseDetector(config, NoiseModel.from_state(state["noise_model"]), options, source)
    net = build_network(config)
    try:
        net.load_state_dict(state["model"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise MedfakeError(f"checkpoint weights do not fit a {config.method} detector "
                           f"({' '.join(str(exc).split())[:160]})", source) from None
    if config.method == "btd":
        return BTDDetector(config, net, options, source, device)
    if config.method == "dae":
        return TorchMapDetector(config, net, options, source)
    return ClassifierDetector(config, net, options, source)


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


def guess_modality(path: Path) -> str | None:
    name = path.name.lower()
    return "mri" if "mri" in name or "mr_" in name else "ct" if "ct" in name else None


def load_detector(path, modality: str | None = None, options: ScoreOptions | None = None, device=None,
                  weights: str = "model") -> Detector:
    """A detector from a training RUN folder or a checkpoint file (ours, or BTD's CT_model.pt/MRI_model.pt).

    `modality` is needed only for foreign checkpoints that do not record it (BTD's: CT 96², MRI 128²);
    `weights` = model (the online weights, as BTD) or ema."""
    from medfake.training import load_checkpoint

    path = Path(path)
    if path.is_dir():
        config_path, ckpt_path = path / CONFIG, path / CHECKPOINT
        if not config_path.exists() or not ckpt_path.exists():
            raise MedfakeError(f"not a detector run folder (needs {CONFIG} and {CHECKPOINT})", path)
        config = DetectorConfig.from_dict(json.loads(config_path.read_text()))
        checkpoint = load_checkpoint(ckpt_path, trusted=False)
    else:
        checkpoint = load_checkpoint(path, trusted=False)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model", checkpoint.get("noise_model")), dict):
            raise MedfakeError("not a detector checkpoint (no 'model' state dict inside)", path)
        if "medfake_config" in checkpoint:
            config = DetectorConfig.from_dict(checkpoint["medfake_config"])
        else:
            modality = modality or guess_modality(path)
            if modality is None:
                raise MedfakeError("checkpoint does not record its modality: pass --model-modality ct|mri", path)
            config = DetectorConfig.default("btd", modality)
            config.unet = unet_arguments_from_state(checkpoint["model"], path)
    if modality is not None and modality != config.modality:
        raise MedfakeError(f"this is a {config.modality.upper()} detector, but {modality.upper()} was requested", path)
    state = dict(checkpoint)
    if weights == "ema" and config.method != "noise":
        ema = checkpoint.get("ema") or {}
        state["model"] = {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}
        if not state["model"]:
            raise MedfakeError("checkpoint has no EMA weights", path)
    return make_detector(config, state, options, str(path), device)
