"""Reproducibility record written next to every training or benchmark output."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

DIRTY_WARNING = "uncommitted changes in the tree: these figures are not reproducible from the recorded commit"
PACKAGES = ("medfake", "torch", "numpy", "scipy", "scikit-image", "SimpleITK", "pydicom", "monai", "accelerate")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        # a benchmark's own results (benchmarks/results) are outputs, not code: they do not make a run irreproducible
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)benchmarks/results"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run_record(config: dict, seed: int | None = None) -> dict:
    commit = git_commit()
    record = {
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": commit,
        "command": " ".join(sys.argv),
        "platform": platform.platform(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if commit.endswith("+dirty"):
        record["warning"] = DIRTY_WARNING
    return record


def write_run_record(folder: str | Path, config: dict, seed: int | None = None, name: str = "run.json") -> Path:
    """The record beside an output. Benchmark figures (a `benchmarks/results` folder) from a tree with
    uncommitted changes are marked in the record and announced on stderr: HEAD would not reproduce them."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    record = run_record(config, seed)
    path.write_text(json.dumps(record, indent=2, default=str))
    if "warning" in record and path.parent.name == "results" and path.parent.parent.name == "benchmarks":
        print(f"WARNING: {path}: {DIRTY_WARNING}", file=sys.stderr)
    return path
