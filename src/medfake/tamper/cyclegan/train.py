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
          max_minutes: float | None = None, select_threshold: float | str | None = None,
          show_progress: bool = True, cpu: bool = False) -> Path:
    """Train (or resume, keeping the saved configuration except the number of steps); with
    `select_threshold` (a score, or "auto": each snapshot's chance level), RUN/model ends up as the last
    snapshot whose grid score stayed below it."""
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
        select_before_artefacts(run, None if select_threshold == "auto" else float(select_threshold))
    return run


def select_before_artefacts(run: str | Path, threshold: float | None = None) -> int:
    """Make RUN/model the last kept snapshot before the grid score first reached `threshold` (None: each
    snapshot's chance level, `grid.chance_threshold`); returns its step."""
    run = Path(run)
    shots = run / "snapshots"
    available = sorted(int(p.stem.split("_")[1]) for p in shots.glob("step_*.pt")) if shots.exists() else []
    if not available:
        raise MedfakeError("no kept snapshots to choose from (train with keep_snapshots on)", run)
    step = grid.select_step(run, threshold, available)
    if step is None:
        level = "its chance level" if threshold is None else f"{threshold:g}"
        raise MedfakeError(f"every snapshot already has a grid score ≥ {level}; nothing to select", run)
    model = run / "model"
    meta = json.loads((model / MODEL_JSON).read_text())
    generators = torch.load(shots / f"step_{step:06d}.pt", map_location="cpu", weights_only=True)
    tmp = run / ".model.select"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    torch.save(generators, tmp / GENERATORS)
    row = {int(r["step"]): r for r in grid.read_rows(run)}[step]
    meta.update(step=step, selected={"rule": "last snapshot before the grid score reached the threshold",
                                     "threshold": grid.row_threshold(row, threshold), "score": float(row["score"])})
    (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(model)
    tmp.rename(model)
    return step


def rescore(run: str | Path, **overrides) -> list[dict]:
    """Rewrite RUN/grid.csv from the kept snapshot generators with the current grid score, on the held-out
    images training used (for runs scored by an earlier version of the score); `overrides` replace the run's
    settings (e.g. grid_images=32, grid_threshold=None)."""
    from medfake.tamper.cyclegan.model import build_generator, translate_and_score

    run = Path(run)
    meta = json.loads((run / "model" / MODEL_JSON).read_text())
    config = CycleGANConfig.from_dict({**meta["config"], **overrides})
    held_out = CycleGANModel(CycleGANSet(meta["trainset"]), config).held_out()
    rows = []
    for path in sorted((run / "snapshots").glob("step_*.pt")):
        states = torch.load(path, map_location="cpu", weights_only=True)
        generators = {name: build_generator(config) for name in ("a2b", "b2a")}
        for name, net in generators.items():
            net.load_state_dict(states[name])
        scores, _ = translate_and_score(generators, held_out, "cpu", config.grid_threshold)
        rows.append({"step": int(path.stem.split("_")[1]), **{k: grid._text(v) for k, v in scores.items()}})
    if not rows:
        raise MedfakeError("no kept snapshots to score", run)
    tmp = run / f".{grid.GRID_CSV}.partial"
    grid.write_rows(tmp, rows)
    tmp.replace(run / grid.GRID_CSV)
    return rows
