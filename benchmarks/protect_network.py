"""The `network` protector, held out by patient: trained on chest2 (TotalSegmentator's chest CT) against the
same tiny white-box injector as `protect_quality.py`, evaluated on lung1 at the same sites; one pass per
scan, timed.

    PYTHONPATH=src python benchmarks/protect_network.py [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.protect.config import ProtectConfig
from medfake.protect.evaluate import disruption, similarity
from medfake.protect.network import ProtectorConfig, load_protector, train_protector
from medfake.protect.run import protect_scan
from medfake.protect.surrogate import Surrogate, load_tamper_model, tamper_scan
from medfake.runinfo import write_run_record
from medfake.tamper.sites import pick_sites

RESULTS = Path(__file__).parent / "results"
NODULE_ZYX = (33, 359, 218)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--injector-steps", type=int, default=200)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medfake_protect_bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from protect_quality import tiny_injector

    model = load_tamper_model(tiny_injector(args.work / "white", args.injector_steps, 0))
    run = args.work / f"protector_{args.steps}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.time()
    train_protector([load_scan(sample_path("chest2"))], [Surrogate(model)], run,
                    ProtectorConfig(budget_hu=args.budget, steps=args.steps), show_progress=False)
    train_seconds = time.time() - t0
    scan = load_scan(sample_path("lung1"))
    lung = lung_mask(scan)
    sites = pick_sites(scan, args.sites, np.random.default_rng(0), lung, avoid_zyx=[NODULE_ZYX])
    t1 = time.time()
    protected = protect_scan(scan, [Surrogate(model)], ProtectConfig(args.budget, method="network"), lung,
                             protector=load_protector(run))
    protect_seconds = time.time() - t1
    attack = lambda s, zyx: tamper_scan(s, [zyx], "inject", model, rng=np.random.default_rng(1))[0]  # noqa: E731
    result = disruption(scan, protected, attack, sites, "inject", lung)
    out = {"scale": {"train": f"chest2, {args.steps} steps x 4 sites", "test": "lung1 (held out)",
                     "sites": [list(map(int, s)) for s in sites], "budget_hu": args.budget},
           "train_seconds": round(train_seconds, 1), "protect_seconds_lung1": round(protect_seconds, 1),
           "imperceptibility": similarity(scan.voxels, protected.voxels), "white_box": result}
    print(json.dumps({k: out[k] for k in ("train_seconds", "protect_seconds_lung1", "imperceptibility")}, indent=1))
    print("success", result["success_unprotected"], "->", result["success_protected"], "core",
          result["core_change_unprotected_hu"], "->", result["core_change_protected_hu"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protect_network.json").write_text(json.dumps(out, indent=2, default=float))
    write_run_record(RESULTS, vars(args), 0, name="protect_network.run.json")


if __name__ == "__main__":
    main()
