"""Quality of CT-GAN-style tampering, judged by two judges, with controls, on held-out scans.

    nice -n 10 .venv/bin/python benchmarks/tamper_quality.py [--work runs/bench_tamper] [--per-scan 6]

Scans: the 4 held-out synthetic scans of WORK/cohort_test and two real chest CTs that no tamperer was trained
on (benchmarks/tamper_train.py holds real scans out): lung1 (5 mm slices, one labelled nodule) and chest2
(TotalSegmentator's 1.5 mm contrast chest CT, no nodule label). Each real scan is summarised alone.

Judges, at each tampered place (a nodule "is there" within 5 mm): the CAD (`medfake.cad`, the pipeline uses it
to keep sites away from nodules) and `judges.core_shell`, a HU rule that shares no code with the tamperer or the
CAD. Both are first measured on untouched scans: false positives at random lung voxels, sensitivity on every
labelled nodule (synthetic solid, part-solid, ground-glass; lung1's).

Per scan:
- injection by CT-GAN at `--per-scan` sites by the `--auto` rules, twice: strict (4 mm vessel clearance never
  relaxed) and relaxed (as `--auto` does when too few places keep it); each row has its vessel clearance;
- copy-move injection at the strict sites, the donor a labelled nodule (synthetic: the next scan's largest
  non-ground-glass one; lung1: its own; chest2: lung1's), never chosen by a judge;
- removal of every labelled nodule by the CT-GAN remover and by classical in-painting with the label diameter;
- controls at the strict sites: null (the pipeline with an identity generator: judged "no nodule" by both),
  easy (a pasted 10 mm ball of 40 HU: judged "nodule" by both), hard paste (a sphere of the blend's middle
  radius copied without blending from a sphere wholly inside the lung ≥ 40 mm away: the seam measure must flag it). A failed control marks
  the whole run `"valid": false`.
Noise (independent of the pipeline's own σ target): `judges.noise_power`, a radial NPS after a per-slice quadratic
detrend the pipeline never uses, on 4 in-plane ROIs in the blend band (and, for removals, one at the centre), after
vs the untouched scan at the same place: σ ratio (√ of total power) and log-spectral distance; the untouched
site-vs-surroundings distance is the natural spread beside it. Seam: `judges.seam_profile` on 1 mm shells across
the whole fall-off band and at the hole face, after / before on calm voxels; flagged when any shell exceeds 1.5×.
Prints and saves benchmarks/results/tamper_quality.json and tamper_examples.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
NEAR_MM = 5.0  # a judge's "nodule here" radius
SEAM_FLAG = 1.5  # a shell whose gradient energy grows by more than this is a visible seam
EASY_BALL = (10.0, 40.0)  # diameter mm, HU
ROI_MM = 8.0  # side of each noise ROI
RANDOM_SITES = 100  # untouched random lung voxels per scan for the judges' false-positive rates
PREVIOUS = {  # the figures this benchmark replaces (commit 3d36f0a / 11c920e; CAD judge only, lung1 seen in
    # training, strict sites, noise σ by the pipeline's own noise_level)
    "source": "benchmarks/results/tamper_quality.json and tamper_quality_relaxed.json before #16",
    "strict": {"injection_success": 1.0, "injections": 24, "lung1_injection_success": 1.0, "lung1_injections": 6,
               "removal_success_of_detected": 1.0, "removals_detected_before": 7, "removals": 10,
               "seam_ratio_median": 1.006, "seam_within_10pct": 0.971, "noise_within_10pct": 0.75,
               "lung1_noise_within_10pct": 0.4, "seconds_per_location_median": 0.134, "command_s": 5.03},
    "relaxed": {"injection_success": 0.926, "injections": 27},
}


@dataclass
class Case:
    name: str
    group: str  # synthetic | lung1 | chest2
    scan: object
    nodules: list = field(default_factory=list)  # [(zyx, diameter_mm, type)]


# --- scans and labels ---------------------------------------------------------------------------------------
def load_cases(work: Path) -> list[Case]:
    from medfake.data.samples import sample_path
    from medfake.io import load_scan
    from medfake.tamper.run import label_nodules

    cases = []
    with (work / "cohort_test" / "nodules.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for path in sorted((work / "cohort_test").glob("*.nrrd")):
        key = path.name.split(".")[0]
        nodules = [((int(r["voxel_z"]), int(r["voxel_y"]), int(r["voxel_x"])), float(r["diameter_mm"]), r["type"])
                   for r in rows if r["seriesuid"] == key]
        cases.append(Case(key, "synthetic", load_scan(path), nodules))
    lung1 = load_scan(sample_path("lung1"))
    cases.append(Case("lung1", "lung1", lung1, [(z, d, "real") for z, d in label_nodules(lung1, sample_path("lung1_label"))]))
    cases.append(Case("chest2", "chest2", load_scan(sample_path("chest2"))))
    return cases


def donor_for(case: Case, cases: list[Case]):
    """Copy-move donor (scan, zyx) from the labels: the next synthetic scan's largest visible nodule, lung1's
    own nodule, lung1's nodule for chest2."""
    if case.group == "synthetic":
        synth = [c for c in cases if c.group == "synthetic"]
        donor = synth[(synth.index(case) + 1) % len(synth)]
    else:
        donor = next(c for c in cases if c.group == "lung1")
    pool = [n for n in donor.nodules if n[2] != "ground-glass"] or donor.nodules
    return donor.scan, max(pool, key=lambda n: n[1])[0]


