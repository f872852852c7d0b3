"""The keyed fragile watermark (`medfake protect --method watermark`): is tampering of a watermarked scan detectable?

Scans: lung1 and chest2 (real, held out of every tamperer's training) and two held-out synthetic scans of
/work/runs/bench_tamper/cohort_test. Each is watermarked at --budget HU in the lungs, then tampered: the shared
cpu-small CT-GAN injector at healthy lung sites and remover at the labelled nodules (lung1: voxel 33,359,218;
synthetic: annotations.csv; chest2: the nodules the CAD finds), classical copy-move (donor: a labelled nodule
of the same scan) at the injection sites and in-painting at the removal sites. One tampered scan per attack.

Site score = the watermark's local amplitude (`watermark.site_score`, 12 mm window, lung voxels of the tested
scan's own lung mask); positives = tampered sites, negatives = the same positions in the untampered watermarked
scan processed the same way (matched positions); AUC of −score with DeLong 95% CI, pooled over scans and
attacks, per condition: none; benign processing of the watermarked scan *before* the attack; processing of
the tampered scan (and of the negative) *after* the attack. Trivial baseline: the same statistic with a wrong
key. Operating point of `verify`: tampered sites with a finding within 12 mm, and findings away from every
site (false alarms) on the tampered scans and the untouched ones.

Usage: PYTHONPATH=src python benchmarks/protect_watermark.py [--budget 8] [--scans lung1 chest2 synth0 synth1]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.lungmask import lung_mask
from medfake.protect import threats
from medfake.protect import watermark as wm
from medfake.protect.evaluate import similarity
from medfake.protect.surrogate import load_tamper_model
from medfake.runinfo import write_run_record
from medfake.stats import delong_auc
from medfake.tamper.pipeline import tamper_scan
from medfake.tamper.sites import pick_sites

RESULTS = Path(__file__).parent / "results"
BENCH = Path("/work/runs/bench_tamper")
KEY, WRONG = "benchmark key 2026", "not the key"
LUNG1_NODULE = (33, 359, 218)
SMALL_WINDOW_MM = 8.0  # a second, smaller site window (more of it is tampered, fewer voxels to average)
PROCESSING = ["dicom-resave", "blur-0.5mm", "resample-1mm", "jpeg2000-10to1", "median-3x3x1"]


def load_case(name: str):
    if name in ("lung1", "chest2"):
        return load_scan(sample_path(name)), None
    index = int(name.removeprefix("synth"))
    path = sorted((BENCH / "cohort_test").glob("synth-*.nrrd"))[index]
    return load_scan(path), path.name.removesuffix(".nrrd")


def removal_sites(name, scan, uid, lung, n: int) -> list[tuple]:
    if name == "lung1":
        return [LUNG1_NODULE]
    if uid is not None:
        with open(BENCH / "cohort_test" / "annotations.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["seriesuid"] == uid]
        rows.sort(key=lambda r: -float(r["diameter_mm"]))
        sites = [tuple(int(v) for v in np.rint(scan.world_to_continuous(
            [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])]))) for r in rows]
        return separated(sites, scan, 34.0)[:n]
    from medfake.cad import detect_nodules

    return [tuple(int(v) for v in c.center_zyx) for c in detect_nodules(scan, lung)][:n]


def separated(sites, scan, mm: float) -> list[tuple]:
    kept = []
    for s in sites:
        if all(np.linalg.norm((np.subtract(s, k)) * scan.spacing) >= mm for k in kept):
            kept.append(s)
    return kept


def attacks(models, donor_zyx) -> dict:
    return {"ctgan-inject": lambda s, sites, lung: tamper_scan(s, sites, "inject", models["inject"], lung=lung)[0],
            "ctgan-remove": lambda s, sites, lung: tamper_scan(s, sites, "remove", models["remove"], lung=lung)[0],
            "copy-move": lambda s, sites, lung: tamper_scan(s, sites, "inject", method="copy-move", donor=s,
                                                            donor_zyx=donor_zyx, lung=lung)[0],
            "inpaint": lambda s, sites, lung: tamper_scan(s, sites, "remove", method="inpaint", lung=lung)[0]}


def check(scan, expected, key_expected, sites, keys=(KEY, WRONG)) -> dict:
    """Site scores with each key, and verify()'s findings with the right key."""
    lung = lung_mask(scan)
    out = {}
    for key in keys:
        ev = wm.evidence(scan, key, lung, key_expected[key])
        out[key] = [wm.site_score(ev, s) for s in sites]
        out[key + " 8mm"] = [wm.site_score(ev, s, SMALL_WINDOW_MM) for s in sites]
        if key == KEY:
            result = wm.verify(scan, key, lung, ev=ev)
            out["present"], out["findings"] = result.present, [f["voxel_zyx"] for f in result.findings]
            out["correlation"] = result.global_correlation
    return out


def near(findings, site, spacing, mm: float) -> bool:
    return any(np.linalg.norm(np.subtract(f, site) * spacing) <= mm for f in findings)


