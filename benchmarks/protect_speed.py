"""Full-scan protection time on a 512² × 300 CT (lung1 interpolated along z, as benchmarks/memory.py builds it).
Targets (issue #11, 2 cores): `optimize` ≤ 10 min, `network` ≤ 120 s.

`optimize` over the whole lung (no focus): the default `OptimizeConfig` (lung tiles at the hole's stride,
jittered, visited `passes` times, 4 sites a step, δ and its gradient only on the lungs' bounding box). The
cost depends on the tamperer's architecture only, so without --model a cpu-small injector trained for 2
steps (shared set `--set`) stands in. `network`: one pass of a protector (--protector, e.g. the one
benchmarks/protect_network.py trains), timed if given.

    PYTHONPATH=src python benchmarks/protect_speed.py [--model RUN] [--protector RUN] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory import SLICES, resampled_lung1  # noqa: E402

from medfake.lungmask import lung_mask  # noqa: E402
from medfake.protect.config import OptimizeConfig, ProtectConfig  # noqa: E402
from medfake.protect.optimize import attack_sites  # noqa: E402
from medfake.protect.run import protect_scan  # noqa: E402
from medfake.protect.surrogate import Surrogate, load_tamper_model  # noqa: E402
from medfake.runinfo import write_run_record  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def stand_in_model(work: Path, data: Path) -> Path:
    from medfake.tamper.config import GanTrainConfig
    from medfake.tamper.train import train

    run = work / "cpu_small_2steps" / "run"
    if (run / "model" / "model.json").exists():
        return run
    if not data.exists():  # no shared training set: two healthy-lung cubes of lung1 will do for timing
        from medfake.data.samples import sample_path
        from medfake.tamper.trainset import build_trainset

        table = work / "locs.csv"
        work.mkdir(parents=True, exist_ok=True)
        table.write_text("filename,x,y,z\nlung1,-21.86,-120.54,-611.50\n")
        data = build_trainset("inject", [sample_path("lung1")], work / "set", coords=table)
    config = GanTrainConfig.resolve("inject", "cpu-small", steps=2, snapshot_every=2, checkpoint_every=2,
                                    batch_size=2)
    return train(data, run, config, show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--set", type=Path, default=Path("/work/runs/bench_tamper/set_inject"))
    parser.add_argument("--protector", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passes", type=int, default=OptimizeConfig.passes)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medfake_protect_speed"))
    parser.add_argument("--name", default="protect_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_run = args.model or stand_in_model(args.work, args.set)
    surrogate = Surrogate(load_tamper_model(model_run))
    scan = resampled_lung1(SLICES)
    t0, c0 = time.perf_counter(), time.process_time()
    lung = lung_mask(scan)
    lung_seconds, lung_cpu = time.perf_counter() - t0, time.process_time() - c0
    config = ProtectConfig(8.0, optimize=OptimizeConfig(passes=args.passes))
    tiles = len(attack_sites(surrogate, scan, lung, config.optimize, []))
    t1, c1 = time.perf_counter(), time.process_time()
    protected = protect_scan(scan, [surrogate], config, lung)
    optimize_seconds, optimize_cpu = time.perf_counter() - t1, time.process_time() - c1
    change = np.abs(protected.voxels.astype(np.int32) - scan.voxels)
    out = {"scan": f"lung1 interpolated to {SLICES} slices", "shape": list(scan.shape),
           "spacing_mm": [round(s, 4) for s in scan.spacing], "threads": args.threads,
           "model": str(model_run) + ("" if args.model else " (cpu-small architecture, 2 training steps: timing only)"),
           "optimize_config": vars(config.optimize), "lung_tiles": tiles,
           "site_evaluations": int(np.ceil(config.optimize.passes * tiles / config.optimize.sites_per_step))
           * config.optimize.sites_per_step,
           "lung_mask_wall_seconds": round(lung_seconds, 1), "optimize_wall_seconds": round(optimize_seconds, 1),
           "lung_mask_cpu_seconds": round(lung_cpu, 1), "optimize_cpu_seconds": round(optimize_cpu, 1),
           "optimize_total_cpu_seconds": round(lung_cpu + optimize_cpu, 1), "target_optimize_seconds": 600,
           "note": "wall seconds on an oversubscribed shared machine mean little; with --threads 1 the process "
                   "CPU seconds are what one idle core needs (an upper bound for 2 idle cores)",
           "max_abs_change_hu": int(change.max()), "changed_fraction_of_lung": float((change[lung] > 0).mean()),
           "machine": "2 shared CPU cores (other jobs running)"}
    print(json.dumps(out, indent=1, default=str), flush=True)
    if args.protector:
        from medfake.protect.network import load_protector

        protector = load_protector(args.protector)
        t2, c2 = time.perf_counter(), time.process_time()
        protect_scan(scan, [surrogate], ProtectConfig(8.0, method="network"), lung, protector=protector)
        out["network_wall_seconds"] = round(time.perf_counter() - t2, 1)
        out["network_cpu_seconds"] = round(time.process_time() - c2, 1)
        out["network_total_cpu_seconds"] = round(lung_cpu + out["network_cpu_seconds"], 1)
        out["target_network_seconds"] = 120
        print("network", out["network_cpu_seconds"], "cpu s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    write_run_record(RESULTS, vars(args), 0, name=f"{args.name}.run.json")


if __name__ == "__main__":
    main()
