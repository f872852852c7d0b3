"""Training sets that scale: build time and disk of `trainset remove --auto-healthy K` on a synthetic cohort,
one stored region per location (this layout) against every augmented cube on disk (the layout before,
run from an exported older tree with --old-src), and proof that both give the same training cubes.

    PYTHONPATH=src .venv/bin/python benchmarks/trainset_scale.py [--n-scans 12 --auto-healthy 200]
        [--old-src /tmp/medfake_old/src --old-scans 2 --old-healthy 20 --train-steps 60]

1. builds the regions set for the full cohort (time, bytes, locations);
2. with --old-src: builds the same scaled-down set (--old-scans × --old-healthy) with both layouts, checks that
   every cube and the equalizer are bit-identical, and trains the same tiny no-dropout remover for
   --train-steps on each with its own code (training losses compared step by step; s/step: cubes are drawn on
   the fly in this layout).
Writes benchmarks/results/trainset_scale.json (machine load recorded: the 2 cores are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = dict(g_filters=[8, 16, 32, 64, 64], d_filters=[8, 16, 32, 64], dropout=0.0, batch_size=8,
             snapshot_every=10_000, checkpoint_every=10_000)

# Runs in a subprocess with either tree on the path: build a set, or train on one, and print JSON.
CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
job, args = sys.argv[1], json.loads(sys.argv[2])
if job == "build":
    from medfake.tamper.trainset import build_trainset
    t = time.time()
    build_trainset("remove", args["scans"], args["out"], auto_healthy=args["k"], seed=0)
    print(json.dumps({"seconds": time.time() - t}))
else:
    from medfake.tamper import train as T
    try:
        from medfake.tamper.config import GanTrainConfig as C
    except ImportError:
        from medfake.tamper.model import TrainConfig as C
    config = C.resolve("remove", "cpu-small", steps=args["steps"], **{k: tuple(v) if isinstance(v, list) else v
                                                                       for k, v in args["train"].items()})
    t = time.time()
    T.train(args["data"], args["out"], config, show_progress=False)
    from medfake.training import read_losses
    rows = read_losses(args["out"])
    print(json.dumps({"seconds": time.time() - t, "g_loss": [float(r["g_loss"]) for r in rows],
                      "d_loss": [float(r["d_loss"]) for r in rows]}))
"""


def child(src: Path, job: str, **args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, job, json.dumps(args, default=str)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_cubes(old: Path, new: Path) -> dict:
    """Every cube of the old layout's cubes.f16 against the cubes the new layout draws, and the equalizers."""
    import numpy as np

    from medfake.tamper.equalizer import Equalizer
    from medfake.tamper.trainset import TrainingSet

    index = json.loads((old / "index.json").read_text())
    cubes = np.memmap(old / "cubes.f16", dtype="<f2", mode="r", shape=tuple(index["shape"]))
    data = TrainingSet(new)
    identical = len(data) == len(cubes)
    for start in range(0, len(cubes), 256):
        stop = min(start + 256, len(cubes))
        identical &= bool(np.array_equal(data.cubes(np.arange(start, stop)), np.asarray(cubes[start:stop], np.float32)))
    eq_old = Equalizer.load(old / "equalizer.npz")
    return {"cubes": len(cubes), "cubes_identical": identical,
            "equalizer_identical": bool(np.array_equal(eq_old.cdf, data.equalizer.cdf)
                                        and np.array_equal(eq_old.edges, data.equalizer.edges))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-scans", type=int, default=12)
    parser.add_argument("--auto-healthy", type=int, default=200)
    parser.add_argument("--old-src", type=Path, default=None, help="src/ of a tree with the every-cube layout")
    parser.add_argument("--old-scans", type=int, default=2)
    parser.add_argument("--old-healthy", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path("runs/trainset_scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from medfake.data.synth import write_cohort
    from medfake.runinfo import git_commit, write_run_record

    src = Path(__file__).resolve().parents[1] / "src"
    work = args.work
    cohort = work / "cohort"
    if not cohort.exists():
        write_cohort(cohort, args.n_scans, args.seed)
    scans = sorted(p for p in cohort.iterdir() if p.name.startswith("synth-"))
    result = {"benchmark": "trainset_scale", "commit": git_commit(), "n_scans": len(scans),
              "auto_healthy": args.auto_healthy, "load_avg_before": os.getloadavg(), "cpus": os.cpu_count()}
    full = work / "regions_full"
    if not full.exists():
        built = child(src, "build", scans=[str(p) for p in scans], out=str(full), k=args.auto_healthy)
        result["regions_full"] = {"seconds": round(built["seconds"], 1)}
    index = json.loads((full / "index.json").read_text())
    locations = len(index["locations"])
    result.setdefault("regions_full", {}).update(
        {"locations": locations, "cubes_drawn": locations * len(index["views"]), "bytes": folder_bytes(full),
         "bytes_if_every_cube_on_disk": locations * len(index["views"]) * 32 ** 3 * 2})
    if args.old_src:
        small = [str(p) for p in scans[: args.old_scans]]
        pair = {}
        for name, tree in (("cubes_on_disk", args.old_src), ("regions", src)):
            folder = work / f"small_{name}"
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            built = child(tree, "build", scans=small, out=str(folder), k=args.old_healthy)
            pair[name] = {"seconds": round(built["seconds"], 1), "bytes": folder_bytes(folder)}
        pair["equivalence"] = same_cubes(work / "small_cubes_on_disk", work / "small_regions")
        if args.train_steps:
            for name, tree in (("cubes_on_disk", args.old_src), ("regions", src)):
                run = work / f"train_{name}"
                if run.exists():
                    import shutil

                    shutil.rmtree(run)
                trained = child(tree, "train", data=str(work / f"small_{name}"), out=str(run), steps=args.train_steps,
                                train=TRAIN)
                pair[name].update({"train_s_per_step": round(trained["seconds"] / args.train_steps, 3),
                                   "g_loss_last10": round(sum(trained["g_loss"][-10:]) / 10, 4),
                                   "g_loss": trained["g_loss"], "d_loss": trained["d_loss"]})
            pair["training_losses_identical"] = (pair["regions"]["g_loss"] == pair["cubes_on_disk"]["g_loss"]
                                                 and pair["regions"]["d_loss"] == pair["cubes_on_disk"]["d_loss"])
            for name in ("regions", "cubes_on_disk"):
                pair[name].pop("g_loss")
                pair[name].pop("d_loss")
        result["scaled_down_pair"] = {"scans": len(small), "auto_healthy": args.old_healthy,
                                      "train_steps": args.train_steps, "train_config": TRAIN, **pair}
    result["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainset_scale.json").write_text(json.dumps(result, indent=2))
    write_run_record(RESULTS, {k: str(v) for k, v in vars(args).items()}, args.seed, name="trainset_scale.run.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