def run_scan(name, models, budget, n_sites, conditions, rows, summary):
    t0 = time.time()
    scan, uid = load_case(name)
    lung = lung_mask(scan)
    remove_at = removal_sites(name, scan, uid, lung, n_sites)
    inject_at = pick_sites(scan, n_sites, np.random.default_rng(0), lung, avoid_zyx=remove_at, allow_fewer=True)
    marked = wm.embed(scan, KEY, budget, lung)
    expected = {k: wm.expected_residual(scan.shape, k) for k in (KEY, WRONG)}
    change = marked.voxels.astype(np.int32) - scan.voxels.astype(np.int32)
    summary[name] = {"shape": list(scan.shape), "spacing_mm": list(scan.spacing), "inject_sites": inject_at,
                     "remove_sites": remove_at, "max_abs_change_hu": int(np.abs(change).max()),
                     "lung_rms_change_hu": float(np.sqrt(np.mean(change[lung].astype(float) ** 2))),
                     **{k: v for k, v in similarity(scan.voxels, marked.voxels, with_ssim=False).items()},
                     "clean": {}}
    donor = remove_at[0]
    for condition in conditions:
        kind, _, proc = condition.partition(":")
        transform = threats.TRANSFORMS[proc] if proc else (lambda s: s)
        start = transform(marked) if kind == "before" else marked
        untouched = transform(marked)
        all_sites = inject_at + remove_at
        negative = check(untouched, expected, expected, all_sites)
        summary[name]["clean"][condition] = {"present": negative["present"], "findings": len(negative["findings"]),
                                             "correlation": negative["correlation"]}
        for attack, fn in attacks(models, donor).items():
            sites = inject_at if attack in ("ctgan-inject", "copy-move") else remove_at
            if attack == "copy-move":
                sites = [s for s in sites if s != donor]
            if not sites:
                continue
            tampered = fn(start, sites, lung)
            if kind == "after":
                tampered = transform(tampered)
            positive = check(tampered, expected, expected, sites)
            for i, site in enumerate(sites):
                j = all_sites.index(site)
                rows.append({"scan": name, "condition": condition, "attack": attack, "site": list(site),
                             "changed_hu": float(np.abs(tampered.voxels[site].astype(float)
                                                        - marked.voxels[site].astype(float))),
                             "score_tampered": positive[KEY][i], "score_untouched": negative[KEY][j],
                             "wrong_key_tampered": positive[WRONG][i], "wrong_key_untouched": negative[WRONG][j],
                             "score8_tampered": positive[KEY + " 8mm"][i],
                             "score8_untouched": negative[KEY + " 8mm"][j],
                             "found": near(positive["findings"], site, scan.spacing, 12.0),
                             "false_findings": sum(not any(near([f], s, scan.spacing, 15.0) for s in sites)
                                                   for f in positive["findings"])})
        print(f"{name} {condition}: {time.time() - t0:.0f} s", flush=True)
    summary[name]["seconds"] = round(time.time() - t0, 1)


def auc(rows, field_pos, field_neg) -> dict:
    labels = [1] * len(rows) + [0] * len(rows)
    scores = [-r[field_pos] for r in rows] + [-r[field_neg] for r in rows]
    if not rows:
        return {}
    a = delong_auc(labels, scores)
    return {"auc": round(a.auc, 3), "ci95": [round(a.low, 3), round(a.high, 3)], "n_pos": len(rows),
            "n_neg": len(rows)}


def table(rows, conditions) -> dict:
    out = {}
    for condition in conditions:
        sel = [r for r in rows if r["condition"] == condition]
        entry = {"right_key": auc(sel, "score_tampered", "score_untouched"),
                 "wrong_key": auc(sel, "wrong_key_tampered", "wrong_key_untouched"),
                 "right_key_8mm_window": auc(sel, "score8_tampered", "score8_untouched"),
                 "found": f"{sum(r['found'] for r in sel)}/{len(sel)}",
                 "median_score_tampered": float(np.median([r["score_tampered"] for r in sel])),
                 "median_score_untouched": float(np.median([r["score_untouched"] for r in sel])),
                 "by_attack": {a: {**auc([r for r in sel if r["attack"] == a], "score_tampered", "score_untouched"),
                                   "found": f"{sum(r['found'] for r in sel if r['attack'] == a)}/"
                                            f"{sum(r['attack'] == a for r in sel)}",
                                   "median_score_tampered": float(np.median([r["score_tampered"] for r in sel
                                                                             if r["attack"] == a]))}
                               for a in sorted({r["attack"] for r in sel})}}
        out[condition] = entry
        print(f"{condition:28s} AUC {entry['right_key'].get('auc')} {entry['right_key'].get('ci95')} "
              f"8mm {entry['right_key_8mm_window'].get('auc')} wrong key {entry['wrong_key'].get('auc')} found {entry['found']} "
              f"score {entry['median_score_tampered']:.2f} vs {entry['median_score_untouched']:.2f} "
              + " ".join(f"{a}={v.get('auc')}" for a, v in entry["by_attack"].items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--scans", nargs="+", default=["lung1", "chest2", "synth0", "synth1"])
    parser.add_argument("--sites", type=int, default=2, help="sites per action and scan")
    parser.add_argument("--processing", nargs="*", default=PROCESSING)
    parser.add_argument("--name", default="protect_watermark")
    args = parser.parse_args()
    t0 = time.time()
    models = {a: load_tamper_model(BENCH / f"run_{a}") for a in ("inject", "remove")}
    conditions = ["none"] + [f"before:{p}" for p in args.processing] + [f"after:{p}" for p in args.processing]
    rows, summary = [], {}
    for name in args.scans:
        run_scan(name, models, args.budget, args.sites, conditions, rows, summary)
    out = {"budget_hu": args.budget, "key_note": "fixed benchmark key; wrong key = the trivial baseline",
           "models": {a: m.model_id for a, m in models.items()}, "scans": summary,
           "table": table(rows, conditions), "rows": rows, "total_seconds": round(time.time() - t0, 1),
           "machine": "2 shared CPU cores (wall clock)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=float))
    write_run_record(RESULTS, {k: str(v) for k, v in vars(args).items()}, 0, name=f"{args.name}.run.json")


if __name__ == "__main__":
    main()
