"""Behaviour-unchanged check for restructurings of the tamperer: train a tiny injector on lung1 for a fixed
number of steps with a fixed seed, tamper lung1 at a fixed location, and record SHA-256 digests of the
trained generator weights and of the tampered voxels (plus the per-step losses).

    PYTHONPATH=src .venv/bin/python benchmarks/compare_tamper_output.py --label after [--model FOLDER]
        [--keep-model DIR] [--out benchmarks/results/tamper_output_equivalence.json]

Two runs are trained: `dropout0` (no dropout: training draws no random numbers, so the weights depend only on
the seed and the arithmetic) and `dropout` (the cpu-small dropout, whose masks come from torch's global RNG:
a loop that seeds at another point draws other masks). `--model` also tampers with a fixed, already trained
model folder (the tamper path alone) and digests crops/pastes at the scan's borders (ctgan, copy-move,
in-painting). Runs of the same label are replaced in the JSON; other labels stay,
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
    from medfake.tamper.trainset import build_trainset

    try:
        from medfake.tamper.config import AugmentConfig, TrainsetConfig
    except ImportError:  # the tree before the restructuring
        from medfake.tamper.trainset import AugmentConfig, TrainsetConfig

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


def crop_digests(model_dir: Path) -> dict:
    """Crops and pastes at lung1's centre and at its borders: the fixed model's tamper and the classical methods."""
    from medfake.data.samples import sample_path
    from medfake.io import load_scan
    from medfake.tamper.classical import copy_move_inject, inpaint_remove, nodule_radius_mm
    from medfake.tamper.model import load_tamper_model
    from medfake.tamper.pipeline import Site, tamper_scan

    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    scan = load_scan(sample_path("lung1"))
    nodule = (33, 359, 218)
    out = {"nodule_radius_mm": [nodule_radius_mm(scan, zyx) for zyx in (nodule, (1, 359, 218), (47, 2, 510))],
           "copy_move": digest(copy_move_inject(scan, (30, 330, 380), scan, nodule, np.random.default_rng(0))),
           "copy_move_border": digest(copy_move_inject(scan, (0, 3, 508), scan, nodule, np.random.default_rng(1))),
           "inpaint": digest(inpaint_remove(scan, nodule, 13.8)),  # float32, before the scan's dtype
           "inpaint_scan": digest(tamper_scan(scan, [Site(nodule, "table", 13.8)], "remove", method="inpaint")[0].voxels),
           "inpaint_border": digest(inpaint_remove(scan, (1, 300, 509), 10.0))}
    model = load_tamper_model(model_dir, "inject")
    for name, site in (("ctgan_border_z", (1, 358, 118)), ("ctgan_border_x", (47, 200, 2))):
        out[name] = digest(tamper_scan(scan, [site], "inject", model, rng=np.random.default_rng(0))[0].voxels)
    return out


def compare(before: dict, after: dict, label: str) -> dict:
    """Which digests agree bit for bit, and how far apart the losses are (relative, worst step)."""
    out = {"labels": ["before", label]}
    for name, run in after["runs"].items():
        old = before["runs"][name]
        out[name] = {"weights_identical": run["weights_sha256"] == old["weights_sha256"],
                     "tampered_voxels_identical": run["voxels_sha256"] == old["voxels_sha256"],
                     "g_loss_max_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(run["g_loss"], old["g_loss"])),
                     "d_loss_max_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(run["d_loss"], old["d_loss"]))}
    if "fixed_model" in before and "fixed_model" in after:
        fb, fa = before["fixed_model"], after["fixed_model"]
        out["fixed_model_tamper_identical"] = fb["voxels_sha256"] == fa["voxels_sha256"]
        out["crops_identical"] = {k: v == fa.get("crops", {}).get(k) for k, v in fb.get("crops", {}).items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", type=Path, default=None, help="also tamper with this fixed model folder")
    parser.add_argument("--keep-model", type=Path, default=None, help="copy the dropout run's model/ here")
    parser.add_argument("--source-commit", default=None, help="record this commit (code run from an export)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tamper_output_equivalence.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from medfake.runinfo import git_commit

    result = {"commit": args.source_commit or git_commit(), "steps": args.steps, "site_zyx": list(SITE), "runs": {}}
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
                                     **tamper_digest(args.model), "crops": crop_digests(args.model)}
        result["wall_s"] = round(time.time() - t, 1)
    everything = json.loads(args.out.read_text()) if args.out.exists() else {}
    everything[args.label] = result
    everything.pop("comparison", None)
    if "before" in everything and args.label != "before":
        everything["comparison"] = compare(everything["before"], result, args.label)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