# --- judges -----------------------------------------------------------------------------------------------
def verdicts(scan, found, zyx) -> dict:
    from medfake.cad import nodule_near
    from medfake.judges import core_shell

    cad = nodule_near(found, scan, zyx, NEAR_MM)
    return {"cad": cad is not None, "cad_mm": round(cad.diameter_mm, 1) if cad else None,
            "core_shell": core_shell(scan, zyx).present}


def judged_rows(before, found_before, after, lung, places, action) -> list[dict]:
    """Both judges before and after at each place; success: a nodule appears (inject) / disappears (remove)."""
    from medfake.cad import detect_nodules

    found_after = detect_nodules(after, lung)
    rows = []
    for zyx in places:
        b, a = verdicts(before, found_before, zyx), verdicts(after, found_after, zyx)
        row = {"zyx": [int(v) for v in zyx], "before": b, "after": a}
        for judge in ("cad", "core_shell"):
            row[f"{judge}_success"] = (a[judge] and not b[judge]) if action == "inject" else (b[judge] and not a[judge])
        rows.append(row)
    return rows


def judge_baseline(case: Case, found, lung, rng) -> dict:
    """Both judges on the untouched scan: at random lung voxels ≥ 20 mm from labelled nodules, and at each label."""
    points = np.argwhere(lung[:, ::4, ::4]) * [1, 4, 4]
    labels = np.array([n[0] for n in case.nodules] or [[-999, -999, -999]], float)
    d = np.min(np.linalg.norm((points[:, None] - labels[None]) * np.asarray(case.scan.spacing), axis=2), axis=1)
    far = points[d >= 20.0]
    pick = far[rng.choice(len(far), min(RANDOM_SITES, len(far)), replace=False)]
    random_rows = [verdicts(case.scan, found, p) for p in pick]
    labelled = [dict(verdicts(case.scan, found, z), diameter_mm=round(dm, 1), type=t) for z, dm, t in case.nodules]
    return {"random_sites": len(random_rows), "cad_candidates": len(found),
            "cad_fp_rate": _rate([r["cad"] for r in random_rows]),
            "core_shell_fp_rate": _rate([r["core_shell"] for r in random_rows]), "labelled": labelled}


# --- controls -----------------------------------------------------------------------------------------------
def identity_model(model):
    """The same pipeline model whose generator returns its input cube unchanged (the null control)."""
    from medfake.tamper.model import TamperModel

    class Identity(TamperModel):
        def inpaint_views(self, cube_hu, n_views):
            return np.repeat(np.asarray(cube_hu, np.float32)[None], n_views, axis=0)

    return Identity(model.config, model.generator, model.equalizer, "identity", dict(model.info))


def sphere(scan, zyx, radius_mm):
    """(slices, bool mask) of the voxels within radius_mm of zyx (clipped to the scan)."""
    half = np.ceil(radius_mm / np.asarray(scan.spacing)).astype(int)
    lo, hi = np.maximum(np.asarray(zyx) - half, 0), np.minimum(np.asarray(zyx) + half + 1, scan.shape)
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, zyx, scan.spacing)]
    grid = np.meshgrid(*axes, indexing="ij")
    return tuple(slice(a, b) for a, b in zip(lo, hi)), np.sqrt(sum(g * g for g in grid)) <= radius_mm


