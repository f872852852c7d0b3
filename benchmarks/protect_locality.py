"""How local is a focused protection? The white-box injector shifted in-plane away from the site it was
protected at (issue #11: free placement). Why the whole-lung protection does nothing: if a site's protection
vanishes a few millimetres away, the lung has to be tiled at that pitch, and the budget is shared by all tiles.

Protection: `optimize` against the shared white-box injector (/work/runs/bench_tamper/run_inject) focused on
the evaluation's injection sites (as in `protect_threats.py`: 16 sign steps of budget/8, jitter 0). Attack: the
same injector at each site shifted by d mm along y and along x (4 attacks per site and d). Judges: the CAD and
the core/shell HU rule at the shifted place; core = mean HU added there.

    PYTHONPATH=src python benchmarks/protect_locality.py --scan lung1 [--shifts 0 1 2 3 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medfake.protect import threats
from medfake.protect.config import OptimizeConfig, ProtectConfig
from medfake.protect.evaluate import disruption
from medfake.protect.run import protect_scan
from medfake.protect.surrogate import Surrogate, load_tamper_model
from protect_bench import SHARED, save, scan_and_sites, trained

KEEP = ("success_unprotected", "success_protected", "core_shell_unprotected", "core_shell_protected",
        "core_change_unprotected_hu", "core_change_protected_hu")


def shifted(sites, mm: float, spacing) -> list[tuple[int, int, int]]:
    out = []
    for z, y, x in sites:
        dy, dx = int(round(mm / spacing[1])), int(round(mm / spacing[2]))
        out += [(z, y + dy, x), (z, y - dy, x), (z, y, x + dx), (z, y, x - dx)] if mm else [(z, y, x)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", default="lung1")
    parser.add_argument("--inject", type=Path, default=SHARED / "run_inject")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--shifts", type=float, nargs="+", default=[0, 1, 2, 3, 5])
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not trained(args.inject, "injector"):
        return
    name = args.name or f"protect_locality_{args.scan}"
    t0 = time.time()
    model = load_tamper_model(args.inject)
    scan, lung, sites = scan_and_sites(args.scan, "inject", args.sites)
    config = OptimizeConfig(passes=16, sites_per_step=1, step_hu=args.budget / 8, jitter_mm=0.0, focus_mm=0.5,
                            focus_zyx=[list(s) for s in sites])
    protected = protect_scan(scan, [Surrogate(model)], ProtectConfig(args.budget, optimize=config), lung)
    attack = threats.ctgan_attack(model)
    rows = {}
    for mm in args.shifts:
        result = disruption(scan, protected, attack, shifted(sites, mm, scan.spacing), "inject", lung)
        rows[f"{mm:g} mm"] = {**{k: result[k] for k in KEEP}, "n_attacks": result["n_sites"],
                              "core_change_protected_per_attack": [s["core_change_protected_hu"] for s in result["sites"]]}
        print(f"{mm:g} mm", json.dumps(rows[f"{mm:g} mm"], default=float), flush=True)
    out = {"scan": args.scan, "spacing_mm": list(scan.spacing), "sites": [list(s) for s in sites],
           "model_id": model.model_id, "budget_hu": args.budget,
           "protection": "optimize focused on the sites, 16 sign steps of budget/8, jitter 0",
           "attack": "the white-box injector at each site shifted by d mm along +y, -y, +x, -x",
           "shifts": rows, "total_seconds": round(time.time() - t0, 1)}
    save(name, out, args)


if __name__ == "__main__":
    main()
