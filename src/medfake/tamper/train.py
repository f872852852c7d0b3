"""Train an injector or remover: 3D pix2pix in-painting with LSGAN + λ·L1 on a training set.

Run folder: config.json (resolved), run.json (seed, versions, git commit), losses.csv, snapshots/*.png
(condition / generated / original), checkpoint.pt (models, optimizers, step, data position, RNG: resumes
exactly) and model/ (what tampering loads; rewritten at every checkpoint and at the last step, unlike
CT-GAN which never saved its last epoch, defect 11). The data are reshuffled every epoch and a validation
split (by location) is held out (defect 13). Labels are the usual real = 1, fake = 0 (CT-GAN inverted them).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.tamper.trainset import TrainingSet
from medfake.errors import MedfakeError
from medfake.runinfo import git_commit, seed_everything, write_run_record
from medfake.tamper.model import TrainConfig, build_discriminator, build_generator, hole_slices, mask_hole, save_model_folder
from medfake.training import load_checkpoint, make_accelerator, progress_bar, rng_state, save_checkpoint, set_rng_state

LOSS_COLUMNS = ("step", "epoch", "d_loss", "g_loss", "g_adv", "g_l1", "val_l1_hole")
VAL_CUBES = 64
CHANNELS_LAST = torch.channels_last_3d


class DataOrder:
    """Per-epoch reshuffled batches of training indices; its (epoch, position) is all a resume needs."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, epoch: int = 0, position: int = 0):
        self.indices, self.batch_size, self.seed = np.asarray(indices), batch_size, seed
        self.epoch, self.position = epoch, position

    def permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)

    def next_batch(self) -> np.ndarray:
        order = self.permutation()
        if self.position + 2 > len(order):  # fewer than 2 left: batch norm needs 2, start the next epoch
            self.epoch, self.position = self.epoch + 1, 0
            order = self.permutation()
        batch = order[self.position: self.position + self.batch_size]
        self.position += len(batch)
        return np.sort(batch)


