"""The in-painting networks built from a `GanTrainConfig`, and the model folder a tamper run loads.

A run folder `RUN/` holds `model/` with everything tampering needs: `generator.pt` (a plain state dict, loaded
with `weights_only=True`), `equalizer.npz` and `model.json` (architecture, cube geometry, step, git commit).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfake.errors import MedfakeError
from medfake.nn.pix2pix3d import PatchDiscriminator3D, UNetGenerator3D
from medfake.tamper.config import GanTrainConfig
from medfake.tamper.equalizer import Equalizer

FLIP_VIEWS = ((), (2,), (1,), (1, 2))  # z,y,x axes flipped; the in-plane flips of the training augmentation


def hole_slices(cube: int, hole: int) -> tuple[slice, slice, slice]:
    start = (cube - hole) // 2
    return (slice(start, start + hole),) * 3


def mask_hole(net_cubes: torch.Tensor | np.ndarray, hole: int):
    """Condition = the cube with its central hole³ set to 0 (the middle of the [-1, 1] range)."""
    out = net_cubes.clone() if isinstance(net_cubes, torch.Tensor) else np.array(net_cubes, copy=True)
    out[(..., *hole_slices(out.shape[-1], hole))] = 0
    return out


def build_generator(config: GanTrainConfig) -> UNetGenerator3D:
    return UNetGenerator3D(config.g_filters, dropout=config.dropout)


def build_discriminator(config: GanTrainConfig) -> PatchDiscriminator3D:
    return PatchDiscriminator3D(config.d_filters)


@dataclass
class TamperModel:
    """A trained in-painting generator with its equalizer: HU cube in, HU cube out."""

    config: GanTrainConfig
    generator: torch.nn.Module
    equalizer: Equalizer
    model_id: str
    info: dict = field(default_factory=dict)

    @property
    def action(self) -> str:
        return self.config.action

    @torch.no_grad()
    def inpaint_views(self, cube_hu: np.ndarray, n_views: int) -> np.ndarray:
        """(n, cube³) HU: the hole filled as seen through the first n in-plane flips training used (none, x,
        y, both), each flipped back. One batched generator pass; the views differ where the generator is
        unsure, which lets a caller keep the best one."""
        if not 1 <= n_views <= len(FLIP_VIEWS):
            raise MedfakeError(f"views must be 1..{len(FLIP_VIEWS)}, not {n_views}")
        net = mask_hole(self.equalizer.to_net(cube_hu), self.config.hole)
        batch = np.stack([np.flip(net, axes) for axes in FLIP_VIEWS[:n_views]])
        x = torch.from_numpy(np.ascontiguousarray(batch))[:, None].contiguous(memory_format=torch.channels_last_3d)
        out = self.generator(x)[:, 0].numpy()
        return np.stack([self.equalizer.to_hu(np.flip(o, axes)) for o, axes in zip(out, FLIP_VIEWS)])


def save_model_folder(folder: Path, config: GanTrainConfig, generator, equalizer: Equalizer, info: dict) -> Path:
    """Write generator weights, equalizer and model.json into `folder` (replaced atomically by the caller)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    torch.save(state, folder / "generator.pt")
    equalizer.save(folder / "equalizer.npz")
    (folder / "model.json").write_text(json.dumps({"config": config.to_dict(), **info}, indent=2, default=str))
    return folder


def model_folder(run_dir: str | Path) -> Path:
    """`RUN/model` (or RUN itself when it already is a model folder)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MedfakeError("no such model run folder", run_dir)
    for candidate in (run_dir / "model", run_dir):
        if (candidate / "model.json").exists():
            return candidate
    raise MedfakeError("not a medfake tamper model (no model/model.json; train one with `medfake train`)", run_dir)


def load_tamper_model(run_dir: str | Path, action: str | None = None) -> TamperModel:
    """Load the generator of a training run for tampering (eval mode: dropout off, BN running stats)."""
    folder = model_folder(run_dir)
    try:
        meta = json.loads((folder / "model.json").read_text())
        if meta.get("kind", "ctgan") != "ctgan":
            raise MedfakeError(f"this is a {meta['kind']} model, not a CT-GAN one (use --method {meta['kind']})", folder)
        config = GanTrainConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MedfakeError(f"unreadable model.json ({exc.__class__.__name__})", folder / "model.json") from None
    if action is not None and config.action != action:
        raise MedfakeError(f"this model was trained to {config.action}, not to {action}", folder)
    weights = folder / "generator.pt"
    if not weights.exists():
        raise MedfakeError("missing generator.pt", folder)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        generator = build_generator(config)
        generator.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a bad or mismatched file
        raise MedfakeError(f"cannot load generator weights ({exc.__class__.__name__})", weights) from None
    generator.eval().to(memory_format=torch.channels_last_3d)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    model_id = f"{folder.parent.name if folder.name == 'model' else folder.name}@{meta.get('step', '?')}:{digest}"
    return TamperModel(config, generator, Equalizer.load(folder / "equalizer.npz"), model_id, meta)