def easy_control(scan, sites):
    voxels = np.asarray(scan.voxels, np.float32).copy()
    for zyx in sites:
        sl, ball = sphere(scan, zyx, EASY_BALL[0] / 2)
        voxels[sl][ball] = EASY_BALL[1]
    return scan.with_voxels(voxels.astype(scan.voxels.dtype))


def hard_paste_control(scan, sites, lung, radius_mm, rng):
    """Each site's sphere replaced, without blending, by a sphere of lung ≥ 40 mm away that lies wholly inside the
    lung mask (parenchyma and vessels, never chest wall: the seam must be found in lung texture)."""
    voxels = np.asarray(scan.voxels, np.float32).copy()
    points = np.argwhere(lung[:, ::4, ::4]) * [1, 4, 4]
    for zyx in sites:
        sl, ball = sphere(scan, zyx, radius_mm)
        far = points[np.linalg.norm((points - zyx) * np.asarray(scan.spacing), axis=1) >= 40.0]
        for source in far[rng.permutation(len(far))]:
            src_sl, src_ball = sphere(scan, source, radius_mm)
            if src_ball.shape == ball.shape and lung[src_sl][src_ball].all():
                voxels[sl][ball] = np.asarray(scan.voxels[src_sl], np.float32)[ball]
                break
    return scan.with_voxels(voxels.astype(scan.voxels.dtype))


# --- noise and seam ----------------------------------------------------------------------------------------
def band_nps(scan, zyx, offset_mm):
    """Mean NPS of 4 in-plane ROIs centred offset_mm from the site (one at the site when offset is 0)."""
    from medfake.judges import noise_power

    steps = [(0, 0)] if offset_mm == 0 else [(1, 0), (-1, 0), (0, 1), (0, -1)]
    centres = [(zyx[0], int(round(zyx[1] + dy * offset_mm / scan.spacing[1])),
                int(round(zyx[2] + dx * offset_mm / scan.spacing[2]))) for dy, dx in steps]
    side = max(ROI_MM, 8 * scan.spacing[1])
    slices = max(1, min(3, int(round(3.0 / scan.spacing[0]))))
    return np.mean([noise_power(scan, c, size_mm=side, slices=slices, bins=4) for c in centres], axis=0)


def texture(before, after, zyx, band_mm, centre: bool) -> dict:
    from medfake.judges import spectral_distance

    """Band: after vs the untouched scan at the same ROIs. Centre (removals, where the untouched scan had the
    nodule): after vs the untouched surroundings (ROIs 25 mm out)."""
    around_b, around_a = band_nps(before, zyx, 25.0), band_nps(after, zyx, 25.0)
    b, a = band_nps(before, zyx, band_mm), band_nps(after, zyx, band_mm)
    out = {"band": {"sigma_ratio": round(float(np.sqrt(a.sum() / b.sum())), 3),
                    "distance_vs_untouched": round(spectral_distance(a, b), 3),
                    "distance_vs_around_after": round(spectral_distance(a, around_a), 3),
                    "distance_vs_around_before": round(spectral_distance(b, around_b), 3)}}
    if centre:
        c = band_nps(after, zyx, 0.0)
        out["centre"] = {"sigma_ratio": round(float(np.sqrt(c.sum() / around_b.sum())), 3),
                         "distance_vs_untouched": round(spectral_distance(c, around_b), 3),
                         "distance_vs_around_after": round(spectral_distance(c, around_a), 3),
                         "distance_vs_around_before": None}
    return out


def seam(before, after, zyx, band, face_mm) -> dict:
    from medfake.judges import seam_profile

    radii = sorted(set(np.round(np.arange(band[0], band[1] + 1.01, 1.0), 1)) | {round(face_mm, 1)})
    profile = seam_profile(before, after, zyx, radii)
    face = float(profile[radii.index(round(face_mm, 1))])
    return {"radii_mm": [float(r) for r in radii], "profile": [round(float(p), 3) for p in profile],
            "max": round(float(profile.max()), 3), "min": round(float(profile.min()), 3),
            "hole_face": round(face, 3), "flagged": bool(profile.max() > SEAM_FLAG)}


