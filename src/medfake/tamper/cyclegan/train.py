"""`medfake train cyclegan`: the CycleGAN on the shared loop, and the choice of a snapshot before artefacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from medfake.errors import MedfakeError
from medfake.tamper.cyclegan import grid
from medfake.tamper.cyclegan.config import CycleGANConfig
from medfake.tamper.cyclegan.model import GENERATORS, MODEL_JSON, CycleGANModel
from medfake.tamper.cyclegan.trainset import CycleGANSet
from medfake.training import LoopConfig, fit, load_checkpoint


def train(trainset: str | Path, run: str | Path, config: CycleGANConfig, resume: bool = False,
          max_minutes: float | None = None, select_threshold: float | None = None,
          show_progress: bool = True, cpu: bool = False) -> Path:
    """Train (or resume, keeping the saved configuration except the number of steps); with
    `select_threshold`, RUN/model ends up as the last snapshot whose grid score stayed below it."""
    data = CycleGANSet(trainset)
    run = Path(run)
    if resume:
        saved = run / CycleGANModel.checkpoint_name
        if not saved.exists():
            raise MedfakeError("nothing to resume (no checkpoint)", run)
        steps = config.steps
        config = CycleGANConfig.from_dict(load_checkpoint(saved)["config"])
        config.steps = steps
    else:
        config.size, config.channels = tuple(data.size), data.channels
        config.flips = config.flips or data.index.get("source") == "ct"
        config.validate()
    loop = LoopConfig(steps=config.steps, seed=config.seed, mixed_precision=config.mixed_precision, cpu=cpu,
                      checkpoint_every=config.checkpoint_every, snapshot_every=config.snapshot_every,
                      max_minutes=max_minutes, show_progress=show_progress)
    fit(CycleGANModel(data, config), run, loop, {**config.to_dict(), "trainset": str(data.folder)}, resume=resume)
    if select_threshold is not None:
        select_before_artefacts(run, select_threshold)
    return run


def select_before_artefacts(run: str | Path, threshold: float) -> int:
    """Make RUN/model the last kept snapshot before the grid score first reached `threshold`; returns its step."""
    run = Path(run)
    shots = run / "snapshots"
    available = sorted(int(p.stem.split("_")[1]) for p in shots.glob("step_*.pt")) if shots.exists() else []
    if not available:
        raise MedfakeError("no kept snapshots to choose from (train with keep_snapshots on)", run)
    step = grid.select_step(run, threshold, available)
    if step is None:
        raise MedfakeError(f"every snapshot already has a grid score ≥ {threshold:g}; nothing to select", run)
    model = run / "model"
    meta = json.loads((model / MODEL_JSON).read_text())
    generators = torch.load(shots / f"step_{step:06d}.pt", map_location="cpu", weights_only=True)
    tmp = run / ".model.select"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    torch.save(generators, tmp / GENERATORS)
    scores = {int(r["step"]): float(r["score"]) for r in grid.read_rows(run)}
    meta.update(step=step, selected={"rule": "last snapshot before the grid score reached the threshold",
                                     "threshold": threshold, "score": scores.get(step)})
    (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(model)
    tmp.rename(model)
    return step
