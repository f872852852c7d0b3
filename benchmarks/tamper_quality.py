"""Quality and speed of CT-GAN-style tampering with the cpu-small models of benchmarks/tamper_train.py.

    .venv/bin/python benchmarks/tamper_quality.py [--work runs/bench_tamper] [--per-scan 3]

On held-out synthetic scans and on lung1 (not in the remover's training data), injecting at up to
--per-scan automatic sites that keep the full clearances of `--auto` (4 mm from vessels, 15 mm from the
pleura; never relaxed, so a crowded scan gets fewer sites; `--relax-sites` relaxes like --auto):
- injection success: the CAD finds a nodule within 5 mm of the site after, and none before;
- removal success: the CAD found the nodule before and finds none within 5 mm after; the mean HU in the old
  nodule (ball of its diameter; lung1: its label) is back near the scan's parenchyma mean;
- seams: gradient energy |∇HU|² on the shell (±1.5 mm) around the pasted region's border (the blend's outer
  radius), after / before (the same place untouched);
- noise: robust σ of the high-pass residual in flat parenchyma (≥ 2 mm from anything brighter than −750 HU)
  inside the fully in-painted ball, after / before tampering on the same voxels (target within 10%); beside
  it the same σ inside vs on a 16-26 mm ring, after and before (the untouched scan's own spread);
- time: tamper compute per location, and the whole `medfake tamper` command on a 512²×64 DICOM series,
  with the I/O floor (load + write the same series, same interpreter start-up) and `import torch` beside it.
Prints and saves benchmarks/results/tamper_quality.json and tamper_examples.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BLEND = None  # (inner, outer) mm; None = the pipeline default
VIEWS = None  # generator views per location; None = the pipeline default per action
RELAX_SITES = False  # True: injection sites may sit next to vessels when too few places keep 4 mm (as --auto)
SEAM_SHELL_MM = 1.5  # half-width of the shell around the blend's outer radius
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable


def ball(scan, zyx, r_lo: float, r_hi: float, reach_mm: float = 30.0):
    """(slices, mask) of voxels whose distance (mm) from zyx lies in [r_lo, r_hi]."""
    spacing = np.asarray(scan.spacing)
    reach = np.ceil(reach_mm / spacing).astype(int)
    lo = np.maximum(np.asarray(zyx) - reach, 0)
    hi = np.minimum(np.asarray(zyx) + reach + 1, scan.shape)
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, zyx, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    d = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), (d >= r_lo) & (d <= r_hi)


def gradient_energy(voxels, spacing, sl, mask) -> float:
    block = np.asarray(voxels[sl], dtype=np.float32)
    grads = np.gradient(block, *spacing)
    return float(np.mean(sum(g ** 2 for g in grads)[mask]))


def noise_sigmas(before, after, spacing, zyx, scan, inner_mm: float) -> dict:
    """Robust σ of the high-pass residual in flat parenchyma (≥ 2 mm from anything brighter than −750 HU, in
    both versions) inside the fully in-painted ball (≤ inner_mm) and on the ring 16-26 mm around it, before
    and after tampering. Comparing the same voxels before and after takes anatomy and the scanner's
    non-stationary noise out of the measure."""
    from medfake.tamper.noise import flat_parenchyma, noise_level

    sl, inner = ball(scan, zyx, 0.0, inner_mm)
    _, ring = ball(scan, zyx, 16.0, 26.0)
    b, a = (np.asarray(v[sl], dtype=np.float32) for v in (before, after))
    flat = flat_parenchyma(b, spacing) & flat_parenchyma(a, spacing)
    level = lambda block, where: noise_level(block, spacing, where & flat) or float("nan")
    return {"inside_before": level(b, inner), "inside_after": level(a, inner),
            "ring_before": level(b, ring), "ring_after": level(a, ring)}


def location_metrics(before, after, zyx, blend_mm, sigma: float) -> dict:
    """Seam: gradient energy on the shell around the pasted region's border (the blend's outer radius),
    after / before (the same anatomy untouched). Noise: see noise_sigmas."""
    spacing = before.spacing
    sl, shell = ball(before, zyx, blend_mm[1] - SEAM_SHELL_MM, blend_mm[1] + SEAM_SHELL_MM)
    seam = gradient_energy(after.voxels, spacing, sl, shell) / gradient_energy(before.voxels, spacing, sl, shell)
    n = noise_sigmas(before.voxels, after.voxels, spacing, zyx, before, blend_mm[0])
    return {"seam_ratio": round(seam, 3),
            "noise_after_vs_before": round(n["inside_after"] / n["inside_before"], 3),
            "noise_inside_vs_ring_after": round(n["inside_after"] / n["ring_after"], 3),
            "noise_inside_vs_ring_before": round(n["inside_before"] / n["ring_before"], 3),
            "noise_inside_vs_scan_after": round(n["inside_after"] / sigma, 3)}


def timed_sites(scan, sites, action, model, lung, rng):
    """tamper_scan's steps with clocks: per-scan setup (noise model) and per-location compute."""
    from medfake.tamper.config import DEFAULT_VIEWS
    from medfake.tamper.pipeline import Context, _like_input, as_sites, blend_radii, ctgan_site, parenchyma_noise

    sites = as_sites(scan, sites)
    t = time.perf_counter()
    views = VIEWS or DEFAULT_VIEWS[action]
    context = Context(parenchyma_noise(scan, lung, model, sites, rng), rng, BLEND or blend_radii(model), views)
    setup = time.perf_counter() - t
    voxels, per_site = np.asarray(scan.voxels, dtype=np.float32), []
    for site in sites:
        t = time.perf_counter()
        voxels = ctgan_site(scan.with_voxels(voxels), site, action, model, context)
        per_site.append(time.perf_counter() - t)
    return scan.with_voxels(_like_input(voxels, scan.voxels)), setup, per_site, context.noise.sigma


