"""Train an injector or remover: 3D pix2pix in-painting with LSGAN + λ·L1 on a training set, on the one loop
(`medfake.training.fit`: seeding, devices, exact resume, progress, losses.csv/losses.png, run record).

Run folder: config.json, run.json, losses.csv + losses.png (d_loss, g_loss, g_adv, g_l1 per step),
checkpoint.pt (networks, optimizers, data position; the loop adds step and RNG states: resumes exactly), and at
every snapshot step (and the last): snapshots/step_NNNNNN.png (condition / generated / original), a row of
validation.csv (L1 in the hole on held-out locations) and model/ (what tampering loads, replaced atomically;
unlike CT-GAN, which never saved its last epoch, defect 11). The data are reshuffled every epoch and a
validation split (by location) is held out (defect 13). Labels are the usual real = 1, fake = 0 (CT-GAN
inverted them).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_file
from medfake.render import save_patch_grid
from medfake.runinfo import git_commit, write_run_record
from medfake.tamper.config import GanTrainConfig
from medfake.tamper.model import build_discriminator, build_generator, hole_slices, mask_hole, save_model_folder
from medfake.tamper.trainset import CubeFeed, TrainingSet
from medfake.training import LoopConfig, fit

CHECKPOINT, VALIDATION = "checkpoint.pt", "validation.csv"
VAL_CUBES = 64
CHANNELS_LAST = torch.channels_last_3d
PREVIEW_HU = (-1000.0, 400.0)  # lung window of the snapshot


class DataOrder:
    """Per-epoch reshuffled batches of training indices; its (epoch, position) is all a resume needs. Each
    process (`rank`) shuffles with its own stream, so processes train on different batches while their epoch
    and position stay in step (the main process's pair resumes them all)."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, epoch: int = 0, position: int = 0,
                 rank: int = 0):
        self.indices, self.batch_size, self.seed, self.rank = np.asarray(indices), batch_size, seed, rank
        self.epoch, self.position = epoch, position

    def permutation(self) -> np.ndarray:
        stream = [self.seed, self.epoch] + ([self.rank] if self.rank else [])  # rank 0: as a single process
        return np.random.default_rng(stream).permutation(self.indices)

    def upcoming(self, count: int) -> list[np.ndarray]:
        """The next `count` batches, without moving on."""
        ahead = DataOrder(self.indices, self.batch_size, self.seed, self.epoch, self.position, self.rank)
        return [ahead.next_batch() for _ in range(count)]

    def next_batch(self) -> np.ndarray:
        order = self.permutation()
        if self.position + 2 > len(order):  # fewer than 2 left: batch norm needs 2, start the next epoch
            self.epoch, self.position = self.epoch + 1, 0
            order = self.permutation()
        batch = order[self.position: self.position + self.batch_size]
        self.position += len(batch)
        return np.sort(batch)


