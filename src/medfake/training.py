"""The one training loop. Every model (CT-GAN's 3-D pix2pix, the detectors, the CycleGAN, the protector, the
segmenter, the attacker) plugs in through `TrainableModel` and gets, from here and nowhere else: seeding,
`accelerate` (device, mixed precision, multi-process), exact resume, the rich progress bar, `max_minutes`, one
loss log (losses.csv + losses.png), snapshot and checkpoint cadence, and the run record (config.json, run.json).

A model is the pix2pix `set_input/optimize_parameters` idea reduced to four methods (MONAI's `_iteration`):

    setup(accelerator)        build networks and optimisers, `accelerator.prepare` them
    train_step(step) -> dict  one optimisation step on a batch the model draws itself; returns scalar losses
    state() / load_state(s)   everything an exact resume needs (weights, optimisers, data position, own RNGs)
    snapshot(folder, step)    pictures, validation, exported model; called on the main process only

Several processes (`accelerate launch`, see the README): every process builds the same initial weights (one seed
before `setup`), then draws its own batches (the global RNGs are reseeded per process; a model with its own data
order must shard it by `accelerator.process_index`), `accelerator.prepare` wraps the networks in DDP so gradients
are averaged, and only the main process writes (run record, losses.csv with the losses averaged over processes,
checkpoints, snapshots). The checkpoint holds every process's RNG states, so a resume with the same number of
processes continues exactly; a model with RNGs or a data position of its own that differ per process adds the
optional `process_state() -> dict` / `load_process_state(dict)` (small, gathered into the checkpoint; its
`state()` is the main process's, `load_process_state` runs after `load_state` on every process). `snapshot`
runs on the main process alone: it must use `accelerator.unwrap_model(net)`, never the prepared (DDP) net,
whose forward may synchronise buffers with processes that are not there.

Run folder: config.json (resolved), run.json (seed, versions, commit, command), losses.csv, losses.png, the
checkpoint (its name is the model's: BTD keeps `checkpoints/model-latest.pt`), and whatever snapshot() writes.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medfake.errors import MedfakeError
from medfake.runinfo import seed_everything, write_run_record

LOOP_KEY = "medfake_loop"  # the loop's own part of every checkpoint (step, RNG states)
LOSSES, CURVE = "losses.csv", "losses.png"


@dataclass
class LoopConfig:
    steps: int
    seed: int = 0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    cpu: bool = False  # force the CPU even where a GPU is present
    checkpoint_every: int = 500
    snapshot_every: int = 500
    max_minutes: float | None = None  # stop earlier on wall-clock time; the step reached is saved either way
    show_progress: bool = True

    def __post_init__(self):
        if self.steps < 0:
            raise MedfakeError(f"steps must be ≥ 0, got {self.steps}")
        if self.checkpoint_every < 1 or self.snapshot_every < 1:
            raise MedfakeError("checkpoint and snapshot intervals must be ≥ 1 step")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise MedfakeError(f"mixed precision must be auto, no, bf16 or fp16, not '{self.mixed_precision}'")


@runtime_checkable
class TrainableModel(Protocol):
    name: str
    checkpoint_name: str  # relative to the run folder

    def setup(self, accelerator) -> None: ...

    def train_step(self, step: int) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def snapshot(self, folder: Path, step: int) -> None: ...


# --- the loop --------------------------------------------------------------------------------------------
def fit(model: TrainableModel, out: str | Path, loop: LoopConfig, config: dict, resume: bool = False) -> Path:
    """Train `model` to `loop.steps` in the run folder `out`; with `resume`, continue exactly from its checkpoint.

    `config` is the model's resolved configuration, written to config.json (the caller checks that a resumed run
    keeps it). Returns the run folder. The last step reached is always checkpointed and snapshotted."""
    out = Path(out)
    accelerator = make_accelerator(loop.mixed_precision, cpu=loop.cpu)
    main = accelerator.is_main_process
    checkpoint = out / model.checkpoint_name
    problem = run_folder_problem(out, model.checkpoint_name, resume) if main else None
    problem = from_main_process(accelerator, problem)  # every process stops, or none does
    if problem:
        raise MedfakeError(problem, out)
    seed_everything(loop.seed)  # same initial weights on every process
    model.setup(accelerator)
    step = 0
    if resume:
        state = load_checkpoint(checkpoint)
        model.load_state(state)
        step = int(state[LOOP_KEY]["step"])
        restore_rng(state[LOOP_KEY], accelerator, loop.seed, step, model)
    else:
        seed_everything(loop.seed + accelerator.process_index)  # each process draws its own batches
    accelerator.wait_for_everyone()  # nobody looks at the folder after the main process starts writing
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
        write_run_record(out, {"model": config, "loop": asdict(loop),
                               "processes": accelerator.num_processes, "device": str(accelerator.device),
                               "mixed_precision": accelerator.mixed_precision}, loop.seed)
    log = LossLog(out / LOSSES, step) if main else None
    deadline = time.monotonic() + 60.0 * loop.max_minutes if loop.max_minutes is not None else float("inf")
    last_saved = -1
    with progress_bar(disable=not (loop.show_progress and main)) as bar:
        task = bar.add_task(f"train {model.name}", total=loop.steps, completed=step, status="")
        while step < loop.steps:
            losses = mean_over_processes(accelerator, model.train_step(step))
            step += 1
            last = step >= loop.steps or any_process(accelerator, time.monotonic() >= deadline, loop.max_minutes)
            if log is not None:
                log.write(step, losses)
            if step % loop.checkpoint_every == 0 or last:
                save_run_checkpoint(model, accelerator, checkpoint, step)
                last_saved = step
            if main and (step % loop.snapshot_every == 0 or last):
                model.snapshot(out, step)
            bar.update(task, completed=step, status=describe(losses))
            if last:
                break
    if last_saved != step:  # zero steps to go (a resume of a finished run): still leave a checkpoint
        save_run_checkpoint(model, accelerator, checkpoint, step)
        if main:
            model.snapshot(out, step)
    if log is not None:
        log.close()
        save_loss_curves(out / LOSSES, out / CURVE, model.name)
    accelerator.wait_for_everyone()
    return out


def run_folder_problem(out: Path, checkpoint_name: str, resume: bool) -> str | None:
    if resume and not (out / checkpoint_name).exists():
        return f"nothing to resume ({checkpoint_name} missing)"
    if not resume and out.exists() and any(out.iterdir()):
        return "run folder is not empty (use --resume to continue it)"
    return None


def save_run_checkpoint(model: TrainableModel, accelerator, path: Path, step: int) -> None:
    """All processes give their state and RNG states (a collective); the main process writes them."""
    state = model.state()
    rngs = gather_objects(accelerator, rng_state())
    own = gather_objects(accelerator, model.process_state()) if hasattr(model, "process_state") else None
    if accelerator.is_main_process:
        state[LOOP_KEY] = {"step": step, "rng": rngs[0], "rng_per_process": rngs}
        if own is not None:
            state[LOOP_KEY]["model_per_process"] = own
        save_checkpoint(path, state)
    accelerator.wait_for_everyone()


def restore_rng(loop_state: dict, accelerator, seed: int, step: int, model=None) -> None:
    """Each process takes back its own RNG states (and the model its `process_state`); with another number of
    processes the run goes on, reseeded per process from the step reached (not bit-exact: the batches are split
    differently anyway)."""
    rngs = loop_state.get("rng_per_process") or [loop_state["rng"]]
    if len(rngs) == accelerator.num_processes:
        set_rng_state(rngs[accelerator.process_index])
        own = loop_state.get("model_per_process")
        if own is not None and hasattr(model, "load_process_state"):
            model.load_process_state(own[accelerator.process_index])
    else:
        accelerator.print(f"note: checkpoint written by {len(rngs)} process(es), resumed on "
                          f"{accelerator.num_processes}: the run goes on, not bit-exactly")
        seed_everything(seed + 1_000_003 * step + accelerator.process_index)


# --- talking between processes (no-ops on one) -----------------------------------------------------------
def gather_objects(accelerator, value) -> list:
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def from_main_process(accelerator, value):
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def mean_over_processes(accelerator, losses: dict) -> dict:
    """Float losses (and scalar tensors) averaged over processes, so the log describes the whole batch."""
    if accelerator.num_processes == 1:
        return losses
    names = [k for k, v in losses.items() if isinstance(v, float) or (isinstance(v, torch.Tensor) and v.numel() == 1)]
    if not names:
        return losses
    values = torch.tensor([float(losses[k]) for k in names], dtype=torch.float64, device=accelerator.device)
    means = accelerator.reduce(values, reduction="mean").tolist()
    return {**losses, **dict(zip(names, means))}


def any_process(accelerator, flag: bool, needed: object = True) -> bool:
    """True on every process when it is true on one (the wall-clock deadline); free when `needed` is None."""
    if accelerator.num_processes == 1 or needed is None:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item())


def describe(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in list(losses.items())[:4] if isinstance(v, (int, float)))


class LossLog:
    """losses.csv: `step` then the model's loss names; on resume, rows after the checkpointed step are dropped
    (they were never saved), so the log always matches the weights."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        self.columns = list(rows[0].keys()) if rows else None
        self.rows = rows
        self.fh = None

    def write(self, step: int, losses: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in losses.items()}}
        if self.fh is None:
            self.columns = self.columns or list(row)
            self.fh = open(self.path, "w", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=self.columns, extrasaction="ignore")
            self.writer.writeheader()
            self.writer.writerows(self.rows)
        self.writer.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _plain(value):
    return float(value.detach()) if isinstance(value, torch.Tensor) else value