def evaluate_scan(name, scan, nodules, inj, rem, per_scan, rng, examples):
    """nodules: [(zyx, diameter_mm, mask or None)]"""
    from medfake.cad import detect_nodules, nodule_near
    from medfake.lungmask import lung_mask, lung_parenchyma
    from medfake.tamper.sites import pick_sites

    from medfake.tamper.pipeline import blend_radii

    radii = BLEND or blend_radii(inj)
    lung = lung_mask(scan)
    parenchyma_hu = float(np.mean(scan.voxels[lung_parenchyma(scan, lung)]))
    found_before = detect_nodules(scan, lung)
    out = {"scan": name, "parenchyma_hu": round(parenchyma_hu, 1), "inject": [], "remove": []}
    avoid = [n[0] for n in nodules] + [f.center_zyx for f in found_before]
    sites = pick_sites(scan, per_scan, rng, lung, avoid_zyx=avoid, avoid_mm=15.0, allow_fewer=True, relax=RELAX_SITES)
    if not sites:
        injected, setup, times, sigma = scan, 0.0, [], float("nan")
    else:
        injected, setup, times, sigma = timed_sites(scan, sites, "inject", inj, lung, rng)
    found_after = detect_nodules(injected, lung)
    for site, seconds in zip(sites, times):
        hit = nodule_near(found_after, scan, site, 5.0)
        row = {"zyx": list(site), "before": nodule_near(found_before, scan, site, 5.0) is not None,
               "after": hit is not None, "diameter_mm": round(hit.diameter_mm, 1) if hit else None,
               "seconds": round(seconds, 3), **location_metrics(scan, injected, site, radii, sigma)}
        row["success"] = row["after"] and not row["before"]
        out["inject"].append(row)
    out["inject_setup_s"] = round(setup, 3)
    if sites and sum(e[0] == "inject" for e in examples) < 2:
        examples.append(("inject", name, scan, injected, sites[0]))
    targets = [n for n in nodules if 5.0 <= n[1] <= 18.0]
    if targets:
        removed, setup, times, sigma = timed_sites(scan, [n[0] for n in targets], "remove", rem, lung, rng)
        found_after = detect_nodules(removed, lung)
        for (zyx, diameter, mask), seconds in zip(targets, times):
            if mask is None:
                sl, inner = ball(scan, zyx, 0.0, diameter / 2)
            else:
                sl, inner = (slice(None),) * 3, mask
            row = {"zyx": list(zyx), "diameter_mm": round(diameter, 1),
                   "before": nodule_near(found_before, scan, zyx, 5.0) is not None,
                   "after": nodule_near(found_after, scan, zyx, 5.0) is not None,
                   "mask_hu_before": round(float(scan.voxels[sl][inner].mean()), 1),
                   "mask_hu_after": round(float(removed.voxels[sl][inner].mean()), 1),
                   "seconds": round(seconds, 3), **location_metrics(scan, removed, zyx, radii, sigma)}
            row["hu_back_to_parenchyma"] = row["mask_hu_after"] - parenchyma_hu < 100.0
            row["success"] = row["before"] and not row["after"] and row["hu_back_to_parenchyma"]
            out["remove"].append(row)
        out["remove_setup_s"] = round(setup, 3)
        if sum(e[0] == "remove" for e in examples) < 2 or name == "lung1":
            examples.append(("remove", name, scan, removed, targets[0][0]))
    return out