def measured(before, after, rows, band, face_mm, centre=False) -> list[dict]:
    for row in rows:
        row["seam"] = seam(before, after, row["zyx"], band, face_mm)
        row["noise"] = texture(before, after, row["zyx"], (band[0] + band[1]) / 2, centre)
    return rows


# --- one scan ------------------------------------------------------------------------------------------------
def vessel_clearance_mm(scan, lung, zyx, reach_mm=8.0) -> float:
    sl, ball = sphere(scan, zyx, reach_mm)
    dense = (np.asarray(scan.voxels[sl]) > -600) & lung[sl] & ball
    if not dense.any():
        return reach_mm
    grid = np.argwhere(dense) - (np.asarray(zyx) - [s.start for s in sl])
    return round(float(np.min(np.linalg.norm(grid * np.asarray(scan.spacing), axis=1))), 1)


def evaluate_case(case: Case, cases, inj, rem, per_scan: int, seed: int, examples: list) -> dict:
    from medfake.cad import detect_nodules
    from medfake.lungmask import lung_mask
    from medfake.tamper.classical import EDGE_MM, MARGIN_MM, nodule_radius_mm
    from medfake.tamper.pipeline import Site, blend_radii, tamper_scan
    from medfake.tamper.sites import pick_sites

    rng = np.random.default_rng(seed)
    scan, band = case.scan, blend_radii(inj)
    face = inj.config.hole / 2 * inj.config.iso_spacing
    lung = lung_mask(scan)
    found = detect_nodules(scan, lung)
    out = {"scan": case.name, "group": case.group, "shape": list(scan.shape), "spacing": list(scan.spacing),
           "judges_untouched": judge_baseline(case, found, lung, rng)}
    avoid = [n[0] for n in case.nodules] + [f.center_zyx for f in found]
    strict = pick_sites(scan, per_scan, rng, lung, avoid_zyx=avoid, avoid_mm=20.0, allow_fewer=True, relax=False)
    relaxed = pick_sites(scan, per_scan, rng, lung, avoid_zyx=avoid, avoid_mm=20.0, allow_fewer=True, relax=True)
    timing = {}

    def inject(sites, model, key, method="ctgan", **kw):
        t = time.perf_counter()
        after, _ = tamper_scan(scan, sites, "inject", model, method, np.random.default_rng(seed), lung, **kw)
        timing[key] = round(  # per-scan set-up (noise model) included
            (time.perf_counter() - t) / max(len(sites), 1), 3)
        rows = measured(scan, after, judged_rows(scan, found, after, lung, sites, "inject"), band, face)
        for row in rows:
            row["vessel_clearance_mm"] = vessel_clearance_mm(scan, lung, row["zyx"])
        return after, rows

    if strict:
        injected, out["inject_strict"] = inject(strict, inj, "inject_s_per_site")
        examples.append((f"inject {case.name}", scan, injected, strict[0]))
        _, out["inject_relaxed"] = inject(relaxed, inj, "inject_relaxed_s_per_site") if relaxed else (None, [])
        donor, donor_zyx = donor_for(case, cases)
        moved, out["inject_copy_move"] = inject(strict, None, "copy_move_s_per_site", "copy-move", donor=donor,
                                                donor_zyx=donor_zyx)
        radius = nodule_radius_mm(donor, donor_zyx)  # copy-move blends from this radius to radius + EDGE_MM
        measured(scan, moved, out["inject_copy_move"], (radius, radius + EDGE_MM), radius + EDGE_MM)
        for row in out["inject_copy_move"]:
            row["donor"] = {"scan": str(donor.path), "zyx": [int(v) for v in donor_zyx], "radius_mm": round(radius, 1)}
        _, out["control_null"] = inject(strict, identity_model(inj), "null_s_per_site")
        easy = easy_control(scan, strict)
        out["control_easy"] = measured(scan, easy, judged_rows(scan, found, easy, lung, strict, "inject"), band, face)
        hard = hard_paste_control(scan, strict, lung, (band[0] + band[1]) / 2, rng)
        out["control_hard_paste"] = measured(scan, hard, [{"zyx": list(s)} for s in strict], band, face)
        examples.append((f"hard paste {case.name}", scan, hard, strict[0]))
    if case.nodules:
        sites = [Site(tuple(z), "table", d) for z, d, _ in case.nodules]
        places = [n[0] for n in case.nodules]
        t = time.perf_counter()
        removed, _ = tamper_scan(scan, sites, "remove", rem, "ctgan", np.random.default_rng(seed), lung)
        timing["remove_s_per_site"] = round((time.perf_counter() - t) / len(sites), 3)
        rem_band, rem_face = blend_radii(rem), rem.config.hole / 2 * rem.config.iso_spacing
        out["remove_ctgan"] = measured(scan, removed, judged_rows(scan, found, removed, lung, places, "remove"),
                                       rem_band, rem_face, centre=True)
        inpainted, _ = tamper_scan(scan, sites, "remove", None, "inpaint", np.random.default_rng(seed), lung)
        out["remove_inpaint"] = judged_rows(scan, found, inpainted, lung, places, "remove")
        for row, (_, diameter, _) in zip(out["remove_inpaint"], case.nodules):
            inner = diameter / 2 + MARGIN_MM  # in-painted out to inner + EDGE_MM, blended in between
            measured(scan, inpainted, [row], (inner, inner + EDGE_MM), inner + EDGE_MM, centre=True)
        for key in ("remove_ctgan", "remove_inpaint"):
            for row, (_, diameter, kind) in zip(out[key], case.nodules):
                row.update(diameter_mm=round(diameter, 1), type=kind)
        if case.group != "synthetic" or len(examples) < 6:
            examples += [(f"remove ctgan {case.name}", scan, removed, places[0]),
                         (f"remove inpaint {case.name}", scan, inpainted, places[0])]
    out["seconds"] = timing
    return out


