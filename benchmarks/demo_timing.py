"""Time the whole demo (`medfake demo [--fast]`) from an empty run folder and keep its summary.

Usage: python benchmarks/demo_timing.py [--full]   → benchmarks/results/demo_{fast,full}.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medfake.runinfo import write_run_record

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full demo (default: --fast)")
    parser.add_argument("--run", type=Path, default=None, help="run folder (default runs/bench-demo-*)")
    args = parser.parse_args()
    kind = "full" if args.full else "fast"
    run = args.run or Path(f"runs/bench-demo-{kind}")
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "medfake.cli", "demo", "-o", str(run)] + ([] if args.full else ["--fast"])
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((run / "results.json").read_text())
    out = {"demo": kind, "wall_seconds": round(wall, 1), "budget_seconds": 1800 if args.full else 300,
           "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpus": os.cpu_count(),
           "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"demo_{kind}.json").write_text(json.dumps(out, indent=2))
    write_run_record(RESULTS, {"benchmark": "demo_timing", "kind": kind}, 0, name=f"demo_{kind}.run.json")
    print(f"demo {kind}: {wall:.0f} s wall (budget {out['budget_seconds']} s); compute {summary['total_s']} s")


if __name__ == "__main__":
    main()
