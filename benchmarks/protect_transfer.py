"""Does a protection computed against the white-box injector transfer to a grey-box one? (issue #11)

White-box: the shared cpu-small injector (/work/runs/bench_tamper/run_inject, seed 0, ~3100 steps). Grey-box:
the same architecture and training set, another seed (`--grey`, trained for a bounded time; say how long in
`--grey-note`). Every design is `optimize` focused on the evaluation's injection sites (the attacker's place
known: the defender's easy case), `--passes` sign steps of budget/8 per site, then the real tamper pipeline at
each site and both judges (CAD, core/shell). Designs:

- white: the white-box injector only (what `protect_threats.py` uses);
- + ghosts: two dropout samples of its generator per step ("ghost networks", a cheap ensemble);
- + blur EOT: the expectation over a blur of the scan (σ ∈ {0, 0.35, 0.7} mm) before the tamperer reads it;
- + ensemble: a third injector (`--ensemble`, another seed again, never evaluated) in the objective;
- everything together;
- white at twice and four times the budget (how far transfer is from the budget);
- oracle: the protection computed against the grey-box model itself (the upper bound: white-box on it).

    PYTHONPATH=src python benchmarks/protect_transfer.py --grey RUN --ensemble RUN [--scan lung1]
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


def focused(sites, budget: float, passes: int, blur: float = 0.0, ghosts: int = 0) -> OptimizeConfig:
    return OptimizeConfig(passes=passes, sites_per_step=1, step_hu=budget / 8, jitter_mm=0.0, focus_mm=0.5,
                          focus_zyx=[list(s) for s in sites], eot_blur_mm=blur, ghosts=ghosts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", default="lung1")
    parser.add_argument("--inject", type=Path, default=SHARED / "run_inject")
    parser.add_argument("--grey", type=Path)
    parser.add_argument("--grey-note", default="")
    parser.add_argument("--ensemble", type=Path)
    parser.add_argument("--ensemble-note", default="")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--passes", type=int, default=16)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.grey is None or args.ensemble is None:  # `make bench`: the extra models are trained by hand
        print("skipped: give --grey RUN and --ensemble RUN (e.g. `medfake train inject --seed 1 --max-minutes 22`)")
        return
    if not trained(args.inject, "injector"):
        return
    name = args.name or f"protect_transfer_{args.scan}"
    t0 = time.time()
    white, grey, extra = (Surrogate(load_tamper_model(p)) for p in (args.inject, args.grey, args.ensemble))
    scan, lung, sites = scan_and_sites(args.scan, "inject", args.sites)
    print("sites", sites, flush=True)
    b = args.budget
    designs = {"white": ([white], b, 0.0, 0), "white + ghosts": ([white], b, 0.0, 2),
               "white + blur EOT": ([white], b, 0.7, 0), "white + ensemble": ([white, extra], b, 0.0, 0),
               "white + ensemble + ghosts + blur EOT": ([white, extra], b, 0.7, 2),
               f"white, {2 * b:g} HU": ([white], 2 * b, 0.0, 0), f"white, {4 * b:g} HU": ([white], 4 * b, 0.0, 0),
               "oracle: against the grey-box model itself": ([grey], b, 0.0, 0)}
    attacks = {"white-box": threats.ctgan_attack(white.model), "grey-box": threats.ctgan_attack(grey.model),
               "blur 0.5 mm, then white-box": threats.before(threats.blur, threats.ctgan_attack(white.model))}
    noise = np.random.default_rng(0).integers(-int(b), int(b) + 1, scan.shape) * lung
    baseline = scan.with_voxels((scan.voxels.astype(np.int32) + noise).astype(scan.voxels.dtype))
    out_designs = {f"trivial baseline: random ±{b:g} HU": {
        attack: {k: disruption(scan, baseline, fn, sites, "inject", lung)[k] for k in KEEP}
        for attack, fn in attacks.items()}}
    for label, (surrogates, budget, blur, ghosts) in designs.items():
        t = time.time()
        guarded = protect_scan(scan, surrogates, ProtectConfig(budget, optimize=focused(sites, budget, args.passes,
                                                                                        blur, ghosts)), lung)
        seconds = time.time() - t
        row = {"protected_against": [s.model_id for s in surrogates], "budget_hu": budget, "eot_blur_mm": blur,
               "ghosts": ghosts, "protect_seconds": round(seconds, 1)}
        for attack, fn in attacks.items():
            result = disruption(scan, guarded, fn, sites, "inject", lung)
            row[attack] = {k: result[k] for k in KEEP}
            row[attack]["core_change_protected_per_site"] = [s["core_change_protected_hu"] for s in result["sites"]]
        out_designs[label] = row
        print(label, json.dumps(row, default=float), flush=True)
    out = {"scan": args.scan, "sites": [list(s) for s in sites], "budget_hu": b, "passes": args.passes,
           "white_box": white.model_id, "grey_box": grey.model_id, "grey_note": args.grey_note,
           "ensemble": extra.model_id, "ensemble_note": args.ensemble_note,
           "judges": "CAD (a nodule within 5 mm, no new saturated voxel) and core/shell HU rule; core change = "
                     "mean HU added in a 2.5 mm disc at the site",
           "designs": out_designs, "total_seconds": round(time.time() - t0, 1)}
    save(name, out, args)


if __name__ == "__main__":
    main()