def command_timing(work: Path, inj_run: Path) -> dict:
    """Whole `medfake tamper` on a 512x512x64 DICOM series vs the I/O floor, best of two."""
    from medfake.data.synth import synth_chest_ct
    from medfake.io import load_scan, save_scan
    from medfake.lungmask import lung_mask
    from medfake.tamper.sites import pick_sites

    series = work / "dicom512"
    if not series.exists():
        scan, _ = synth_chest_ct(7, n_xy=512, max_slices=64, slice_mm=2.5)
        save_scan(scan, series, format="dicom")
    scan = load_scan(series)
    site = pick_sites(scan, 1, np.random.default_rng(0), lung_mask(scan))[0]
    coord = ",".join(map(str, site))
    floor_code = ("import sys; from medfake.io import load_scan, save_scan; "
                  "save_scan(load_scan(sys.argv[1]), sys.argv[2], format='dicom')")
    runs = {"tamper": [], "io_floor": [], "import_torch": []}
    for k in range(2):
        out = work / f"cmd_out_{k}_{os.getpid()}"
        t = time.perf_counter()
        subprocess.run([str(Path(PY).parent / "medfake"), "tamper", "-t", str(series), "-d", str(out), "-a", "inject",
                        "-c", coord, "--model", str(inj_run)], check=True, capture_output=True)
        runs["tamper"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([PY, "-c", floor_code, str(series), str(out / "floor")], check=True, capture_output=True)
        runs["io_floor"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([PY, "-c", "import torch"], check=True, capture_output=True)
        runs["import_torch"].append(time.perf_counter() - t)
    return {"series_shape": list(scan.shape), **{f"{k}_s": round(min(v), 2) for k, v in runs.items()}}


def save_examples(examples, path: Path) -> None:
    from medfake.render import add_caption, orthogonal_views, save_png
    from medfake.scan import Scan

    rows = []
    for action, name, before, after, zyx in examples:
        reach = np.ceil(40.0 / np.asarray(before.spacing)).astype(int)
        lo = np.maximum(np.asarray(zyx) - reach, 0)
        sl = tuple(slice(a, a + 2 * r + 1) for a, r in zip(lo, reach))
        local = np.asarray(zyx) - lo
        pair = []
        for label, scan in (("before", before), ("after", after)):
            crop = Scan(np.asarray(scan.voxels[sl]), scan.spacing, direction=scan.direction)
            pair.append(add_caption(orthogonal_views(crop, local, window="lung", max_size=220),
                                    f"{action} {name} {label} z,y,x {list(map(int, zyx))}"))
        width = max(p.shape[1] for p in pair)
        rows += [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in pair]
    width = max(r.shape[1] for r in rows)
    save_png(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]), path)


