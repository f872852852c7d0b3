"""Turn a finished benchmark matrix into `results.json`, `results.md` and one self-contained `report.html`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medfake.bench.protection import protection_section, protection_summary
from medfake.report import Section, write_report
from medfake.io.tables import read_manifest
from medfake.tamper.config import ACTIONS

CROP_MM = 60.0


def auc_rows(evaluation: dict) -> list[list]:
    """One row per (subset, detector): AUC with its DeLong 95% interval, the sample counts, the row's kind, the
    content-only baseline's AUC beside it (and whether the row's classes still differ in content), Pd@1% FAR."""
    rows = []
    for subset, entry in evaluation.get("subsets", {}).items():
        meta = evaluation.get("rows", {}).get(subset, {})
        baseline = meta.get("content_baseline", {}).get("auc")
        for detector, auc in entry.items():
            low, high = auc["ci95"]
            rows.append([subset, detector, auc["auc"], low, high, auc["n_tampered"], auc["n_genuine"],
                         meta.get("kind", ""), baseline, bool(meta.get("content_differs")), auc.get("pd_at_1pct_far")])
    return rows


AUC_KEYS = ("subset", "detector", "auc", "low", "high", "n_pos", "n_neg", "kind", "content_baseline",
            "content_differs", "pd_at_1pct_far")
AUC_HEADER = ["subset (action-method-modality)", "detector", "AUC", "95% CI low", "95% CI high", "tampered", "genuine",
              "kind", "content-only baseline AUC", "content differs", "Pd @ 1% FAR"]


def results_summary(matrix: dict) -> dict:
    evaluation = json.loads((Path(matrix["evaluation"]["folder"]) / "results.json").read_text())
    cad = matrix["cad"]
    screening = matrix["screening"]
    ranks = [r for s in screening for r in s["ranks"]]
    return {
        "name": matrix["config"].get("name", "bench"),
        "auc": [dict(zip(AUC_KEYS, r)) for r in auc_rows(evaluation)],
        "counts": matrix["evaluation"]["counts"],
        "cad_success": {action: _rate([v["success"] for v in cad if v["action"] == action]) for action in ACTIONS},
        "screening_top3": _rate([r is not None and r <= 3 for r in ranks]),
        "screening": screening,
        "timings_s": {k: round(v, 2) for k, v in matrix["timings"].items()},
        "total_s": round(sum(matrix["timings"].values()), 1),
        **({"segmentation_audit": matrix["segmentation_audit"]} if matrix.get("segmentation_audit") else {}),
        **({"protection": protection_summary(matrix)} if matrix.get("protection") else {}),
    }


def auc_table(summary: dict, only_all_methods: bool = False) -> list[list]:
    return [[a.get(k) for k in AUC_KEYS] for a in summary["auc"] if not only_all_methods or "-all-" in a["subset"]]


def _rate(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 3) if flags else None


def markdown(summary: dict) -> str:
    lines = [f"# {summary['name']}: results", "", "| " + " | ".join(AUC_HEADER) + " |",
             "|" + "---|" * len(AUC_HEADER)]
    for a in summary["auc"]:
        baseline = "–" if a.get("content_baseline") is None else f"{a['content_baseline']:.3f}"
        pd = "–" if a.get("pd_at_1pct_far") is None else f"{a['pd_at_1pct_far']:.2f}"
        lines.append(f"| {a['subset']} | {a['detector']} | {a['auc']:.3f} | {a['low']:.3f} | {a['high']:.3f} | "
                     f"{a['n_pos']} | {a['n_neg']} | {a.get('kind', '')} | {baseline} | "
                     f"{'yes' if a.get('content_differs') else 'no'} | {pd} |")
    lines += ["", "Headline rows compare like with like (injected vs genuine nodules, removals vs genuine nodule-free "
              "lung); the content-only baseline (dense fraction at the site) should sit near 0.5 there.",
              "", f"CAD success: inject {summary['cad_success']['inject']}, remove {summary['cad_success']['remove']}",
              f"Screening: tampered place in the top 3 findings: {summary['screening_top3']}",
              f"Total compute: {summary['total_s']} s", ""]
    if summary.get("segmentation_audit"):
        lines += segmentation_audit_markdown(summary["segmentation_audit"])
    return "\n".join(lines)


def segmentation_audit_markdown(audit: dict) -> list[str]:
    from medfake.bench.audit import audit_rows

    header, rows = audit_rows(audit)
    cell = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    return ["## Segmentation robustness audit", "",
            f"Target {audit['target']}, held-out slices {audit['slices']}, requested drop {audit['requested_drop']}; "
            "PGD/FGSM at the attack's mean drop.", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows], ""]


def segmentation_audit_section(audit: dict) -> Section:
    from medfake.bench.audit import audit_rows

    section = Section("segaudit", "Segmentation robustness audit")
    section.text(f"Target {audit['target']}, attacked on held-out slices {audit['slices']} with a requested "
                 f"{audit['requested_drop']:.0%} relative Dice drop; PGD and FGSM with ε bisected to the same mean "
                 "drop. P: RMS of x̃ − x on z-scored slices (see the audit's report).")
    section.table(*audit_rows(audit))
    if (Path(audit["folder"]) / "attack.png").exists():
        section.image(Path(audit["folder"]) / "attack.png", "image, S(x), adversarial, S(adversarial), u, b")
    return section


def crop(scan, zyx):
    """A small scan around `zyx` (about CROP_MM wide) so the tampered place fills the picture."""
    shape = [max(3, int(round(CROP_MM / s))) | 1 for s in scan.spacing]  # odd: the point is the centre voxel
    return scan.crop(zyx, shape), tuple(s // 2 for s in shape)


def location_figure(row, detector, cache: dict) -> np.ndarray:
    """Before | after | difference (orthogonal views, lung window) and the detector's heat map on the axial patch."""
    from medfake.detect.patches import patches_at, to_unit
    from medfake.render import add_caption, hstack, orthogonal_views, overlay_heatmap, window
    from medfake.io import load_scan

    for path in (row.scan, row.output):
        if path not in cache:
            if len(cache) > 4:  # bound memory: rows come grouped by scan
                cache.clear()
            cache[path] = load_scan(path)
    before, after = cache[row.scan], cache[row.output]
    zyx = (row.voxel_z, row.voxel_y, row.voxel_x)
    small_before, centre = crop(before, zyx)
    small_after, _ = crop(after, zyx)
    diff = small_after.with_voxels(small_after.voxels.astype(np.float32) - small_before.voxels.astype(np.float32))
    panels = [add_caption(orthogonal_views(small_before, centre, "lung"), "before"),
              add_caption(orthogonal_views(small_after, centre, "lung"), "after"),
              add_caption(orthogonal_views(diff, centre, window("400,0")), "after - before (W400 L0)")]
    if detector is not None:
        unit = to_unit(after, detector.config.window)
        patch = patches_at(unit, [zyx], detector.config.patch_size, "btd")
        heat = np.squeeze(detector.anomaly_maps(patch)[0])
        grey = np.clip(np.squeeze(patch[0]) * 255.0, 0, 255).astype(np.uint8)
        panels.append(add_caption(overlay_heatmap(grey, heat, alpha=0.6), f"{detector.method} residual"))
    return hstack(panels)


