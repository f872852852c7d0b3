"""`medfake train detector`: fit a detector on genuine axial-slice patches (the supervised one also on tampered).

RUN folder: config.json (detector config), train.json (training config), run.json (versions, seed, commit),
checkpoints/model-latest.pt in BTD's trainer layout {'step','model','opt','ema','scaler','version'} plus our
'medfake' resume state and 'medfake_config', loss.csv, loss.png, samples.png.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.detect.detectors import CHECKPOINT, CONFIG, METHODS, DetectorConfig, build_network
from medfake.detect.noise import fit_noise_model
from medfake.detect.patches import (PatchSampler, Volume, centred_crop, modality_key, to_unit,
                                    training_volume)
from medfake.errors import MedfakeError
from medfake.io.atomic import check_destination

VERSION = "1.8.3"  # the denoising-diffusion-pytorch layout our checkpoints follow


@dataclass
class TrainConfig:
    method: str = "btd"
    modality: str = "ct"
    preset: str = "cpu-small"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4  # BTD used 8e-6 for 700k steps; short CPU runs need a larger step
    seed: int = 0
    save_every: int = 500
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 100  # ema-pytorch's update_after_step: copy the weights until then
    grad_clip: float = 1.0
    in_lung: bool = True
    exclude_radius_mm: float = 20.0
    samples: int = 8
    sample_steps: int = 50
    noise_patches: int = 400  # patches used to fit the noise statistics
    patch_size: int | None = None  # default: 96 CT, 128 MRI (64 for the supervised classifier)

    def __post_init__(self):
        if self.method not in METHODS:
            raise MedfakeError(f"unknown detector method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.modality not in ("ct", "mri"):
            raise MedfakeError(f"modality must be ct or mri, not '{self.modality}'")


class EMA:
    """Exponential moving average with ema-pytorch's state-dict layout (initted, step, online_model.*, ema_model.*)."""

    def __init__(self, model: torch.nn.Module, decay: float, every: int, start: int):
        self.online, self.decay, self.every, self.start = model, decay, every, start
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        if self.step % self.every:
            return
        for ema_p, online_p in zip(self.model.parameters(), self.online.parameters()):
            if self.step <= self.start:
                ema_p.copy_(online_p)
            else:
                ema_p.lerp_(online_p, 1 - self.decay)
        for ema_b, online_b in zip(self.model.buffers(), self.online.buffers()):
            ema_b.copy_(online_b)  # schedules are copied, never averaged (denoising-diffusion-pytorch #136)

    def state_dict(self) -> dict:
        state = {"initted": torch.tensor(True), "step": torch.tensor(self.step)}
        state.update({f"online_model.{k}": v for k, v in self.online.state_dict().items()})
        state.update({f"ema_model.{k}": v for k, v in self.model.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict({k[len("ema_model."):]: v for k, v in state.items() if k.startswith("ema_model.")})


# --- data ------------------------------------------------------------------------------------------------

def load_volumes(scans, det: DetectorConfig, config: TrainConfig, exclude=None, progress=None) -> list[Volume]:
    """Genuine training volumes; every scan must have the run's modality; excluded locations stay unseen."""
    from medfake.data.cohort import location_voxel, locations_for, scan_paths
    from medfake.io import load_scan
    from medfake.io.tables import read_locations

    table = read_locations(exclude) if exclude else []
    volumes = []
    paths = scan_paths(scans)
    task = progress.add_task("loading scans", total=len(paths), status="") if progress else None
    for path in paths:
        scan = load_scan(path)
        if modality_key(scan) != config.modality:
            raise MedfakeError(f"scan is {scan.modality} but the detector is trained for {config.modality.upper()}", path)
        excluded = [location_voxel(scan, loc) for loc in locations_for(path, scan, table) if scan.contains(
            scan.world_to_continuous(loc.coords) if loc.system == "world" else loc.coords)]
        volumes.append(training_volume(scan, str(path), det.patch_size, det.window, config.in_lung, excluded,
                                       config.exclude_radius_mm))
        if task is not None:
            progress.advance(task)
    return volumes


def tampered_patches(manifest, det: DetectorConfig) -> np.ndarray:
    """Patches centred on every tampered location of a tamper manifest (the supervised detector's positives)."""
    from medfake.io import load_scan
    from medfake.io.tables import read_manifest

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise MedfakeError("tamper manifest has no rows", manifest)
    out, cache = [], {}
    for row in rows:
        path = Path(row.output) if Path(row.output).is_absolute() else manifest.parent / row.output
        if path not in cache:
            cache = {path: to_unit(load_scan(path), det.window)}
        out.append(centred_crop(cache[path][row.voxel_z], row.voxel_y, row.voxel_x, det.patch_size)[None])
    return np.stack(out)


# --- training --------------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, out: Path, det: DetectorConfig, config: TrainConfig, volumes: list[Volume],
                 positives: np.ndarray | None = None):
        from medfake.training import make_accelerator

        self.out, self.det, self.config = out, det, config
        torch.manual_seed(config.seed)
        self.sampler = PatchSampler(volumes, det.patch_size, rng=np.random.default_rng(config.seed))
        self.positives = positives
        self.accelerator = make_accelerator()
        self.model = build_network(det)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.99))
        self.model, self.opt = self.accelerator.prepare(self.model, self.opt)
        self.ema = EMA(self.accelerator.unwrap_model(self.model), config.ema_decay, config.ema_every, config.ema_start)
        self.step, self.losses = 0, []

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.config.batch_size
        if self.det.method != "supervised":
            return torch.from_numpy(self.sampler.batch(n)), None
        genuine = self.sampler.batch(n - n // 2)
        pick = self.sampler.rng.integers(len(self.positives), size=n // 2)
        fakes = self.positives[pick].copy()
        flip = self.sampler.rng.random(len(fakes)) < 0.5
        fakes[flip] = fakes[flip][..., ::-1]
        labels = np.r_[np.zeros(len(genuine)), np.ones(len(fakes))].astype(np.float32)
        return torch.from_numpy(np.concatenate([genuine, fakes])), torch.from_numpy(labels)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = x.to(self.accelerator.device)
        if self.det.method == "btd":
            return self.model(x)
        if self.det.method == "dae":
            noisy = x + 0.02 * torch.randn_like(x)
            return F.mse_loss(self.model(noisy), x)
        return F.binary_cross_entropy_with_logits(self.model(x)[:, 0], labels.to(x.device))

    def train_step(self) -> float:
        self.model.train()
        loss = self.loss(*self.batch())
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.opt.step()
        self.ema.update()
        self.step += 1
        return float(loss.detach())

    # checkpoints in BTD's Trainer layout + our resume state
    def state(self) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        scaler = getattr(self.accelerator, "scaler", None)
        return {"step": self.step, "model": model.state_dict(), "opt": self.opt.state_dict(),
                "ema": self.ema.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "version": VERSION, "medfake_config": self.det.as_dict(),
                "medfake": {"train": asdict(self.config), "losses": self.losses, "torch_rng": torch.get_rng_state(),
                            "sampler_rng": self.sampler.rng.bit_generator.state}}

    def save(self) -> Path:
        from medfake.training import save_checkpoint

        return save_checkpoint(self.out / CHECKPOINT, self.state())

    def resume(self) -> None:
        from medfake.training import load_checkpoint

        state = load_checkpoint(self.out / CHECKPOINT, trusted=False)
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.losses = list(state["medfake"]["losses"])
        torch.set_rng_state(state["medfake"]["torch_rng"])
        self.sampler.rng.bit_generator.state = state["medfake"]["sampler_rng"]


def fit_noise_detector(out: Path, det: DetectorConfig, config: TrainConfig, volumes: list[Volume]) -> Path:
    from medfake.training import save_checkpoint

    sampler = PatchSampler(volumes, det.patch_size, flips=False, rng=np.random.default_rng(config.seed))
    model = fit_noise_model(sampler.batch(config.noise_patches), seed=config.seed)
    return save_checkpoint(out / CHECKPOINT, {"step": 0, "noise_model": model.state(), "version": VERSION,
                                              "medfake_config": det.as_dict()})


def prepare_run(out: Path, det: DetectorConfig, config: TrainConfig, resume: bool) -> None:
    from medfake.runinfo import write_run_record

    if resume:
        if not (out / CHECKPOINT).exists():
            raise MedfakeError(f"nothing to resume ({CHECKPOINT} missing)", out)
        saved = DetectorConfig.from_dict(json.loads((out / CONFIG).read_text()))
        if saved.as_dict() != det.as_dict():
            raise MedfakeError("run was started with a different detector configuration", out / CONFIG)
        return
    check_destination(out, overwrite=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(det.as_dict(), indent=2))
    (out / "train.json").write_text(json.dumps(asdict(config), indent=2))
    write_run_record(out, {"detector": det.as_dict(), "train": asdict(config)}, config.seed)


def train_detector(scans, out, config: TrainConfig, exclude=None, tampered=None, resume: bool = False,
                   show_progress: bool = True) -> Path:
    """Train (or resume) a detector run; returns the RUN folder."""
    from medfake.training import progress_bar

    out = Path(out)
    det = DetectorConfig.default(config.method, config.modality, config.preset)
    det.patch_size = config.patch_size or det.patch_size
    if config.method == "supervised" and tampered is None:
        raise MedfakeError("the supervised detector needs tampered examples (--tampered MANIFEST)")
    prepare_run(out, det, config, resume)
    with progress_bar(transient=not show_progress) as progress:
        volumes = load_volumes(scans, det, config, exclude, progress)
        if config.method == "noise":
            fit_noise_detector(out, det, config, volumes)
            return out
        trainer = Trainer(out, det, config, volumes, tampered_patches(tampered, det) if tampered else None)
        if resume:
            trainer.resume()
        task = progress.add_task(f"training {config.method}", total=config.steps, completed=trainer.step, status="")
        while trainer.step < config.steps:
            trainer.losses.append(trainer.train_step())
            progress.update(task, advance=1, status=f"loss {np.mean(trainer.losses[-20:]):.4f}")
            if trainer.step % config.save_every == 0:
                trainer.save()
        trainer.save()
    write_figures(out, trainer)
    return out


def write_figures(out: Path, trainer: Trainer) -> None:
    from medfake.render import save_loss_curve, save_patch_grid

    losses = np.asarray(trainer.losses)
    (out / "loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(losses)))
    save_loss_curve(losses, out / "loss.png", f"{trainer.det.method} training loss")
    n = trainer.config.samples
    if n <= 0:
        return
    real = trainer.sampler.batch(n)
    if trainer.det.method == "btd":
        trainer.ema.model.sampling_timesteps = trainer.config.sample_steps
        generated = trainer.ema.model.ddim_sample(n, generator=torch.Generator().manual_seed(trainer.config.seed)).cpu().numpy()
        save_patch_grid([real, generated], ["training patches", f"EMA samples ({trainer.config.sample_steps} DDIM steps)"],
                        out / "samples.png")
    elif trainer.det.method == "dae":
        with torch.inference_mode():
            recon = trainer.ema.model(torch.from_numpy(real)).numpy()
        save_patch_grid([real, recon], ["training patches", "EMA reconstructions"], out / "samples.png")