# --- summaries -----------------------------------------------------------------------------------------------
def _rate(values) -> float | None:
    values = [bool(v) for v in values]
    return round(float(np.mean(values)), 3) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return round(float(np.median(values)), 3) if values else None


def judged(rows: list[dict], action: str) -> dict:
    out = {"n": len(rows)}
    for judge in ("cad", "core_shell"):
        if action == "inject":
            out[f"{judge}_success"] = _rate(r[f"{judge}_success"] for r in rows)
        else:
            seen = [r for r in rows if r["before"][judge]]
            out[f"{judge}_seen_before"] = len(seen)
            out[f"{judge}_success_of_seen"] = _rate(r[f"{judge}_success"] for r in seen)
            out[f"{judge}_absent_after"] = _rate(not r["after"][judge] for r in rows)
    out["both_success"] = _rate(r["cad_success"] and r["core_shell_success"] for r in rows)
    out["judges_agree_after"] = _rate(r["after"]["cad"] == r["after"]["core_shell"] for r in rows)
    return out


def quality(rows: list[dict]) -> dict:
    """Seam and noise medians of rows that carry them."""
    rows = [r for r in rows if "seam" in r]
    if not rows:
        return {}
    out = {"seam_max_median": _median(r["seam"]["max"] for r in rows),
           "seam_hole_face_median": _median(r["seam"]["hole_face"] for r in rows),
           "seam_flagged": _rate(r["seam"]["flagged"] for r in rows)}
    for where in ("band", "centre"):
        noise = [r["noise"][where] for r in rows if where in r["noise"]]
        if noise:
            out[f"noise_{where}"] = {
                "sigma_ratio_median": _median(n["sigma_ratio"] for n in noise),
                "sigma_within_10pct": _rate(abs(n["sigma_ratio"] - 1) <= 0.10 for n in noise),
                "distance_vs_untouched_median": _median(n["distance_vs_untouched"] for n in noise),
                "distance_vs_around_after_median": _median(n["distance_vs_around_after"] for n in noise),
                "distance_vs_around_before_median": _median(n["distance_vs_around_before"] for n in noise)}
    return out


ROWS = ("inject_strict", "inject_relaxed", "inject_copy_move", "remove_ctgan", "remove_inpaint",
        "control_null", "control_easy", "control_hard_paste")


