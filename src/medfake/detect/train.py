"""`medfake train detector`: fit a detector on genuine axial-slice patches (the supervised one also on tampered).

Network detectors train in the one training loop (`medfake.training.fit`) as a `DetectorTraining` model; the
noise statistics are fitted in one pass. RUN folder: config.json (the detector config, read back by
`load_detector`, with the training config under "train"), run.json (versions, seed, commit), losses.csv and
losses.png, samples.png, and checkpoints/model-latest.pt in BTD's trainer layout
{'step','model','opt','ema','scaler','version'} plus 'medfake_config', our resume state 'medfake' and the
loop's 'medfake_loop' (keys a scorer ignores).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medfake.data.cohort import location_voxel, locations_for, scan_paths
from medfake.detect.config import DetectorTrainConfig
from medfake.detect.detectors import CHECKPOINT, CONFIG, DetectorConfig, NetDetector, detector_class
from medfake.detect.patches import PatchSampler, Volume, modality_key, patches_at, to_unit, training_volume
from medfake.errors import MedfakeError
from medfake.io import load_scan
from medfake.io.atomic import check_destination
from medfake.io.tables import read_locations, read_manifest
from medfake.render import save_patch_grid
from medfake.runinfo import write_run_record
from medfake.training import LoopConfig, fit, progress_bar, save_checkpoint

VERSION = "1.8.3"  # the denoising-diffusion-pytorch layout our checkpoints follow


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

def load_volumes(scans, det: DetectorConfig, config: DetectorTrainConfig, exclude=None, progress=None) -> list[Volume]:
    """Genuine training volumes; every scan must have the run's modality; excluded locations stay unseen."""
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
                                       config.exclude_radius_mm, det.clip))
        if task is not None:
            progress.advance(task)
    return volumes


def nodule_patches(scans, exclude, manifest, det: DetectorConfig) -> np.ndarray | None:
    """Genuine nodules as training negatives: the `exclude` table's rows in the training scans and the sites of
    the tamper manifest's removals in their untouched source scans (None when there are none)."""
    sites: dict[Path, list] = {}
    table = read_locations(exclude) if exclude else []
    for path in scan_paths(scans) if table else []:
        scan = load_scan(path)
        sites.setdefault(Path(path), []).extend(location_voxel(scan, loc) for loc in locations_for(path, scan, table))
    if manifest is not None:
        manifest = Path(manifest)
        for row in read_manifest(manifest):
            source = Path(row.scan) if Path(row.scan).is_absolute() else manifest.parent / row.scan
            if row.action == "remove" and source.exists():
                sites.setdefault(source, []).append((row.voxel_z, row.voxel_y, row.voxel_x))
    out = [patches_at(to_unit(load_scan(path), det.window, det.clip), zyx, det.patch_size, "centred", det.context)
           for path, zyx in sites.items() if zyx]
    return np.concatenate(out) if out else None


def tampered_patches(manifest, det: DetectorConfig) -> np.ndarray:
    """Patches centred on every tampered location of a tamper manifest (the supervised detector's positives)."""
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise MedfakeError("tamper manifest has no rows", manifest)
    out, cache = [], {}
    for row in rows:
        path = Path(row.output) if Path(row.output).is_absolute() else manifest.parent / row.output
        if path not in cache:
            cache = {path: to_unit(load_scan(path), det.window, det.clip)}
        out.append(patches_at(cache[path], [(row.voxel_z, row.voxel_y, row.voxel_x)], det.patch_size, "centred",
                              det.context)[0])
    return np.stack(out)


# --- training --------------------------------------------------------------------------------------------