CYCLEGAN_LOSSES = ["g_adv", "cycle_l1", "identity_l1", "d_a", "d_b"]


def loss_figure(csv_path: Path, columns: list[str], title: str) -> np.ndarray | None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not csv_path.exists():
        return None
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    figure = Figure(figsize=(6, 3), dpi=100)
    axis = figure.add_subplot()
    for column in columns:
        values = [(i, float(r[column])) for i, r in enumerate(rows) if r.get(column) not in (None, "")]
        if values:
            axis.plot(*zip(*values), label=column, lw=1)
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def build_sections(matrix: dict, summary: dict, max_locations: int = 12) -> list[Section]:
    from medfake.detect.detectors import load_detector

    run = Path(matrix["run"])
    evaluation_dir = Path(matrix["evaluation"]["folder"])
    summary_section = Section("summary", "Summary")
    summary_section.table(AUC_HEADER, auc_table(summary, only_all_methods=True))
    summary_section.table(["measure", "value"], [
        ["tampered / genuine locations scored", f"{summary['counts'].get('tampered')} / {summary['counts'].get('genuine')}"],
        ["CAD success, injection (nodule found after, not before)", summary["cad_success"]["inject"]],
        ["CAD success, removal (nodule found before, not after)", summary["cad_success"]["remove"]],
        ["screening: tampered place in the screening detector's top 3", summary["screening_top3"]],
        ["total compute (s)", summary["total_s"]]])

    locations = Section("locations", "Tampered locations")
    locations.text("Each row: before, after and their difference in a lung window (axial | coronal | sagittal, "
                   f"{CROP_MM:.0f} mm field), and the BTD residual of the tampered axial patch.", "note")
    btd = load_detector(matrix["detectors"]["btd"]) if "btd" in matrix["detectors"] else None
    verdicts = {(v["output"], tuple(v["zyx"])): v for v in matrix["cad"]}
    cache: dict = {}
    for row in read_manifest(Path(matrix["manifest"]))[:max_locations]:
        verdict = verdicts.get((row.output, (row.voxel_z, row.voxel_y, row.voxel_x)), {})
        caption = (f"{Path(row.scan).name}: {row.action} by {row.method} at z,y,x=({row.voxel_z},{row.voxel_y},"
                   f"{row.voxel_x}), x,y,z=({row.world_x:.1f},{row.world_y:.1f},{row.world_z:.1f}) mm; "
                   f"chosen by {row.chosen_by}. CAD before: {_cad(verdict.get('before'))}, after: {_cad(verdict.get('after'))}"
                   f" → {'success' if verdict.get('success') else 'failure'}")
        locations.image(location_figure(row, btd, cache), caption)

    roc = Section("roc", "ROC curves and AUC (DeLong 95% intervals)")
    roc.table(AUC_HEADER, auc_table(summary))
    for png in sorted(evaluation_dir.glob("roc_*.png")):
        roc.image(png, png.stem.removeprefix("roc_"))

    screen = Section("screening", "Whole-scan screening of the tampered real scan")
    for item in matrix["screening"]:
        screen.text(f"{Path(item['output']).name}: scan score {item['scan_score']:.2f}; rank of each tampered place "
                    f"among the findings: {', '.join(f'{a}: {r}' for a, r in zip(item['actions'], item['ranks']))}")
        for png in sorted(Path(item["folder"]).glob("*.png")):
            screen.image(png, png.stem)

    training = Section("training", "Training curves and snapshots")
    for action, folder in matrix["models"].items():
        columns = CYCLEGAN_LOSSES if action == "cyclegan" else ["d_loss", "g_loss", "g_l1", "val_l1_hole"]
        image = loss_figure(Path(folder) / "losses.csv", columns, f"{action} cGAN")
        if image is not None:
            training.image(image, f"{action} cGAN losses")
        snapshots = sorted((Path(folder) / "snapshots").glob("*.png"))
        if snapshots:
            training.image(snapshots[-1], f"{action} cGAN: condition / generated / original ({snapshots[-1].stem})")
    for method, folder in matrix["detectors"].items():
        for name in ("losses.png", "samples.png"):
            if (Path(folder) / name).exists():
                training.image(Path(folder) / name, f"{method} detector: {name[:-4]}")

    timings = Section("timings", "Timings")
    timings.table(["step", "seconds"], [[k, v] for k, v in summary["timings_s"].items()] + [["total", summary["total_s"]]])

    reproduce = Section("reproduce", "Configuration, versions and commit")
    reproduce.code(json.loads((run / "run.json").read_text()))
    audit = [segmentation_audit_section(matrix["segmentation_audit"])] if matrix.get("segmentation_audit") else []
    protection = protection_section(matrix)  # only with a `protection:` axis
    return [summary_section, locations, roc, screen, *([protection] if protection else []), training, *audit,
            timings, reproduce]


def _cad(diameter) -> str:
    return "no nodule within 5 mm" if diameter is None else f"nodule {diameter} mm"


def write_outputs(matrix: dict) -> dict:
    """results.json, results.md and report.html in the RUN folder; returns the summary."""
    from medfake.io.atomic import atomic_file

    run = Path(matrix["run"])
    summary = results_summary(matrix)
    with atomic_file(run / "results.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_file(run / "results.md", overwrite=True) as tmp:
        tmp.write_text(markdown(summary))
    write_report(run / "report.html", f"medfake benchmark: {summary['name']}", build_sections(matrix, summary))
    return summary