def summarize(scans: list[dict]) -> dict:
    pick = lambda key: [r for s in scans for r in s.get(key, [])]
    untouched = [s["judges_untouched"] for s in scans]
    labelled = [r for u in untouched for r in u["labelled"]]
    out = {"scans": [s["scan"] for s in scans], "judges_untouched": {
        "random_sites": sum(u["random_sites"] for u in untouched),
        "cad_fp_rate": _pooled_rate(untouched, "cad_fp_rate"),
        "core_shell_fp_rate": _pooled_rate(untouched, "core_shell_fp_rate"),
        "labelled_nodules": len(labelled),
        "cad_sensitivity": _rate(r["cad"] for r in labelled),
        "core_shell_sensitivity": _rate(r["core_shell"] for r in labelled),
        "by_type": {t: {"n": sum(r["type"] == t for r in labelled),
                        "cad": _rate(r["cad"] for r in labelled if r["type"] == t),
                        "core_shell": _rate(r["core_shell"] for r in labelled if r["type"] == t)}
                    for t in sorted({r["type"] for r in labelled})}}}
    for key in ROWS:
        rows = pick(key)
        if not rows:
            continue
        action = "remove" if key.startswith("remove") else "inject"
        out[key] = (judged(rows, action) if "before" in rows[0] else {"n": len(rows)}) | quality(rows)
    relaxed = [r for r in pick("inject_relaxed") if r["vessel_clearance_mm"] < 4.0]
    if "inject_relaxed" in out:
        out["inject_relaxed"]["below_4mm_clearance"] = len(relaxed)
        out["inject_relaxed"]["below_4mm"] = judged(relaxed, "inject") if relaxed else None
    seconds = [s["seconds"] for s in scans]
    out["seconds_per_site_median"] = {k: _median(t.get(k) for t in seconds) for k in
                                      ("inject_s_per_site", "remove_s_per_site", "copy_move_s_per_site")}
    return out


def _pooled_rate(untouched, key) -> float | None:
    """Pooled rate over every random site of these scans."""
    hits = sum((u[key] or 0) * u["random_sites"] for u in untouched)
    total = sum(u["random_sites"] for u in untouched)
    return round(hits / total, 3) if total else None


def control_failures(scan: dict) -> list[str]:
    fails = []
    for r in scan.get("control_null", []):
        fails += [f"{scan['scan']} null control judged 'nodule' by {j} at {r['zyx']}"
                  for j in ("cad", "core_shell") if r["after"][j]]
    for r in scan.get("control_easy", []):
        fails += [f"{scan['scan']} easy control (uniform ball) missed by {j} at {r['zyx']}"
                  for j in ("cad", "core_shell") if not r["after"][j]]
    fails += [f"{scan['scan']} hard paste not flagged by the seam measure at {r['zyx']} (max {r['seam']['max']})"
              for r in scan.get("control_hard_paste", []) if not r["seam"]["flagged"]]
    return fails


# --- figure and command timing ----------------------------------------------------------------------------------
def save_examples(examples, path: Path) -> None:
    from medfake.render import add_caption, orthogonal_views, save_png
    from medfake.scan import Scan

    rows = []
    for title, before, after, zyx in examples:
        reach = np.ceil(40.0 / np.asarray(before.spacing)).astype(int)
        lo = np.maximum(np.asarray(zyx) - reach, 0)
        sl = tuple(slice(a, a + 2 * r + 1) for a, r in zip(lo, reach))
        pair = [add_caption(orthogonal_views(Scan(np.asarray(s.voxels[sl]), s.spacing, direction=s.direction),
                                             np.asarray(zyx) - lo, window="lung", max_size=200),
                            f"{title} {label} z,y,x {list(map(int, zyx))}")
                for label, s in (("before", before), ("after", after))]
        height = max(p.shape[0] for p in pair)
        rows.append(np.concatenate([np.pad(p, ((0, height - p.shape[0] + 4), (0, 4), (0, 0))) for p in pair], 1))
    width = max(r.shape[1] for r in rows)
    save_png(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]), path)


