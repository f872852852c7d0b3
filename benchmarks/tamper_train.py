"""Train the cpu-small injector and remover on synthetic chest CTs (lung1 held out unless --with-lung1).

    .venv/bin/python benchmarks/tamper_train.py [--minutes 30] [--n-train 30] [--only inject|remove] [--with-lung1] [--work runs/bench_tamper]

Writes the cohort, both training sets and both runs under --work (git-ignored `runs/`), prints and saves
benchmarks/results/tamper_train.json (steps reached, losses, wall time, machine load). The held-out scans
(`--n-test`) are written too, for benchmarks/tamper_quality.py. Real scans are held out from both models by
default, so every real-scan figure of tamper_quality.py is on a scan the tamperer never saw; `--with-lung1` adds
lung1's labelled nodule to the injector's set (then lung1 rows are "seen in training").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm"


def visible_nodules(nodules_csv: Path) -> list[str]:
    """Solid and part-solid nodules only: an attacker wants injections a radiologist (and a CAD) will see,
    and ground-glass examples teach the injector faint results the CAD judge rightly ignores."""
    import csv

    with nodules_csv.open() as f:
        return [",".join(row[k] for k in HEADER.split(",")) for row in csv.DictReader(f)
                if row["type"] != "ground-glass"]


def build_data(work: Path, n_train: int, n_test: int, seed: int, with_lung1: bool) -> dict:
    from medfake.data.samples import sample_path
    from medfake.data.synth import write_cohort
    from medfake.tamper.config import TrainsetConfig
    from medfake.tamper.trainset import build_trainset

    if not (work / "cohort_train").exists():
        write_cohort(work / "cohort_train", n_train, seed)
    if not (work / "cohort_test").exists():
        write_cohort(work / "cohort_test", n_test, seed + 1000)
    table = work / "inject_locations.csv"
    lung1 = (sample_path("lung1").parent / "annotations.csv").read_text().splitlines()[1:] if with_lung1 else []
    table.write_text("\n".join([HEADER, *visible_nodules(work / "cohort_train" / "nodules.csv"), *lung1]) + "\n")
    scans = [work / "cohort_train", *([sample_path("lung1")] if with_lung1 else [])]
    timing = {}
    if not (work / "set_inject").exists():
        t = time.time()
        build_trainset("inject", scans, work / "set_inject", coords=table, seed=seed,
                       config=TrainsetConfig("inject", min_diameter_mm=5.0, max_diameter_mm=18.0))
        timing["build_inject_s"] = round(time.time() - t, 1)
    if not (work / "set_remove").exists():
        t = time.time()
        build_trainset("remove", [work / "cohort_train"], work / "set_remove", seed=seed, auto_healthy=12,
                       coords=work / "cohort_train" / "annotations.csv")
        timing["build_remove_s"] = round(time.time() - t, 1)
    return timing


def train_one(action: str, work: str, minutes: float, threads: int, seed: int) -> dict:
    import torch

    from medfake.tamper.config import GanTrainConfig
    from medfake.tamper.train import read_validation, train
    from medfake.training import read_losses

    torch.set_num_threads(threads)
    run = Path(work) / f"run_{action}"
    config = GanTrainConfig.resolve(action, "cpu-small", seed=seed, steps=100_000)
    t = time.time()
    train(Path(work) / f"set_{action}", run, config, show_progress=False, max_minutes=minutes)
    losses = read_losses(run)
    first, last = losses[:20], losses[-20:]
    mean = lambda rows, k: round(sum(float(r[k]) for r in rows) / len(rows), 4)
    val = [float(r["val_l1_hole"]) for r in read_validation(run) if r["val_l1_hole"] not in ("", "nan")]
    return {"action": action, "run": str(run), "steps": len(losses), "wall_min": round((time.time() - t) / 60, 2),
            "s_per_step": round((time.time() - t) / max(len(losses), 1), 3), "batch_size": config.batch_size,
            "d_loss_first20": mean(first, "d_loss"), "d_loss_last20": mean(last, "d_loss"),
            "g_l1_first20": mean(first, "g_l1"), "g_l1_last20": mean(last, "g_l1"),
            "val_l1_hole": val[-5:], "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per model")
    parser.add_argument("--n-train", type=int, default=30)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per trainer (default 1 when both train at once, 2 with --only)")
    parser.add_argument("--only", choices=["inject", "remove"], default=None, help="train one model (its old run is replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-lung1", action="store_true",
                        help="add lung1's nodule to the injector's training set (lung1 rows are then 'seen in training')")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_tamper"))
    args = parser.parse_args()
    from medfake.runinfo import write_run_record

    args.work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    timing = build_data(args.work, args.n_train, args.n_test, args.seed, args.with_lung1)
    timing["data_total_s"] = round(time.time() - t, 1)
    load_before = os.getloadavg()
    actions = [args.only] if args.only else ["inject", "remove"]
    threads = args.threads or (2 if args.only else 1)
    with ProcessPoolExecutor(len(actions)) as pool:
        jobs = [pool.submit(train_one, a, str(args.work), args.minutes, threads, args.seed) for a in actions]
        runs = [j.result() for j in jobs]
    previous = RESULTS / "tamper_train.json"
    if args.only and previous.exists():  # keep the other model's record
        runs += [r for r in json.loads(previous.read_text())["runs"] if r["action"] != args.only]
    result = {"benchmark": "tamper_train", "preset": "cpu-small", "minutes_budget": args.minutes,
              "n_train_scans": args.n_train, "real_scans_in_training": ["lung1"] if args.with_lung1 else [], "data": timing, "runs": runs,
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(),
              "note": ("each model within --minutes wall clock on the 2 cores (both at once: one core each); the injector "
                       "learns from solid and part-solid nodules only")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tamper_train.json").write_text(json.dumps(result, indent=2))
    write_run_record(RESULTS, vars(args) | {"work": str(args.work)}, args.seed, name="tamper_train.run.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