def read_losses(run: str | Path) -> list[dict]:
    with open(Path(run) / LOSSES, newline="") as fh:
        return list(csv.DictReader(fh))


def save_loss_curves(table: Path, path: Path, title: str) -> Path | None:
    """One panel per loss column: each step in grey, a running mean on top (log scale when all positive)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not table.exists():
        return None
    rows = read_losses(table.parent)
    columns = [c for c in (rows[0].keys() if rows else []) if c != "step"]
    series = {c: np.array([_number(r[c]) for r in rows]) for c in columns}
    series = {c: v for c, v in series.items() if np.isfinite(v).any()}
    if not series:
        return None
    figure = Figure(figsize=(4.2 * min(len(series), 3), 3 * ((len(series) + 2) // 3)), dpi=90)
    FigureCanvasAgg(figure)
    steps = np.array([int(r["step"]) for r in rows])
    for i, (name, values) in enumerate(series.items()):
        ax = figure.add_subplot((len(series) + 2) // 3, min(len(series), 3), i + 1)
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], color="0.7", lw=0.8)
        width = max(1, ok.sum() // 50)
        if ok.sum() >= 10 and width > 1:
            ax.plot(steps[ok][width - 1:], np.convolve(values[ok], np.ones(width) / width, mode="valid"), lw=1.5)
        if np.all(values[ok] > 0):
            ax.set_yscale("log")
        ax.set(title=name, xlabel="step")
    figure.suptitle(title)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.partial")  # not io.atomic: keeps the loop free of the scan readers
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


# --- pieces every model uses -----------------------------------------------------------------------------
# accelerate and matplotlib are imported where used: progress_bar is imported by light commands (data synth)
# that should not pay for them at start-up.
def make_accelerator(mixed_precision: str = "auto", cpu: bool | None = None):
    """An `accelerate.Accelerator`: GPU(s) when present (bf16 if supported, else fp16), fp32 on CPU."""
    from accelerate import Accelerator

    has_gpu = torch.cuda.is_available() and not cpu
    if mixed_precision == "auto":
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if has_gpu else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=not has_gpu)


def rng_state() -> dict[str, Any]:
    """The global RNG states in plain types and tensors only, so a weights-only `torch.load` reads the checkpoint."""
    kind, keys, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), *rest), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomic `torch.save` (write a sibling, then rename) so an interrupted save never corrupts a run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, trusted: bool = True) -> dict[str, Any]:
    """Load a checkpoint; `trusted=False` refuses anything but tensors and plain containers."""
    path = Path(path)
    if not path.exists():
        raise MedfakeError("no such checkpoint", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # torch raises many types for a bad file
        raise MedfakeError(f"not a readable PyTorch checkpoint ({exc.__class__.__name__})", path) from None


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=transient, disable=disable)
