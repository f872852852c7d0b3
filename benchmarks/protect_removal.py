"""Can a budgeted perturbation stop the white-box remover? (issue #11, removal row.)

The shared cpu-small remover (/work/runs/bench_tamper/run_remove, 40 min on 30 synthetic scans; lung1 and
chest2 held out) at the nodules the CAD finds on each scan, judged by the CAD and the core/shell HU rule on
the real (numpy) tamper pipeline. Designs, all `optimize` focused on the nodule (the attacker's place is
known: the defender's easiest case) with `--passes` sign steps of budget/8 per site:

- nodule mass (the project's objective): maximise the mean HU the remover leaves in the core of its hole,
  in the lungs, at budgets 8 (the target) and above, to find where removal starts to fail;
- context anywhere (`region all`): the same objective, also outside the lung mask (chest wall, mediastinum
  the cube reads around a juxtapleural nodule);
- noise statistics: the sign of the scan's own high-pass residual × budget in the lungs, which inflates the
  noise level the remover measures and matches (no gradient: `match_noise` is not differentiable);
- trivial baseline: uniform random ±budget noise in the lungs.

Why the budget is the problem: the remover zeroes the hole and in-paints it from the context alone, so the
nodule's own voxels never reach the generator; the core is rewritten (blend weight 1 out to 9 mm).

    PYTHONPATH=src python benchmarks/protect_removal.py --scan lung1 [--budgets 8 16 32]
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
from medfake.tamper.noise import residual

from protect_bench import SHARED, save, scan_and_sites, trained


def focused(sites, budget: float, passes: int) -> OptimizeConfig:
    return OptimizeConfig(passes=passes, sites_per_step=1, step_hu=budget / 8, jitter_mm=0.0, focus_mm=0.5,
                          focus_zyx=[list(s) for s in sites])


def with_change(scan, change):
    return scan.with_voxels((scan.voxels.astype(np.int32) + change).astype(scan.voxels.dtype))


def row(scan, guarded, attack, sites, lung, seconds=None) -> dict:
    result = disruption(scan, guarded, attack, sites, "remove", lung)
    keep = ("success_unprotected", "success_protected", "core_shell_unprotected", "core_shell_protected",
            "core_change_unprotected_hu", "core_change_protected_hu", "roi_psnr_lung_db")
    out = {k: result[k] for k in keep}
    out["per_site"] = [{k: s[k] for k in ("site", "success_protected", "core_shell_protected",
                                          "core_change_unprotected_hu", "core_change_protected_hu")}
                       for s in result["sites"]]
    out["max_abs_hu"] = float(np.abs(guarded.voxels.astype(np.int32) - scan.voxels).max())
    if seconds is not None:
        out["protect_seconds"] = round(seconds, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", default="lung1")
    parser.add_argument("--remove", type=Path, default=SHARED / "run_remove")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--budgets", type=float, nargs="+", default=[8, 16, 32])
    parser.add_argument("--passes", type=int, default=32)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not trained(args.remove, "remover"):
        return
    name = args.name or f"protect_removal_{args.scan}"
    t0 = time.time()
    model = load_tamper_model(args.remove)
    scan, lung, sites = scan_and_sites(args.scan, "remove", args.sites)
    print("sites", sites, flush=True)
    attack = threats.ctgan_attack(model)
    surrogate = Surrogate(model)
    designs = {}
    for budget in args.budgets:
        for region in (["lungs", "all"] if budget == args.budgets[0] else ["lungs"]):
            t = time.time()
            config = ProtectConfig(budget, region=region, optimize=focused(sites, budget, args.passes))
            guarded = protect_scan(scan, [surrogate], config, lung)
            label = f"nodule mass, {budget:g} HU" + (", region all" if region == "all" else "")
            designs[label] = row(scan, guarded, attack, sites, lung, time.time() - t)
            print(label, json.dumps(designs[label]), flush=True)
    b = int(args.budgets[0])
    sign = np.sign(residual(scan.voxels, scan.spacing)).astype(np.int32) * b * lung
    designs[f"noise statistics, {b} HU"] = row(scan, with_change(scan, sign), attack, sites, lung)
    noise = np.random.default_rng(0).integers(-b, b + 1, scan.shape) * lung
    designs[f"trivial baseline: random ±{b} HU"] = row(scan, with_change(scan, noise), attack, sites, lung)
    for label in list(designs)[-2:]:
        print(label, json.dumps(designs[label]), flush=True)
    out = {"scan": args.scan, "shape": list(scan.shape), "spacing_mm": list(scan.spacing), "remover": str(args.remove),
           "model_id": model.model_id, "sites": [list(s) for s in sites], "passes": args.passes,
           "judges": "CAD (nodule within 5 mm) and core/shell HU rule; success = the nodule is gone, no new "
                     "saturated voxel; core change = mean HU change in a 2.5 mm disc at the site vs the original",
           "designs": designs, "total_seconds": round(time.time() - t0, 1)}
    save(name, out, args)


if __name__ == "__main__":
    main()