def summarize(scans: list[dict]) -> dict:
    inj = [r for s in scans for r in s["inject"]]
    rem = [r for s in scans for r in s["remove"]]
    seen = [r for r in rem if r["before"]]
    both = inj + rem
    finite = lambda v: [x for x in v if x == x]
    median = lambda rows, k: round(float(np.median(finite([r[k] for r in rows]))), 3)
    within = lambda v, tol: float(np.mean([abs(x - 1) <= tol for x in finite(v)])) if finite(v) else float("nan")
    return {
        "injection_success": round(float(np.mean([r["success"] for r in inj])), 3), "injections": len(inj),
        "removal_success_of_detected": round(float(np.mean([r["success"] for r in seen])), 3) if seen else None,
        "removals_detected_before": len(seen), "removals": len(rem),
        "removal_cad_gone_all": round(float(np.mean([not r["after"] for r in rem])), 3) if rem else None,
        "removal_hu_back_all": round(float(np.mean([r["hu_back_to_parenchyma"] for r in rem])), 3) if rem else None,
        "seam_ratio_median": round(float(np.median([r["seam_ratio"] for r in both])), 3),
        "seam_within_10pct": round(within([r["seam_ratio"] for r in both], 0.10), 3),
        "noise_after_vs_before_median": median(both, "noise_after_vs_before"),
        "noise_within_10pct": round(within([r["noise_after_vs_before"] for r in both], 0.10), 3),
        "noise_measured": len(finite([r["noise_after_vs_before"] for r in both])),
        "noise_inside_vs_ring_after_median": median(both, "noise_inside_vs_ring_after"),
        "noise_inside_vs_ring_within_10pct_after": round(within([r["noise_inside_vs_ring_after"] for r in both], 0.10), 3),
        "noise_inside_vs_ring_within_10pct_before": round(within([r["noise_inside_vs_ring_before"] for r in both], 0.10), 3),
        "seconds_per_location_median": round(float(np.median([r["seconds"] for r in both])), 3),
        "seconds_per_location_max": round(float(np.max([r["seconds"] for r in both])), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_tamper"))
    parser.add_argument("--per-scan", type=int, default=3, help="injections per scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-command", action="store_true", help="skip the 512x512x64 DICOM command timing")
    parser.add_argument("--blend", type=str, default=None, help="inner,outer blend radii in mm (default: pipeline's)")
    parser.add_argument("--views", type=int, default=None, help="views per location (default: pipeline's)")
    parser.add_argument("--relax-sites", action="store_true",
                        help="let sites come closer to vessels when too few keep the clearance (what --auto does)")
    parser.add_argument("--name", type=str, default="tamper_quality", help="result file stem")
    args = parser.parse_args()
    global BLEND, VIEWS, RELAX_SITES
    VIEWS, RELAX_SITES = args.views, args.relax_sites
    BLEND = tuple(float(v) for v in args.blend.split(",")) if args.blend else None
    import torch

    from medfake.data.samples import sample_path
    from medfake.data.cohort import scan_paths, scan_key
    from medfake.io import load_scan
    from medfake.io.tables import read_luna16
    from medfake.runinfo import write_run_record
    from medfake.tamper.model import load_tamper_model

    torch.set_num_threads(1)
    inj = load_tamper_model(args.work / "run_inject", "inject")
    rem = load_tamper_model(args.work / "run_remove", "remove")
    rng = np.random.default_rng(args.seed)
    table = read_luna16(args.work / "cohort_test" / "annotations.csv")
    scans, examples = [], []
    load = [os.getloadavg()]
    for path in scan_paths(args.work / "cohort_test"):
        scan = load_scan(path)
        nodules = [(tuple(int(v) for v in scan.world_to_voxel(r.coords)), r.diameter_mm, None)
                   for r in table if r.filename == scan_key(path)]
        scans.append(evaluate_scan(path.name, scan, nodules, inj, rem, args.per_scan, rng, examples))
        print(json.dumps({k: v for k, v in scans[-1].items() if k not in ("inject", "remove")}), flush=True)
    lung1, label = load_scan(sample_path("lung1")), load_scan(sample_path("lung1_label"), modality="SEG")
    scans.append(evaluate_scan("lung1", lung1, [((33, 359, 218), 13.75, label.voxels > 0)], inj, rem,
                               args.per_scan, rng, examples))
    load.append(os.getloadavg())
    result = {"benchmark": "tamper_quality", "models": {"inject": inj.model_id, "remove": rem.model_id},
              "synthetic": summarize(scans[:-1]), "lung1": summarize(scans[-1:]), "all": summarize(scans),
              "targets": {"injection_success": 0.95, "removal_success": 0.95, "seam_and_noise_within": 0.10,
                          "seconds_per_location": 0.3, "command_512x512x64_s": 3.0},
              "scans": scans, "load_avg": load, "cpus": os.cpu_count(), "torch_threads": 1}
    if not args.skip_command:
        result["command"] = command_timing(args.work, args.work / "run_inject")
    RESULTS.mkdir(exist_ok=True)
    result["blend_mm"] = BLEND or "default (hole/2 - 1, hole/2 + 3)"
    result["views"] = VIEWS or "default (inject 4, remove 1)"
    result["sites_relaxed"] = RELAX_SITES
    save_examples(examples, RESULTS / f"{args.name.replace('quality', 'examples')}.png")
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    write_run_record(RESULTS, vars(args) | {"work": str(args.work)}, args.seed, name=f"{args.name}.run.json")
    print(json.dumps({k: v for k, v in result.items() if k != "scans"}, indent=1, default=float))


if __name__ == "__main__":
    main()