class InpaintingGan:
    """The 3-D pix2pix pair as a `training.TrainableModel` (pix2pix's `optimize_parameters` as `train_step`)."""

    checkpoint_name = CHECKPOINT

    def __init__(self, data: TrainingSet, config: GanTrainConfig):
        self.data, self.config = data, config
        self.name = config.action

    # --- TrainableModel ----------------------------------------------------------------------------
    def setup(self, accelerator) -> None:
        c = self.config
        self.accelerator = accelerator
        # channels-last 3D is 2-3x faster for these thin convolutions on CPU (oneDNN) and fine on GPU
        generator = build_generator(c).to(memory_format=CHANNELS_LAST)
        discriminator = build_discriminator(c).to(memory_format=CHANNELS_LAST)
        opt_g = torch.optim.Adam(generator.parameters(), lr=c.g_lr, betas=(c.beta1, 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=c.d_lr, betas=(c.beta1, 0.999))
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(generator, discriminator, opt_g, opt_d)
        train_idx, val_idx = self.data.split(c.val_fraction, c.seed)
        if len(train_idx) < 2:
            raise MedfakeError("the training set has fewer than 2 training cubes", self.data.folder)
        self.order = DataOrder(train_idx, c.batch_size, c.seed, rank=accelerator.process_index)
        self.feed = CubeFeed(self.data, c.data_workers)
        preview = val_idx if len(val_idx) else train_idx
        self.preview_idx = np.sort(preview[np.linspace(0, len(preview) - 1, 3).astype(int)])
        self.val_subset = evenly_spaced(val_idx, VAL_CUBES)

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        self.G.train()
        self.D.train()
        indices = self.order.next_batch()
        real = self.batch(indices, self.order.upcoming(2 * c.data_workers))
        cond = mask_hole(real, c.hole)
        with self.accelerator.autocast():
            fake = self.G(cond)
            d_real, d_fake = self.D(real, cond), self.D(fake.detach(), cond)
            loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_d)
        self.opt_d.step()
        with self.accelerator.autocast():
            d_fake = self.D(fake, cond)
            adv = F.mse_loss(d_fake, torch.ones_like(d_fake))
            region = (..., *hole_slices(c.cube, c.hole)) if c.l1_region == "hole" else (...,)
            l1 = torch.mean(torch.abs(fake[region] - real[region]))
            loss_g = adv + c.l1_weight * l1
        self.opt_g.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_g)
        self.opt_g.step()
        return {"epoch": self.order.epoch, "d_loss": loss_d.item(), "g_loss": loss_g.item(), "g_adv": adv.item(),
                "g_l1": l1.item()}

    def state(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"generator": unwrap(self.G).state_dict(), "discriminator": unwrap(self.D).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "epoch": self.order.epoch, "position": self.order.position, "config": self.config.to_dict()}

    def load_state(self, state: dict) -> None:
        free = {"steps": 0, "data_workers": 0}  # neither changes what is computed
        if {**GanTrainConfig.from_dict(state["config"]).to_dict(), **free} != {**self.config.to_dict(), **free}:
            raise MedfakeError("config.json differs from the checkpoint's configuration (only the steps and the "
                               "data workers may change)")
        unwrap = self.accelerator.unwrap_model
        unwrap(self.G).load_state_dict(state["generator"])
        unwrap(self.D).load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.order.epoch, self.order.position = int(state["epoch"]), int(state["position"])

    def snapshot(self, folder: Path, step: int) -> None:
        self.save_preview(folder / "snapshots" / f"step_{step:06d}.png", step)
        log_validation(folder / VALIDATION, step, self.validate())
        self.export(folder, step)

    # --- data, validation, outputs -----------------------------------------------------------------
    def batch(self, indices: np.ndarray, upcoming=()) -> torch.Tensor:
        net = self.data.equalizer.to_net(self.feed.cubes(indices, upcoming))
        return torch.from_numpy(net)[:, None].to(self.accelerator.device).contiguous(memory_format=CHANNELS_LAST)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean absolute error inside the hole on held-out locations (network units)."""
        if not len(self.val_subset):
            return float("nan")
        generator = self.accelerator.unwrap_model(self.G).eval()  # the main process alone: no DDP collectives
        region = (..., *hole_slices(self.config.cube, self.config.hole))
        errors = []
        for chunk in np.array_split(self.val_subset, max(1, len(self.val_subset) // 16)):
            real = self.batch(chunk)
            fake = generator(mask_hole(real, self.config.hole))
            errors.append(torch.mean(torch.abs(fake[region] - real[region])).item() * len(chunk))
        return float(sum(errors) / len(self.val_subset))

    @torch.no_grad()
    def save_preview(self, path: Path, step: int) -> Path:
        """Rows condition / generated / original, one column per sample, middle z-slice, lung window."""
        generator = self.accelerator.unwrap_model(self.G).eval()
        real = self.batch(self.preview_idx)
        cond = mask_hole(real, self.config.hole)
        lo, hi = PREVIEW_HU
        rows = []
        for cubes in (cond, generator(cond), real):
            hu = self.data.equalizer.to_hu(cubes[:, 0].float().cpu().numpy())
            rows.append((hu[:, None, hu.shape[1] // 2] - lo) / (hi - lo))
        return save_patch_grid(rows, [f"condition (step {step})", "generated", "original"], path)

    def export(self, folder: Path, step: int) -> Path:
        """Replace RUN/model with the current generator, equalizer, config and provenance."""
        final, tmp, old = folder / "model", folder / ".model.partial", folder / ".model.old"
        shutil.rmtree(tmp, ignore_errors=True)
        info = {"step": step, "epoch": self.order.epoch, "git_commit": git_commit(),
                "training_set": str(self.data.folder), "seed": self.config.seed}
        save_model_folder(tmp, self.config, self.accelerator.unwrap_model(self.G), self.data.equalizer, info)
        write_run_record(tmp, self.config.to_dict(), self.config.seed)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final


def evenly_spaced(indices: np.ndarray, count: int) -> np.ndarray:
    if not len(indices):
        return indices
    return np.sort(indices[np.linspace(0, len(indices) - 1, min(count, len(indices))).astype(int)])


def log_validation(path: Path, step: int, l1_hole: float) -> None:
    """validation.csv: step, val_l1_hole; rows from this step on are replaced (a resumed run redoes them)."""
    rows = [r for r in read_validation(path.parent) if int(r["step"]) < step] if path.exists() else []
    rows.append({"step": step, "val_l1_hole": l1_hole})
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "val_l1_hole"])
        writer.writeheader()
        writer.writerows(rows)


def read_validation(run: str | Path) -> list[dict]:
    with open(Path(run) / VALIDATION, newline="") as fh:
        return list(csv.DictReader(fh))


def train(data_dir: str | Path, out: str | Path, config: GanTrainConfig, resume: bool = False,
          steps: int | None = None, show_progress: bool = True, max_minutes: float | None = None,
          data_workers: int | None = None) -> Path:
    """Train until `config.steps` (or `steps`); with `resume` continue RUN/checkpoint.pt exactly where it
    stopped, with the configuration saved in the run (only the steps and the data workers can change).
    `max_minutes` stops earlier on wall-clock time; the step reached is checkpointed and exported as the model
    either way."""
    data = TrainingSet(data_dir)
    out = Path(out)
    if resume:
        config = saved_config(out)
    config = bind_to_data(config, data)
    if steps is not None:
        config.steps = int(steps)
    if data_workers is not None:
        config.data_workers = int(data_workers)
        config.validate()
    loop = LoopConfig(steps=config.steps, seed=config.seed, mixed_precision=config.mixed_precision,
                      checkpoint_every=config.checkpoint_every, snapshot_every=config.snapshot_every,
                      max_minutes=max_minutes, show_progress=show_progress)
    return fit(InpaintingGan(data, config), out, loop, config.to_dict(), resume=resume)


def saved_config(run: Path) -> GanTrainConfig:
    if not (run / CHECKPOINT).exists() or not (run / "config.json").exists():
        raise MedfakeError(f"nothing to resume (no {CHECKPOINT})", run)
    return GanTrainConfig.from_dict(json.loads((run / "config.json").read_text()))


def bind_to_data(config: GanTrainConfig, data: TrainingSet) -> GanTrainConfig:
    """The cube geometry comes from the training set; its action must be the model's."""
    if data.config.get("action") != config.action:
        raise MedfakeError(f"this training set was built to {data.config.get('action')}, not to {config.action}",
                           data.folder)
    config.cube = int(data.config["cube"])
    config.iso_spacing = float(data.config["iso_spacing"])
    config.validate()
    return config
