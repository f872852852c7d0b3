"""`medfake bench` / `medfake demo`: the whole tamper → detect → measure matrix from one YAML config.

Every step is a *cell* with its own folder under RUN; a finished cell leaves `done.json` (its result and
timing) and is skipped when the run is resumed. An unfinished cell's folder is wiped and redone, so an
interruption never leaves a half-written result in the matrix. Cells of one stage are independent and may run
on a Dask cluster (`bench.cluster`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from medfake.detect.config import METHODS
from medfake.errors import MedfakeError
from medfake.tamper.config import ACTIONS
from medfake.runinfo import write_run_record

EXAMPLE = "demo.yaml"


def example_config_text() -> str:
    return resources.files("medfake.configs").joinpath(EXAMPLE).read_text()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None, fast: bool = False) -> dict:
    """The YAML config (or the shipped demo), with its `fast:` overrides applied when asked."""
    if path is None:
        config = yaml.safe_load(example_config_text())
    else:
        path = Path(path)
        if not path.exists():
            raise MedfakeError("no such config file", path)
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise MedfakeError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
        if not isinstance(config, dict):
            raise MedfakeError("config must be a YAML mapping", path)
    fast_overrides = config.pop("fast", {})
    config = deep_merge(config, fast_overrides) if fast else config
    config["fast"] = fast
    return validate(config, path)


KNOWN_KEYS = {"name", "seed", "cohort", "tamper_models", "detectors", "attacks", "screen", "fast", "report",
              "segmentation_audit", "protection"}
DETECTOR_METHODS = METHODS  # the detector registry's names
ATTACK_METHODS = ("ctgan", "copy-move", "inpaint", "cyclegan")


def validate(config: dict, path) -> dict:
    unknown = set(config) - KNOWN_KEYS
    if unknown:
        raise MedfakeError(f"unknown config key(s): {', '.join(sorted(unknown))}", path)
    for name in config.get("detectors", {}):
        if name not in DETECTOR_METHODS:
            raise MedfakeError(f"unknown detector '{name}' (choose from {', '.join(DETECTOR_METHODS)})", path)
    if config.get("protection") is not None:
        from medfake.bench.protection import validate_protection

        validate_protection(config["protection"], path)
    for attack in config.get("attacks", []):
        if attack.get("action") not in ACTIONS or attack.get("method") not in ATTACK_METHODS:
            raise MedfakeError(f"attack needs action inject|remove and method {'|'.join(ATTACK_METHODS)}: {attack}", path)
    if "segmentation_audit" in config:
        from medfake.bench.audit import audit_options

        try:
            audit_options(config)
        except MedfakeError as exc:
            raise MedfakeError(exc.message, path) from None
    return config


@dataclass
class Cells:
    """Resumable steps: `run(name, fn)` calls `fn(folder)` once and remembers its JSON-able result;
    `run_all({name: fn})` runs independent cells together, on the `executor` (in-process by default, a Dask
    cluster with `bench.cluster.DaskCells`)."""

    root: Path
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print
    executor: Any = None  # runs {name: fn} and yields (name, result, seconds) as cells finish; None: here, in order

    def folder(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> dict | None:
        marker = self.folder(name) / DONE
        return json.loads(marker.read_text()) if marker.exists() else None

    def run(self, name: str, fn: Callable[[Path], Any]) -> Any:
        return self.run_all({name: fn})[name]

    def run_all(self, jobs: dict[str, Callable[[Path], Any]]) -> dict[str, Any]:
        """Run the unfinished cells of `jobs` (independent of each other); returns every cell's result."""
        results, todo = {}, {}
        for name, fn in jobs.items():
            finished = self.done(name)
            if finished is None:
                todo[name] = fn
                continue
            self.timings[name] = finished["seconds"]
            self.log(f"[dim]cached[/dim] {name}")
            results[name] = finished["result"]
        finished_cells = self.executor.run(self.root, todo) if self.executor else \
            ((name, *execute_cell(self.root, name, fn)) for name, fn in todo.items())
        for name, result, seconds in finished_cells:
            self.timings[name] = seconds
            results[name] = result
            if self.executor is None:
                self.log(f"{name}: {seconds:.1f} s")
        return {name: results[name] for name in jobs}


DONE = "done.json"


def execute_cell(root: Path, name: str, fn: Callable[[Path], Any]) -> tuple[Any, float]:
    """Run one cell in a wiped folder; `done.json` is renamed into place last, so a cell interrupted anywhere
    (a killed worker included) has none and is wiped and redone."""
    folder = Path(root) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    result = fn(folder)
    seconds = time.perf_counter() - start
    partial = folder / f".{DONE}.partial"
    partial.write_text(json.dumps({"result": result, "seconds": seconds}, indent=1, default=str))
    os.replace(partial, folder / DONE)
    return json.loads(json.dumps(result, default=str)), seconds


def prepare_run(run: Path, config: dict, fresh: bool) -> None:
    """Refuse to mix configs in one RUN folder: a rerun must use the same config, or `--fresh`."""
    resolved = run / "config.resolved.json"
    if fresh and run.exists():
        shutil.rmtree(run)
    if resolved.exists() and json.loads(resolved.read_text()) != json.loads(json.dumps(config)):
        raise MedfakeError("this run folder was started with a different config (use --fresh or another -o)", run)
    run.mkdir(parents=True, exist_ok=True)
    resolved.write_text(json.dumps(config, indent=2))
    write_run_record(run, config, config.get("seed", 0))
