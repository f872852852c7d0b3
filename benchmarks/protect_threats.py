"""Protection under every threat model with the shared cpu-small tamperers (issue #11), on held-out real scans.

White-box: the injector and the remover of /work/runs/bench_tamper (trained 40 min each by
benchmarks/tamper_train.py on 30 synthetic scans; lung1 and chest2 were never seen). Grey-box: the same
architecture and training set, another seed, trained only a few minutes (--grey-inject/--grey-remove: say how
long in the JSON). Black-box: copy-move injection, in-paint removal. Benign processing (DICOM re-save, JPEG 2000
~10:1, blur σ 0.5 mm, in-plane resampling to 1 mm) and the adaptive median 3×3×1 before the white-box injector.
Trivial baseline: uniform random ±budget noise in the lungs, against both white-box tamperers.

Protection: `optimize` against both white-box models, focused on the evaluation's sites with the attacker's
place known (jitter 0, 16 sign steps of budget/8) — the defender's easy case; `--regimes lungs` adds the realistic
case (the default whole-lung optimisation: the attacker picks the place) against the white-box rows.
Sites: --sites healthy lung places for injections (away from the nodules the CAD finds), the nodules the CAD
finds for removals. Judges: the CAD and the core/shell HU rule; detector: selfref (training-free), its AUC of
tampered-protected vs tampered-unprotected on the white-, grey- and black-box rows.

    PYTHONPATH=src python benchmarks/protect_threats.py --scan lung1 [--grey-inject RUN --grey-remove RUN]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medfake.cad import detect_nodules
from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.protect import threats
from medfake.protect.config import OptimizeConfig, ProtectConfig
from medfake.detect.detectors import load_detector
from medfake.protect.report import Attacker, Case, evaluate_case, evaluation_sites, markdown
from medfake.protect.run import protect_scan
from medfake.protect.surrogate import Surrogate, load_tamper_model
from medfake.render import save_png
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).parent / "results"
SHARED = Path("/work/runs/bench_tamper")


def attackers(white: dict, grey: dict) -> list[Attacker]:
    out = [Attacker(f"white-box {a}", "white-box", a, threats.ctgan_attack(m)) for a, m in white.items()]
    out += [Attacker(f"grey-box {a} (other seed)", "grey-box", a, threats.ctgan_attack(m))
            for a, m in grey.items()]
    out += [Attacker("black-box inject (copy-move)", "black-box", "inject", threats.classical_attack("copy-move")),
            Attacker("black-box remove (in-paint)", "black-box", "remove", threats.classical_attack("inpaint"))]
    for name, transform in threats.TRANSFORMS.items():
        out.append(Attacker(f"{threats.transform_kind(name)} {name}, then white-box inject",
                            threats.transform_kind(name), "inject",
                            threats.before(transform, threats.ctgan_attack(white["inject"]))))
    return out


def focused(sites: dict, budget: float, eot_blur_mm: float = 0.0, ghosts: int = 0, passes: int = 16) -> OptimizeConfig:
    return OptimizeConfig(passes=passes, sites_per_step=1, step_hu=budget / 8, jitter_mm=0.0, focus_mm=0.5,
                          focus_zyx=[list(s) for v in sites.values() for s in v], eot_blur_mm=eot_blur_mm,
                          ghosts=ghosts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", default="lung1")
    parser.add_argument("--inject", type=Path, default=SHARED / "run_inject")
    parser.add_argument("--remove", type=Path, default=SHARED / "run_remove")
    parser.add_argument("--grey-inject", type=Path)
    parser.add_argument("--grey-remove", type=Path)
    parser.add_argument("--grey-note", default="")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--regimes", nargs="+", default=["baseline", "focused"],
                        choices=["baseline", "focused", "lungs"], help="lungs: protect the whole lung (free placement)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--eot-blur", type=float, default=0.0, help="protection: expectation over a blur (mm)")
    parser.add_argument("--ghosts", type=int, default=0, help="protection: dropout samples of each generator")
    parser.add_argument("--passes", type=int, default=16, help="protection: sign steps per site")
    parser.add_argument("--ensemble", type=Path, nargs="*", default=[],
                        help="protection: further injectors protected against (not evaluated as white-box)")
    parser.add_argument("--threats", nargs="+", default=["white-box", "grey-box", "black-box", "benign", "adaptive"],
                        help="which rows to evaluate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    missing = [str(p) for p in (args.inject, args.remove) if not (p / "model" / "model.json").exists()]
    if missing:  # `make bench` on a fresh machine: tamper_train.py (which makes them) runs later
        print(f"skipped: no trained tamper model at {', '.join(missing)} (run benchmarks/tamper_train.py first)")
        return
    name = args.name or f"protect_threats_{args.scan}"
    t0 = time.time()
    white = {"inject": load_tamper_model(args.inject), "remove": load_tamper_model(args.remove)}
    grey = {a: load_tamper_model(p) for a, p in (("inject", args.grey_inject), ("remove", args.grey_remove)) if p}
    scan = load_scan(sample_path(args.scan))
    lung = lung_mask(scan)
    nodules = detect_nodules(scan, lung)  # one CAD pass for the sites, the protections and every evaluation
    sites = evaluation_sites(scan, lung, ("inject", "remove"), args.sites, 0, nodules=nodules)
    print("sites", sites, flush=True)
    surrogates = [Surrogate(m) for m in white.values()] + [Surrogate(load_tamper_model(p)) for p in args.ensemble]
    t1 = time.time()
    optimize = focused(sites, args.budget, args.eot_blur, args.ghosts, args.passes)
    protected = protect_scan(scan, surrogates, ProtectConfig(args.budget, optimize=optimize),
                             lung, nodules=nodules) if "focused" in args.regimes else None
    protect_seconds = time.time() - t1
    ids = [s.model_id for s in surrogates]
    rng = np.random.default_rng(0)
    noise = np.where(lung, rng.integers(-int(args.budget), int(args.budget) + 1, scan.shape), 0)
    noisy = scan.with_voxels((scan.voxels + noise).astype(scan.voxels.dtype))
    white_rows = [a for a in attackers(white, grey) if a.threat == "white-box"]
    detectors = {"selfref": load_detector("selfref")}
    out = {"scan": args.scan, "shape": list(scan.shape), "spacing_mm": list(scan.spacing),
           "white_box": {a: str(p) for a, p in (("inject", args.inject), ("remove", args.remove))},
           "grey_box": {a: str(p) for a, p in (("inject", args.grey_inject), ("remove", args.grey_remove)) if p},
           "grey_note": args.grey_note, "budget_hu": args.budget, "sites": {a: [list(s) for s in v]
                                                                            for a, v in sites.items()},
           "protection": f"optimize against both white-box models{' and ' + str(len(args.ensemble)) + ' more' if args.ensemble else ''}, "
                         f"focused on the sites (jitter 0), {args.passes} sign steps of budget/8, soft max over the flip views"
                         + (f", expectation over a blur of up to {args.eot_blur:g} mm" if args.eot_blur else "")
                         + (f", {args.ghosts} dropout samples per generator" if args.ghosts else ""),
           "ensemble": [str(p) for p in args.ensemble], "threats": args.threats,
           "protect_seconds": round(protect_seconds, 1),
           "machine": "2 shared CPU cores, heavily oversubscribed (seconds are wall clock)", "regimes": {}}
    regimes = [("trivial baseline: random ±budget noise in the lungs", noisy, white_rows, None)] \
        if "baseline" in args.regimes else []
    if protected is not None:
        chosen = [a for a in attackers(white, grey) if a.threat in args.threats]
        regimes.append(("focused (attacker's place known)", protected, chosen, detectors))
    if "lungs" in args.regimes:
        t2 = time.time()
        whole = protect_scan(scan, surrogates, ProtectConfig(args.budget, optimize=OptimizeConfig()), lung,
                             nodules=nodules)
        out["protect_seconds_lungs"] = round(time.time() - t2, 1)
        regimes.append(("whole lung (attacker picks the place; default optimize)", whole, white_rows, None))
    for regime, guarded, rows, dets in regimes:
        case = Case(args.scan, scan, guarded, ids)
        result, panels = evaluate_case(case, rows, args.sites, 0, dets, inject_sites=sites["inject"], lung=lung,
                                       nodules=nodules)
        out["regimes"][regime] = result
        for k, (caption, image) in enumerate(panels[:2]):
            if regime.startswith("focused"):
                save_png(image, RESULTS / f"{name}_{k}.png")
        print(markdown({"cases": [{**result, "scan": f"{args.scan}: {regime}"}]}), flush=True)
    out["total_seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2, default=float))
    write_run_record(RESULTS, {k: str(v) for k, v in vars(args).items()}, 0, name=f"{name}.run.json")


if __name__ == "__main__":
    main()
