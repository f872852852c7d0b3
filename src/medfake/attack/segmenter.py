"""`medfake train segmenter`: a 2-D MONAI U-Net on labelled axial CT slices, trained on the one loop.

RUN folder: config.json, run.json, losses.csv/png, checkpoints/segmenter.pt (resume), model.pt (weights),
target.yaml (what `medfake attack segmentation --target RUN` loads), validation.json and validation.png.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfake.attack.config import SegmenterConfig
from medfake.attack.data import Normalisation, SliceSet, axial_slices, load_labelled, parse_classes
from medfake.attack.fields import dice_per_class
from medfake.errors import MedfakeError


def split_slices(slices: SliceSet, every: int) -> tuple[SliceSet, SliceSet | None]:
    """Blocks of 4 consecutive slices; every `every`-th block is held out (whole blocks: neighbours correlate)."""
    if every <= 0:
        return slices, None
    held = (slices.z // 4) % every == 0
    pick = lambda m: SliceSet(slices.images[m], slices.classes[m], slices.z[m], slices.pixel_mm, slices.source)
    return pick(~held), pick(held)


@dataclass
class SegmenterModel:
    config: SegmenterConfig
    train: SliceSet
    valid: SliceSet | None = None
    name: str = "segmenter"
    checkpoint_name: str = "checkpoints/segmenter.pt"
    history: list = field(default_factory=list)

    def setup(self, accelerator) -> None:
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        self.accelerator = accelerator
        self.norm = Normalisation(*self.config.window)
        self.net = UNet(**self.config.monai["args"])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        self.net, self.opt = accelerator.prepare(self.net, self.opt)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.rng = np.random.default_rng(self.config.seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, crop = self.config.batch_size, self.config.crop
        images, labels = [], []
        for i in self.rng.integers(len(self.train), size=n):
            image, label = self.train.images[i], self.train.classes[i]
            image, label = pad_at_least(image, crop, -1000.0), pad_at_least(label, crop, 0)
            y = self.rng.integers(image.shape[0] - crop + 1)
            x = self.rng.integers(image.shape[1] - crop + 1)
            shift = self.rng.normal(0, 20)  # HU offset: scanners and contrast phases differ
            images.append(image[y:y + crop, x:x + crop] + shift)
            labels.append(label[y:y + crop, x:x + crop])
        device = self.accelerator.device
        return (torch.from_numpy(np.stack(images)[:, None]).float().to(device),
                torch.from_numpy(np.stack(labels)[:, None].astype(np.int64)).to(device))

    def train_step(self, step: int) -> dict:
        self.net.train()
        images, labels = self.batch()
        loss = self.loss(self.net(self.norm.apply(images)), labels)
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.opt.step()
        return {"dice_ce": float(loss.detach())}

    def state(self) -> dict:
        return {"net": self.accelerator.unwrap_model(self.net).state_dict(), "opt": self.opt.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.accelerator.unwrap_model(self.net).load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        net = self.accelerator.unwrap_model(self.net).eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 8):
                x = torch.from_numpy(images[i:i + 8, None]).to(self.accelerator.device)
                out.append(net(self.norm.apply(x)).argmax(1).cpu().numpy())
        self.net.train()
        return np.concatenate(out).astype(np.uint8)

    def snapshot(self, folder: Path, step: int) -> None:
        from medfake.attack.target import write_target_yaml
        from medfake.training import save_checkpoint

        organs = parse_classes(self.config.classes)
        save_checkpoint(folder / "model.pt", self.accelerator.unwrap_model(self.net).state_dict())
        write_target_yaml(folder, organs, self.norm, self.config.pixel_mm, self.config.monai, "model.pt")
        report = {"step": step}
        for name, part in (("train", self.train), ("held_out", self.valid)):
            if part is not None and len(part):
                dice = dice_per_class(self.predict(part.images), part.classes, len(organs) + 1)
                report[name] = {o.name: _num(d) for o, d in zip(organs, dice)} | {"slices": len(part)}
        (folder / "validation.json").write_text(json.dumps(report, indent=2))


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def pad_at_least(image: np.ndarray, size: int, value: float) -> np.ndarray:
    pads = [max(0, size - n) for n in image.shape]
    return np.pad(image, [(p // 2, p - p // 2) for p in pads], constant_values=value) if any(pads) else image


def load_training_slices(scans: list[Path], labels: list[Path], config: SegmenterConfig) -> SliceSet:
    if len(scans) != len(labels):
        raise MedfakeError(f"{len(scans)} scan(s) but {len(labels)} label map(s): give one --labels per --scans")
    organs = parse_classes(config.classes)
    parts = []
    for scan_path, label_path in zip(scans, labels):
        scan, label = load_labelled(scan_path, label_path)
        parts.append(axial_slices(scan, label, organs, config.pixel_mm))
    if len({p.images.shape[1:] for p in parts}) > 1:  # different fields of view: crop/pad to the largest
        side = max(max(p.images.shape[1:]) for p in parts)
        parts = [SliceSet(np.stack([pad_at_least(i, side, -1000.0)[:side, :side] for i in p.images]),
                          np.stack([pad_at_least(c, side, 0)[:side, :side] for c in p.classes]), p.z, p.pixel_mm,
                          p.source) for p in parts]
    return SliceSet(np.concatenate([p.images for p in parts]), np.concatenate([p.classes for p in parts]),
                    np.concatenate([p.z for p in parts]), config.pixel_mm, ";".join(p.source for p in parts))


def train_segmenter(scans: list[Path], labels: list[Path], out: Path, config: SegmenterConfig,
                    resume: bool = False, max_minutes: float | None = None, show_progress: bool = True) -> Path:
    from medfake.training import LoopConfig, fit

    slices = load_training_slices(scans, labels, config)
    train, valid = split_slices(slices, config.holdout_every)
    loop = LoopConfig(steps=config.steps, seed=config.seed, checkpoint_every=config.snapshot_every,
                      snapshot_every=config.snapshot_every, max_minutes=max_minutes, show_progress=show_progress)
    record = asdict(config) | {"scans": [str(s) for s in scans], "labels": [str(s) for s in labels]}
    return fit(SegmenterModel(config, train, valid), out, loop, record, resume=resume)
