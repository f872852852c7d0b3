"""Run by tests/test_multiprocess.py under `accelerate launch` (2 processes, gloo): trains three small models
through `medfake.training.fit` (a toy regression, a 3-D pix2pix pair, a DDPM), each straight to N steps and as
N/2 + a resume to N, and leaves per-process evidence in OUT/ranks/: final weights, the first batch drawn, and
every write this process made under OUT/runs/ (seen by an audit hook).

usage: worker.py OUT CROP.npy   (CROP: a small real CT crop in HU that the models draw their batches from)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfake.nn.ddpm import build_diffusion
from medfake.nn.pix2pix3d import PatchDiscriminator3D, UNetGenerator3D
from medfake.training import LoopConfig, fit

STEPS = 6


def random_crops(volume: np.ndarray, size: tuple[int, ...], count: int) -> torch.Tensor:
    """`count` crops at positions from the global numpy RNG (per process, restored on resume), in [-1, 1]."""
    crops = []
    for _ in range(count):
        start = [np.random.randint(0, n - s + 1) for n, s in zip(volume.shape, size)]
        crops.append(volume[tuple(slice(a, a + s) for a, s in zip(start, size))])
    return torch.from_numpy(np.clip(np.stack(crops)[:, None] / 1000.0, -1, 1).astype(np.float32))


class Base:
    checkpoint_name = "checkpoints/latest.pt"

    def __init__(self, volume: np.ndarray):
        self.volume = volume
        self.first_batch = None

    def keep_first(self, batch: torch.Tensor) -> None:
        if self.first_batch is None:
            self.first_batch = batch.clone()
            self.initial = {k: v.clone() for k, v in self.weights().items()}

    def snapshot(self, folder, step):
        (folder / "snapshots").mkdir(exist_ok=True)
        weights = self.weights()
        total = sum(float(w.double().sum()) for w in weights.values())
        (folder / "snapshots" / f"step_{step}.txt").write_text(f"{total:.17g}")

    def nets(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, net in self.nets().items() for k, v in net.state_dict().items()}

    def buffer_names(self) -> list[str]:
        return [f"{name}.{k}" for name, net in self.nets().items() for k, _ in net.named_buffers()]


class Toy(Base):
    """Regress the mean HU of a 4-voxel row from the row (a linear model with momentum)."""

    name = "toy"

    def setup(self, accelerator):
        self.accelerator = accelerator
        net = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        self.net, self.opt = accelerator.prepare(net, opt)

    def train_step(self, step):
        x = random_crops(self.volume, (1, 1, 4), 8)[:, 0, 0, 0] + 0.1 * torch.randn(8, 4)
        self.keep_first(x)
        loss = F.mse_loss(self.net(x)[:, 0], x.mean(dim=1))
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        self.opt.step()
        return {"mse": loss.item()}

    def state(self):
        return {"net": self.nets()["net"].state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state):
        self.nets()["net"].load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def nets(self):
        return {"net": self.accelerator.unwrap_model(self.net)}


class Pix2Pix(Base):
    """The 3-D pix2pix in-painting step (LSGAN + L1, D on real and on detached fake, then G) on 8³ cubes."""

    name = "pix2pix3d"

    def setup(self, accelerator):
        self.accelerator = accelerator
        g, d = UNetGenerator3D(filters=(4, 8, 8)), PatchDiscriminator3D(filters=(4, 8))
        opt_g = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(g, d, opt_g, opt_d)

    def train_step(self, step):
        real = random_crops(self.volume, (8, 8, 8), 2)
        self.keep_first(real)
        cond = real.clone()
        cond[..., 2:6, 2:6, 2:6] = 0
        fake = self.G(cond)
        d_real, d_fake = self.D(real, cond), self.D(fake.detach(), cond)
        loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        self.opt_d.zero_grad()
        self.accelerator.backward(loss_d)
        self.opt_d.step()
        d_fake = self.D(fake, cond)
        loss_g = F.mse_loss(d_fake, torch.ones_like(d_fake)) + 10 * torch.mean(torch.abs(fake - real))
        self.opt_g.zero_grad()
        self.accelerator.backward(loss_g)
        self.opt_g.step()
        return {"d_loss": loss_d.item(), "g_loss": loss_g.item()}

    def state(self):
        unwrap = self.accelerator.unwrap_model
        return {"G": unwrap(self.G).state_dict(), "D": unwrap(self.D).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state(self, state):
        unwrap = self.accelerator.unwrap_model
        unwrap(self.G).load_state_dict(state["G"])
        unwrap(self.D).load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def nets(self):
        return {"G": self.accelerator.unwrap_model(self.G), "D": self.accelerator.unwrap_model(self.D)}


class Diffusion(Base):
    """The DDPM detector's training step (noise prediction) on 16² patches; like the detector, it draws the
    diffusion times and noise from a generator of its own, one stream per process (`process_state`)."""

    name = "ddpm"

    def setup(self, accelerator):
        self.accelerator = accelerator
        model = build_diffusion("tiny", image_size=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.model, self.opt = accelerator.prepare(model, opt)
        self.generator = torch.Generator().manual_seed(100 + accelerator.process_index)

    def train_step(self, step):
        patches = (random_crops(self.volume, (1, 16, 16), 2)[:, :, 0] + 1) / 2  # [0, 1] as the detector feeds it
        self.keep_first(patches)
        loss = self.model(patches, generator=self.generator)
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        self.opt.step()
        return {"loss": loss.item()}

    def state(self):
        return {"model": self.nets()["model"].state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state):
        self.nets()["model"].load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def nets(self):
        return {"model": self.accelerator.unwrap_model(self.model)}

    def process_state(self):
        return {"generator": self.generator.get_state()}

    def load_process_state(self, state):
        self.generator.set_state(state["generator"])


class Detector(Base):
    """The BTD detector's own trainer (`detect.train.DetectorTraining`: tiny DDPM, 16² patches, EMA, gradient
    clipping) with its per-process noise generator and patch sampler handed to the loop as `process_state`."""

    name = "detector"
    checkpoint_name = "checkpoint.pt"

    def __init__(self, volume: np.ndarray):
        from medfake.detect.config import DetectorTrainConfig
        from medfake.detect.detectors import DetectorConfig
        from medfake.detect.patches import Volume
        from medfake.detect.train import DetectorTraining

        super().__init__(volume)
        det = DetectorConfig("btd", "ct", 16, (-1000.0, 400.0), "tiny")
        config = DetectorTrainConfig(method="btd", preset="tiny", batch_size=2, samples=0, ema_start=2, ema_every=1,
                                     patch_size=16)
        unit = np.clip((volume + 1000.0) / 1400.0, 0, 1).astype(np.float32)
        centres = np.argwhere(np.ones((volume.shape[0], volume.shape[1] - 16, volume.shape[2] - 16), bool))
        self.trainer = DetectorTraining(det, config, [Volume("crop", unit, centres + [0, 8, 8])])

    def setup(self, accelerator):
        self.accelerator = accelerator
        self.trainer.setup(accelerator)
        draw = self.trainer.batch

        def batch():
            patches, labels = draw()
            self.keep_first(patches)
            return patches, labels

        self.trainer.batch = batch

    def train_step(self, step):
        return self.trainer.train_step(step)

    def state(self):
        return self.trainer.state()

    def load_state(self, state):
        self.trainer.load_state(state)

    def process_state(self):
        return {"generator": self.trainer.generator.get_state(), "sampler": self.trainer.sampler.rng.bit_generator.state}

    def load_process_state(self, state):
        self.trainer.generator.set_state(state["generator"])
        self.trainer.sampler.rng.bit_generator.state = state["sampler"]

    def nets(self):
        return {"model": self.accelerator.unwrap_model(self.trainer.net), "ema": self.trainer.ema.model}


def watch_writes(runs: Path, seen: list[str]) -> None:
    """Record every file this process opens for writing, renames, makes or removes under `runs`."""
    prefix = str(runs)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, Path)):
            mode, flags = (args[1] or "r"), (args[2] or 0)
            if str(args[0]).startswith(prefix) and (any(c in str(mode) for c in "wax+") or flags & 0o3):
                seen.append(f"open {args[0]}")
        elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree") and args:
            if str(args[0]).startswith(prefix):
                seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def main(out: Path, crop: Path) -> None:
    volume = np.load(crop).astype(np.float32)
    runs, ranks = out / "runs", out / "ranks"
    seen: list[str] = []
    watch_writes(runs, seen)
    rank = None
    for kind in (Toy, Pix2Pix, Diffusion, Detector):
        for label, steps, resume in (("whole", STEPS, False), ("part", STEPS // 2, False), ("part", STEPS, True)):
            model = kind(volume)
            loop = LoopConfig(steps=steps, seed=3, cpu=True, checkpoint_every=2, snapshot_every=2,
                              show_progress=False)
            fit(model, runs / f"{kind.name}-{label}", loop, {"model": kind.name}, resume=resume)
            rank = model.accelerator.process_index
            if label == "whole" or resume:
                ranks.mkdir(parents=True, exist_ok=True)
                torch.save({"weights": model.weights(), "buffers": model.buffer_names(),
                            "first_batch": model.first_batch, "initial": model.initial},
                           ranks / f"{kind.name}-{label}-{rank}.pt")
    (ranks / f"writes-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
