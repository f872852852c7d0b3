"""Shared pieces of the focused-protection benchmarks (protect_removal.py, protect_transfer.py,
protect_locality.py): the shared tamperer or a skip, the scan with its lung mask and evaluation sites, and the
JSON + run record. Run alone it does nothing."""

from __future__ import annotations

import json
from pathlib import Path

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.protect.report import evaluation_sites
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).parent / "results"
SHARED = Path("/work/runs/bench_tamper")
MACHINE = "2 shared CPU cores, oversubscribed (seconds are wall clock)"


def trained(run: Path, what: str) -> bool:
    """True when `run` holds a trained tamperer; else says the benchmark is skipped."""
    if (run / "model" / "model.json").exists():
        return True
    print(f"skipped: no trained {what} at {run} (run benchmarks/tamper_train.py first)")
    return False


def scan_and_sites(name: str, action: str, n: int):
    """(scan, lung mask, the protection evaluation's `n` sites for `action`) of a sample scan."""
    scan = load_scan(sample_path(name))
    lung = lung_mask(scan)
    return scan, lung, evaluation_sites(scan, lung, (action,), n, 0)[action]


def save(name: str, out: dict, args) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**out, "machine": MACHINE}, indent=2, default=float))
    write_run_record(RESULTS, {k: str(v) for k, v in vars(args).items()}, 0, name=f"{name}.run.json")


if __name__ == "__main__":
    print(__doc__)