class DetectorTraining:
    """A network detector as a model of the training loop: batches of genuine patches (half tampered ones for a
    supervised detector), the registry's objective, gradient clipping and an EMA of the weights."""

    checkpoint_name = CHECKPOINT

    def __init__(self, det: DetectorConfig, config: DetectorTrainConfig, volumes: list[Volume],
                 positives: np.ndarray | None = None, nodules: np.ndarray | None = None):
        self.det, self.config, self.volumes, self.positives = det, config, volumes, positives
        self.nodules = nodules  # genuine nodule patches: a third of the negatives when given
        self.kind: type[NetDetector] = detector_class(det.method)
        self.name = det.method
        self.step = 0

    def setup(self, accelerator) -> None:
        self.accelerator = accelerator
        rank = accelerator.process_index
        net = self.kind.build(self.det)  # initial weights from the global RNG the loop seeded
        self.generator = training_generator(accelerator.device, self.config.seed, rank)
        self.sampler = PatchSampler(self.volumes, self.det.patch_size, rng=np.random.default_rng(self.config.seed + rank),
                                    context=self.det.context)
        opt = torch.optim.Adam(net.parameters(), lr=self.config.lr, betas=(0.9, 0.99))
        self.net, self.opt = accelerator.prepare(net, opt)
        self.ema = EMA(accelerator.unwrap_model(self.net), self.config.ema_decay, self.config.ema_every,
                       self.config.ema_start)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.config.batch_size
        if self.positives is None:
            return torch.from_numpy(self.sampler.batch(n)), None
        genuine = self.sampler.batch(n - n // 2)
        if self.nodules is not None:
            k = len(genuine) // 3
            genuine[:k] = self.nodules[self.sampler.rng.integers(len(self.nodules), size=k)]
        pick = self.sampler.rng.integers(len(self.positives), size=n // 2)
        fakes = self.positives[pick].copy()
        flip = self.sampler.rng.random(len(fakes)) < 0.5
        fakes[flip] = fakes[flip][..., ::-1]
        labels = np.r_[np.zeros(len(genuine)), np.ones(len(fakes))].astype(np.float32)
        return torch.from_numpy(np.concatenate([genuine, fakes])), torch.from_numpy(labels)

    def train_step(self, step: int) -> dict[str, float]:
        self.net.train()
        patches, labels = self.batch()
        loss = self.kind.loss(self.net, patches.to(self.accelerator.device), labels, self.generator)
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.opt.step()
        self.ema.update()
        self.step = step + 1
        return {"loss": float(loss.detach())}

    def state(self) -> dict:
        """BTD's Trainer checkpoint (so 1.8.3 tools read it) plus our config and resume state."""
        scaler = getattr(self.accelerator, "scaler", None)
        return {"step": self.step, "model": self.accelerator.unwrap_model(self.net).state_dict(),
                "opt": self.opt.state_dict(), "ema": self.ema.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "version": VERSION,
                "medfake_config": self.det.as_dict(),
                "medfake": {"train": asdict(self.config), "generator": self.generator.get_state(),
                            "sampler_rng": self.sampler.rng.bit_generator.state}}

    def load_state(self, state: dict) -> None:
        self.accelerator.unwrap_model(self.net).load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.generator.set_state(state["medfake"]["generator"])
        self.sampler.rng.bit_generator.state = state["medfake"]["sampler_rng"]

    def snapshot(self, folder: Path, step: int) -> None:
        """samples.png: training patches (always the same ones, drawn apart from the training stream) and what
        the EMA model makes of them (BTD: DDIM samples; DAE: reconstructions)."""
        n = self.config.samples
        if n <= 0:
            return
        real = PatchSampler(self.volumes, self.det.patch_size, rng=np.random.default_rng(self.config.seed),
                            context=self.det.context).batch(n)
        picture = self.kind.picture(self.ema.model, real, self.config.seed, self.config.sample_steps)
        if picture is not None:
            images, title = picture
            save_patch_grid([real, images], ["training patches", title], folder / "samples.png")


def training_generator(device: torch.device, seed: int, rank: int) -> torch.Generator:
    """The model's own generator of training noise (diffusion steps and noise, DAE corruption), so the loop's
    re-seeding after `setup` does not touch it. Runs made before the one training loop existed drew this noise
    from the global stream right after the initial weights: on the CPU it continues that stream, on a GPU it
    starts where `torch.manual_seed(seed)` put the device's stream, so those runs replay bit for bit. Every
    further process draws its own noise."""
    generator = torch.Generator(device=device)
    if rank > 0:
        generator.manual_seed(seed + rank)
    elif device.type == "cpu":
        generator.set_state(torch.get_rng_state())
    else:
        generator.manual_seed(seed)
    return generator


def fit_statistics(out: Path, det: DetectorConfig, config: DetectorTrainConfig, volumes: list[Volume]) -> Path:
    """The noise detector: statistics of genuine patches in one pass (no training loop)."""
    sampler = PatchSampler(volumes, det.patch_size, flips=False, rng=np.random.default_rng(config.seed))
    fitted = detector_class(det.method).fit(sampler.batch(config.noise_patches), config.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(run_config(det, config), indent=2))
    write_run_record(out, run_config(det, config), config.seed)
    return save_checkpoint(out / CHECKPOINT, {"step": 0, "noise_model": fitted, "version": VERSION,
                                              "medfake_config": det.as_dict()})


def write_settings(out: Path, det: DetectorConfig, config: DetectorTrainConfig) -> Path:
    """A training-free detector's run folder: its settings only (config.json, a checkpoint that holds them)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(run_config(det, config), indent=2))
    write_run_record(out, run_config(det, config), config.seed)
    save_checkpoint(out / CHECKPOINT, {"step": 0, "version": VERSION, "medfake_config": det.as_dict()})
    return out


def run_config(det: DetectorConfig, config: DetectorTrainConfig) -> dict:
    return {**det.as_dict(), "train": asdict(config)}


def check_run_folder(out: Path, det: DetectorConfig, resume: bool) -> None:
    """Before any data is loaded: a new run needs an empty folder, a resumed one the same detector."""
    if not resume:
        check_destination(out, overwrite=False)
        return
    if not (out / CHECKPOINT).exists():
        raise MedfakeError(f"nothing to resume ({CHECKPOINT} missing)", out)
    saved = DetectorConfig.from_dict(json.loads((out / CONFIG).read_text()))
    if saved.as_dict() != det.as_dict():
        raise MedfakeError("run was started with a different detector configuration", out / CONFIG)


def train_detector(scans, out, config: DetectorTrainConfig, exclude=None, tampered=None, resume: bool = False,
                   show_progress: bool = True) -> Path:
    """Train (or resume) a detector run; returns the RUN folder."""
    out = Path(out)
    kind = detector_class(config.method)
    det = DetectorConfig.default(config.method, config.modality, config.preset)
    det.patch_size = config.patch_size or det.patch_size
    det.context = det.context if config.context is None else int(config.context)
    if kind.trains_on_tampered and tampered is None:
        raise MedfakeError(f"the {config.method} detector needs tampered examples (--tampered MANIFEST)")
    if kind.scan_level and config.modality != "ct":
        raise MedfakeError(f"the {config.method} detector measures CT lung parenchyma; it has no {config.modality.upper()} mode")
    if kind.scan_level:
        det.params = kind.fit(None, config.seed)  # the self-referenced statistics' settings
    if kind.training_free:
        check_run_folder(out, det, resume)
        return write_settings(out, det, config)
    check_run_folder(out, det, resume)
    with progress_bar(transient=True, disable=not show_progress) as progress:
        volumes = load_volumes(scans, det, config, exclude, progress)
    if not issubclass(kind, NetDetector):
        fit_statistics(out, det, config, volumes)
        return out
    positives = tampered_patches(tampered, det) if kind.trains_on_tampered else None
    nodules = nodule_patches(scans, exclude, tampered, det) if kind.nodules_as_negatives else None
    loop = LoopConfig(steps=config.steps, seed=config.seed, checkpoint_every=config.save_every,
                      snapshot_every=config.save_every, max_minutes=config.max_minutes, show_progress=show_progress)
    return fit(DetectorTraining(det, config, volumes, positives, nodules), out, loop, run_config(det, config), resume=resume)