def command_timing(work: Path, inj_run: Path, scratch: Path) -> dict:
    """Whole `medfake tamper` on a 512x512x64 DICOM series vs the I/O floor, best of two."""
    from medfake.data.synth import synth_chest_ct
    from medfake.io import save_scan

    series = scratch / "dicom512"
    if not series.exists():
        scan, _ = synth_chest_ct(7, n_xy=512, max_slices=64, slice_mm=2.5)
        save_scan(scan, series, format="dicom")
    floor_code = ("import sys; from medfake.io import load_scan, save_scan; "
                  "save_scan(load_scan(sys.argv[1]), sys.argv[2], format='dicom')")
    runs = {"tamper": [], "io_floor": []}
    for k in range(2):
        out = scratch / f"cmd_out_{k}_{os.getpid()}"
        t = time.perf_counter()
        subprocess.run([str(Path(PY).parent / "medfake"), "tamper", "-t", str(series), "-d", str(out), "-a", "inject",
                        "-c", "32,300,150", "--model", str(inj_run)], check=True, capture_output=True)
        runs["tamper"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([PY, "-c", floor_code, str(series), str(out / "floor")], check=True, capture_output=True)
        runs["io_floor"].append(time.perf_counter() - t)
    return {"series": "512x512x64 DICOM, one user location", **{f"{k}_s": round(min(v), 2) for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_tamper"), help="tamper_train.py's folder")
    parser.add_argument("--models", type=Path, default=None, help="folder with run_inject, run_remove (default: WORK)")
    parser.add_argument("--per-scan", type=int, default=6, help="injection sites per scan (strict and relaxed)")
    parser.add_argument("--scans", type=str, default=None, help="comma-separated scan names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-command", action="store_true", help="skip the 512x512x64 DICOM command timing")
    parser.add_argument("--name", type=str, default="tamper_quality", help="result file stem")
    args = parser.parse_args()
    import torch

    from medfake.runinfo import write_run_record
    from medfake.tamper.model import load_tamper_model

    torch.set_num_threads(1)
    models = args.models or args.work
    RESULTS.mkdir(exist_ok=True)  # the record first: the commit the code ran from, before any result is written
    write_run_record(RESULTS, vars(args) | {"work": str(args.work), "models": str(models)}, args.seed,
                     name=f"{args.name}.run.json")
    inj, rem = load_tamper_model(models / "run_inject", "inject"), load_tamper_model(models / "run_remove", "remove")
    cases = load_cases(args.work)
    chosen = [c for c in cases if args.scans is None or c.name in args.scans.split(",")]
    load, scans, examples, start = [os.getloadavg()], [], [], time.time()
    for k, case in enumerate(chosen):
        scans.append(evaluate_case(case, cases, inj, rem, args.per_scan, args.seed + k, examples))
        print(json.dumps({"scan": case.name, "minutes": round((time.time() - start) / 60, 1),
                          **summarize([scans[-1]])}, default=float), flush=True)
    load.append(os.getloadavg())
    failures = [f for s in scans for f in control_failures(s)]
    groups = {g: summarize([s for s in scans if s["group"] == g]) for g in ("synthetic", "lung1", "chest2")
              if any(s["group"] == g for s in scans)}
    result = {"benchmark": "tamper_quality", "valid": not failures, "control_failures": failures,
              "models": {"inject": inj.model_id, "remove": rem.model_id, "trained_on": "synthetic scans only "
                         "(real scans held out: tamper_train.json)"},
              "conditions": {"per_scan": args.per_scan, "views": "pipeline default (inject 4, remove 1)",
                             "blend_mm": "pipeline default (hole/2 - 1, hole/2 + 3)", "near_mm": NEAR_MM,
                             "seam_flag": SEAM_FLAG, "easy_ball": {"diameter_mm": EASY_BALL[0], "hu": EASY_BALL[1]},
                             "noise_roi_mm": ROI_MM, "random_sites_per_scan": RANDOM_SITES},
              **groups, "all_real": summarize([s for s in scans if s["group"] != "synthetic"]) if len(groups) > 1 else None,
              "targets": {"injection_success": 0.95, "removal_success": 0.95, "seam_and_noise_within": 0.10,
                          "seconds_per_location": 0.3, "command_512x512x64_s": 3.0},
              "previous": PREVIOUS, "scans": scans, "load_avg": load, "cpus": os.cpu_count(), "torch_threads": 1,
              "minutes": round((time.time() - start) / 60, 1)}
    if not args.skip_command:
        result["command"] = command_timing(args.work, models / "run_inject", Path("runs") / "tamper_quality_scratch")
    save_examples(examples, RESULTS / f"{args.name.replace('quality', 'examples')}.png")
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: v for k, v in result.items() if k not in ("scans", "previous")}, indent=1, default=float))
    if failures:
        print("\n" + "!" * 72 + "\nINVALID RUN: a control failed\n" + "\n".join(failures) + "\n" + "!" * 72,
              file=sys.stderr)


if __name__ == "__main__":
    main()
