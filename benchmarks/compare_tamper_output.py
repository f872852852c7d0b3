"""Behaviour-unchanged check for restructurings of the tamperer: train a tiny injector on lung1 for a fixed
number of steps with a fixed seed, tamper lung1 at a fixed location, and record SHA-256 digests of the
trained generator weights and of the tampered voxels (plus the per-step losses).

    PYTHONPATH=src .venv/bin/python benchmarks/compare_tamper_output.py --label after [--model FOLDER]
        [--keep-model DIR] [--out benchmarks/results/tamper_output_equivalence.json]

Two runs are trained: `dropout0` (no dropout: training draws no random numbers, so the weights depend only on
the seed and the arithmetic) and `dropout` (the cpu-small dropout, whose masks come from torch's global RNG:
a loop that seeds at another point draws other masks). `--model` tampers with a fixed, already trained model
folder instead (the tamper path alone). Runs of the same label are replaced in the JSON; other labels stay,
so `before` and `after` sit side by side. Single-threaded, a minute on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SITE = (23, 358, 118)  # lung1's right-lung parenchyma, 2 cm from vessels
TABLE = ("filename,x,y,z\nlung1,-21.86,-120.54,-611.50\nlung1,-78.70,-120.83,-662.50\n"
         "lung1,55.89,-139.08,-657.50\n")
TINY = dict(g_filters=(4, 8, 16, 16), d_filters=(4, 8, 16, 16), batch_size=4, g_lr=2e-3, d_lr=2e-4, hole=8,
            snapshot_every=5, checkpoint_every=3)


def build_set(work: Path) -> Path:
    from medfake.data.samples import sample_path
    from medfake.tamper.trainset import AugmentConfig, TrainsetConfig, build_trainset

    (work / "locs.csv").write_text(TABLE)
    config = TrainsetConfig("inject", cube=16, augment=AugmentConfig(rotation_step_deg=90))
    return build_trainset("inject", [sample_path("lung1")], work / "set", coords=work / "locs.csv", config=config)


def train_tiny(data: Path, run: Path, steps: int, dropout: float) -> list[dict]:
    """The current API (GanTrainConfig + train) or the one before the port (TrainConfig + train)."""
    from medfake.tamper import train as train_module
    from medfake.training import read_losses

    try:
        from medfake.tamper.config import GanTrainConfig as Config
    except ImportError:
        from medfake.tamper.model import TrainConfig as Config
    config = Config.resolve("inject", "cpu-small", steps=steps, dropout=dropout, **TINY)
    train_module.train(data, run, config, show_progress=False)
    return read_losses(run)


def weights_digest(model_dir: Path) -> str:
    state = torch.load(model_dir / "generator.pt", map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].numpy().tobytes())
    return h.hexdigest()


def tamper_digest(model_dir: Path) -> dict:
    from medfake.data.samples import sample_path
    from medfake.io import load_scan
    from medfake.tamper.model import load_tamper_model
    from medfake.tamper.pipeline import tamper_scan

    scan = load_scan(sample_path("lung1"))
    model = load_tamper_model(model_dir, "inject")
    out, _ = tamper_scan(scan, [SITE], "inject", model, rng=np.random.default_rng(0))
    changed = int(np.count_nonzero(out.voxels != scan.voxels))
    return {"voxels_sha256": hashlib.sha256(np.ascontiguousarray(out.voxels).tobytes()).hexdigest(),
            "voxels_changed": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", type=Path, default=None, help="also tamper with this fixed model folder")
    parser.add_argument("--keep-model", type=Path, default=None, help="copy the dropout run's model/ here")
    parser.add_argument("--out", type=Path, default=RESULTS / "tamper_output_equivalence.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from medfake.runinfo import git_commit

    result = {"commit": git_commit(), "steps": args.steps, "site_zyx": list(SITE), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.time()
        data = build_set(work)
        for name, dropout in (("dropout0", 0.0), ("dropout", 0.2)):
            losses = train_tiny(data, work / name, args.steps, dropout)
            model_dir = work / name / "model"
            result["runs"][name] = {"weights_sha256": weights_digest(model_dir), **tamper_digest(model_dir),
                                    "g_loss": [round(float(r["g_loss"]), 6) for r in losses],
                                    "d_loss": [round(float(r["d_loss"]), 6) for r in losses]}
            if name == "dropout" and args.keep_model:
                shutil.rmtree(args.keep_model, ignore_errors=True)
                shutil.copytree(model_dir, args.keep_model)
        if args.model:
            result["fixed_model"] = {"folder": str(args.model), "weights_sha256": weights_digest(args.model),
                                     **tamper_digest(args.model)}
        result["wall_s"] = round(time.time() - t, 1)
    everything = json.loads(args.out.read_text()) if args.out.exists() else {}
    everything[args.label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
