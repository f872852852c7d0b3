"""Model presets, the resolved training configuration, and the model folder a tamper run loads.

A run folder `RUN/` holds `model/` with everything tampering needs: `generator.pt` (a plain state dict, loaded
with `weights_only=True`), `equalizer.npz` and `model.json` (architecture, cube geometry, step, git commit).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from medfake.errors import MedfakeError
from medfake.tamper.equalizer import Equalizer

ACTIONS = ("inject", "remove")
FLIP_VIEWS = ((), (2,), (1,), (1, 2))  # z,y,x axes flipped; the in-plane flips of the training augmentation

# Learning rates: the reference trains G at 2e-4 and D at 1e-6 (defect 12: D barely learns, so the
# adversarial term is noise). With λ·L1 = 100 dominating, D only has to judge texture; 10x below G keeps it
# learning without overpowering G on small training sets (the collapse users reported in issue #1).
PRESETS: dict[str, dict] = {
    "paper": dict(g_filters=(100, 200, 400, 800, 800), d_filters=(100, 200, 400, 800), dropout=0.5,
                  batch_size=32, steps=70_000, g_lr=2e-4, d_lr=2e-5, snapshot_every=500, checkpoint_every=1000),
    "cpu-small": dict(g_filters=(8, 16, 32, 64, 64), d_filters=(8, 16, 32, 64), dropout=0.2,
                      batch_size=8, steps=1500, g_lr=1e-3, d_lr=1e-4, snapshot_every=250, checkpoint_every=250),
}


@dataclass
class TrainConfig:
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
    val_every: int = 250
    snapshot_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    mixed_precision: str = "auto"

    @classmethod
    def resolve(cls, action: str, preset: str, **overrides) -> "TrainConfig":
        if action not in ACTIONS:
            raise MedfakeError(f"action must be inject or remove, not '{action}'")
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["g_filters"], d["d_filters"] = list(self.g_filters), list(self.d_filters)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("g_filters", "d_filters"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def hole_slices(cube: int, hole: int) -> tuple[slice, slice, slice]:
    start = (cube - hole) // 2
    return (slice(start, start + hole),) * 3


def mask_hole(net_cubes: torch.Tensor | np.ndarray, hole: int):
    """Condition = the cube with its central hole³ set to 0 (the middle of the [-1, 1] range)."""
    out = net_cubes.clone() if isinstance(net_cubes, torch.Tensor) else np.array(net_cubes, copy=True)
    out[(..., *hole_slices(out.shape[-1], hole))] = 0
    return out


def build_generator(config: TrainConfig):
    from medfake.nn.pix2pix3d import UNetGenerator3D

    return UNetGenerator3D(config.g_filters, dropout=config.dropout)


def build_discriminator(config: TrainConfig):
    from medfake.nn.pix2pix3d import PatchDiscriminator3D

    return PatchDiscriminator3D(config.d_filters)


@dataclass
class TamperModel:
    """A trained in-painting generator with its equalizer: HU cube in, HU cube out."""

    config: TrainConfig
    generator: torch.nn.Module
    equalizer: Equalizer
    model_id: str
    info: dict = field(default_factory=dict)

    @property
    def action(self) -> str:
        return self.config.action

    def inpaint(self, cube_hu: np.ndarray) -> np.ndarray:
        """Fill the central hole of an HU cube (cube³, isotropic); returns the generator's full HU cube."""
        return self.inpaint_views(cube_hu, 1)[0]

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


def save_model_folder(folder: Path, config: TrainConfig, generator, equalizer: Equalizer, info: dict) -> Path:
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
        config = TrainConfig.from_dict(meta["config"])
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