class Trainer:
    def __init__(self, data: TrainingSet, out: Path, config: TrainConfig):
        self.data, self.out, self.config = data, out, config
        self.accelerator = make_accelerator(config.mixed_precision)
        seed_everything(config.seed)
        # channels-last 3D is 2-3x faster for these thin convolutions on CPU (oneDNN) and fine on GPU
        generator = build_generator(config).to(memory_format=CHANNELS_LAST)
        discriminator = build_discriminator(config).to(memory_format=CHANNELS_LAST)
        betas = (config.beta1, 0.999)
        opt_g = torch.optim.Adam(generator.parameters(), lr=config.g_lr, betas=betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=betas)
        self.G, self.D, self.opt_g, self.opt_d = self.accelerator.prepare(generator, discriminator, opt_g, opt_d)
        self.train_idx, self.val_idx = data.split(config.val_fraction, config.seed)
        if len(self.train_idx) < 2:
            raise MedfakeError("the training set has fewer than 2 training cubes", data.folder)
        self.order = DataOrder(self.train_idx, config.batch_size, config.seed)
        self.step = 0
        preview = self.val_idx if len(self.val_idx) else self.train_idx
        self.preview_idx = np.sort(preview[np.linspace(0, len(preview) - 1, 3).astype(int)])
        self.val_subset = np.sort(self.val_idx[np.linspace(0, len(self.val_idx) - 1, min(VAL_CUBES, len(self.val_idx))).astype(int)]) \
            if len(self.val_idx) else self.val_idx

    # --- data ------------------------------------------------------------------------------------
    def batch(self, indices: np.ndarray) -> torch.Tensor:
        cubes = np.asarray(self.data.cubes[indices], dtype=np.float32)
        net = self.data.equalizer.to_net(cubes)
        return torch.from_numpy(net)[:, None].to(self.accelerator.device).contiguous(memory_format=CHANNELS_LAST)

    # --- one step --------------------------------------------------------------------------------
    def train_step(self) -> dict:
        c = self.config
        self.G.train()
        self.D.train()
        real = self.batch(self.order.next_batch())
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
        self.step += 1
        return {"step": self.step, "epoch": self.order.epoch, "d_loss": loss_d.item(), "g_loss": loss_g.item(),
                "g_adv": adv.item(), "g_l1": l1.item()}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean absolute error inside the hole on held-out locations (network units)."""
        if not len(self.val_subset):
            return float("nan")
        self.G.eval()
        errors = []
        for chunk in np.array_split(self.val_subset, max(1, len(self.val_subset) // 16)):
            real = self.batch(chunk)
            fake = self.G(mask_hole(real, self.config.hole))
            region = (..., *hole_slices(self.config.cube, self.config.hole))
            errors.append(torch.mean(torch.abs(fake[region] - real[region])).item() * len(chunk))
        return float(sum(errors) / len(self.val_subset))

    # --- outputs ---------------------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self) -> Path:
        self.G.eval()
        real = self.batch(self.preview_idx)
        cond = mask_hole(real, self.config.hole)
        fake = self.G(cond)
        rows = [t[:, 0].float().cpu().numpy() for t in (cond, fake, real)]
        path = self.out / "snapshots" / f"step_{self.step:06d}.png"
        save_snapshot([[self.data.equalizer.to_hu(x) for x in row] for row in rows], path, self.step)
        return path

    def state(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"generator": unwrap(self.G).state_dict(), "discriminator": unwrap(self.D).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step,
                "epoch": self.order.epoch, "position": self.order.position, "rng": rng_state(),
                "config": self.config.to_dict()}

    def load_state(self, state: dict) -> None:
        unwrap = self.accelerator.unwrap_model
        unwrap(self.G).load_state_dict(state["generator"])
        unwrap(self.D).load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.order.epoch, self.order.position = int(state["epoch"]), int(state["position"])
        set_rng_state(state["rng"])

    def checkpoint(self) -> None:
        save_checkpoint(self.out / "checkpoint.pt", self.state())
        self.write_model()

    def write_model(self) -> Path:
        """Replace RUN/model with the current generator, equalizer, config and provenance."""
        final = self.out / "model"
        tmp = self.out / ".model.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        info = {"step": self.step, "epoch": self.order.epoch, "git_commit": git_commit(),
                "training_set": str(self.data.folder), "seed": self.config.seed}
        save_model_folder(tmp, self.config, self.accelerator.unwrap_model(self.G), self.data.equalizer, info)
        write_run_record(tmp, self.config.to_dict(), self.config.seed)
        old = self.out / ".model.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final


def train(data_dir: str | Path, out: str | Path, config: TrainConfig, resume: bool = False,
          steps: int | None = None, show_progress: bool = True, max_minutes: float | None = None) -> Path:
    """Train until `config.steps` (or `steps`); with `resume` continue RUN/checkpoint.pt exactly where it
    stopped, with the configuration saved in it (only the number of steps can change). `max_minutes` stops
    earlier on wall-clock time; the step reached is checkpointed and saved as the model either way."""
    data = TrainingSet(data_dir)
    out = Path(out)
    config = _bind_to_data(config, data)
    checkpoint = out / "checkpoint.pt"
    if resume:
        if not checkpoint.exists():
            raise MedfakeError("nothing to resume (no checkpoint.pt)", out)
        state = load_checkpoint(checkpoint)
        config = TrainConfig.from_dict(state["config"])
    elif out.exists() and any(out.iterdir()):
        raise MedfakeError("run folder is not empty (use --resume to continue it)", out)
    if steps is not None:
        config.steps = int(steps)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(data, out, config)
    if resume:
        trainer.load_state(state)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_run_record(out, config.to_dict(), config.seed)
    log = _loss_log(out / "losses.csv", trainer.step)
    deadline = time.monotonic() + 60.0 * max_minutes if max_minutes else float("inf")
    with progress_bar() if show_progress else _NoProgress() as bar:
        task = bar.add_task(f"train {config.action}", total=config.steps, completed=trainer.step, status="")
        while trainer.step < config.steps:
            row = trainer.train_step()
            last = trainer.step == config.steps or time.monotonic() >= deadline
            row["val_l1_hole"] = trainer.validate() if (trainer.step % config.val_every == 0 or last) else ""
            log.writerow(row)
            if trainer.step % config.snapshot_every == 0 or last:
                trainer.snapshot()
            if trainer.step % config.checkpoint_every == 0 or last:
                trainer.checkpoint()
            bar.update(task, advance=1, status=f"D {row['d_loss']:.3f} G {row['g_loss']:.2f} L1 {row['g_l1']:.3f}")
            if last:
                break
    log.close()
    if not (out / "model").exists():
        trainer.checkpoint()
    return out


def _bind_to_data(config: TrainConfig, data: TrainingSet) -> TrainConfig:
    if data.config.get("action") != config.action:
        raise MedfakeError(f"this training set was built to {data.config.get('action')}, not to {config.action}",
                           data.folder)
    config.cube = int(data.config["cube"])
    config.iso_spacing = float(data.config["iso_spacing"])
    config.validate()
    return config


def _loss_log(path: Path, resume_step: int):
    """losses.csv, keeping only rows up to the step we resume from (later rows were never checkpointed)."""
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
    return LossLog(path, rows)


class LossLog:
    def __init__(self, path: Path, rows: list[dict]):
        self.fh = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)

    def writerow(self, row: dict) -> None:
        self.writer.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def read_losses(run: str | Path) -> list[dict]:
    with open(Path(run) / "losses.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def save_snapshot(rows: list[list[np.ndarray]], path: Path, step: int) -> Path:
    """Grid: rows condition / generated / original, one column per sample, middle z-slice, lung window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    names = ("condition", "generated", "original")
    fig, axes = plt.subplots(3, len(rows[0]), figsize=(2.2 * len(rows[0]), 6.6), squeeze=False)
    for r, (name, row) in enumerate(zip(names, rows)):
        for c, cube in enumerate(row):
            ax = axes[r, c]
            ax.imshow(cube[cube.shape[0] // 2], cmap="gray", vmin=-1000, vmax=400)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"step {step}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=72)
    plt.close(fig)
    os.replace(tmp, path)
    return path
