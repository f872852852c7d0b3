"""Detector behaviour before/after a refactoring: train each method (btd, dae, noise, supervised) tiny and with a
fixed seed on lung1 through the CLI, then score fixed locations (and screen, for BTD) through the CLI.

    python benchmarks/detect_equivalence.py --save NAME        # record: benchmarks/results/detect_equivalence_NAME.json
    python benchmarks/detect_equivalence.py --compare NAME     # run again and compare with a record (exit 1 if not equal)

Recorded per method: a SHA-256 of the trained weights (online model, EMA, noise statistics) and the scores the
`detect` command writes at five locations (genuine lung, the real nodule, a pasted square); for BTD also the
screening findings. Equality of the weights hash shows training replays exactly; equality of the scores shows
scoring does. Minutes on two busy cores.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from medfake.cli import main
from medfake.data.samples import sample_path
from medfake.io import load_scan, save_scan
from medfake.io.tables import ManifestRow, append_manifest
from medfake.runinfo import git_commit

RESULTS = Path(__file__).resolve().parent / "results"
LOCATIONS = ["20,300,150", "30,330,380", "33,359,218", "25,250,250", "10,280,300"]
COMMON = ["--patch-size", "32", "--batch-size", "8", "--lr", "2e-3", "--seed", "7"]
TRAIN = {"btd": ["--preset", "tiny", "--steps", "12", "--samples", "2", "--save-every", "5", *COMMON],
         "dae": ["--steps", "12", "--samples", "2", *COMMON],
         "noise": ["--seed", "7"],
         "supervised": ["--steps", "12", "--batch-size", "8", "--lr", "2e-3", "--seed", "7"]}


def weights_hash(run: Path) -> str:
    """SHA-256 over every tensor/array of the trained weights, in key order (online, EMA, noise statistics)."""
    state = torch.load(run / "checkpoints/model-latest.pt", map_location="cpu", weights_only=False)
    digest = hashlib.sha256()
    parts = {"model": state.get("model") or {}, "ema": state.get("ema") or {}}
    for group, tensors in parts.items():
        for key in sorted(tensors):
            if key == "step":  # the EMA's step counter is bookkeeping, not weights
                continue
            digest.update(f"{group}.{key}".encode())
            digest.update(np.ascontiguousarray(tensors[key].detach().cpu().numpy()).tobytes())
    if "noise_model" in state:
        digest.update(json.dumps(state["noise_model"], sort_keys=True).encode())
    return digest.hexdigest()


def run_all(work: Path) -> dict:
    lung1 = load_scan(sample_path("lung1"))
    genuine = save_scan(lung1, work / "lung1.npz", format="npz")
    hu = lung1.voxels.copy()
    hu[20, 290:310, 140:160] = 300
    save_scan(lung1.with_voxels(hu), work / "fake.npz", format="npz")
    append_manifest([ManifestRow(str(genuine), "fake.npz", *lung1.voxel_to_world((20, 300, 150)), 20, 300, 150,
                                 "inject", "test", "none", "{}", "now")], work / "manifest.csv")
    result = {}
    for method, options in TRAIN.items():
        run = work / method
        extra = ["--tampered", str(work / "manifest.csv")] if method == "supervised" else []
        main(["train", "detector", "--scans", str(genuine), "--method", method, *options, *extra, "-o", str(run)])
        entry = {"weights_sha256": weights_hash(run)}
        for name in ("fake.npz", "lung1.npz"):
            out = work / f"{method}_{name}"
            main(["detect", str(work / name), "--model", str(run), *sum((["-c", c] for c in LOCATIONS), []),
                  "-o", str(out)])
            entry[name] = [row["score"] for row in csv.DictReader(open(out / "scores.csv"))]
        if method == "btd":
            out = work / "btd_screen"
            main(["detect", str(work / "fake.npz"), "--model", str(run), "--screen", "--stride", "32",
                  "--slice-step", "8", "--top", "3", "-o", str(out)])
            findings = json.loads((out / "findings.json").read_text())
            entry["screen"] = [[f["voxel_zyx"], f"{f['score']:.6g}"] for f in findings["findings"]]
        result[method] = entry
        print(method, json.dumps(entry))
    return result


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="NAME")
    group.add_argument("--compare", metavar="NAME")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_all(Path(tmp))
    if args.save:
        path = RESULTS / f"detect_equivalence_{args.save}.json"
        path.write_text(json.dumps({"commit": git_commit(), "methods": result}, indent=2))
        print(f"saved {path}")
        return 0
    recorded = json.loads((RESULTS / f"detect_equivalence_{args.compare}.json").read_text())
    differences = [f"{method}.{key}: {recorded['methods'][method][key]} != {value}"
                   for method, entry in result.items() for key, value in entry.items()
                   if recorded["methods"].get(method, {}).get(key) != value]
    print("\n".join(differences) or f"identical to {args.compare} (recorded at {recorded['commit']})")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main_cli())
