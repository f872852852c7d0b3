"""What every trainer shares: device/precision via accelerate, exact-resume checkpoints, progress bars."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medfake.errors import MedfakeError


def make_accelerator(mixed_precision: str = "auto", cpu: bool | None = None):
    """An `accelerate.Accelerator`: GPU(s) when present (bf16 if supported, else fp16), fp32 on CPU."""
    from accelerate import Accelerator

    has_gpu = torch.cuda.is_available() and not cpu
    if mixed_precision == "auto":
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if has_gpu else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=not has_gpu)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def progress_bar(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=transient)
