"""`medfake reader-study analyse`: open the key, score the readers.

Per reader and pooled: ROC/AUC with DeLong 95 % CIs for telling manipulated images from genuine ones (the
manipulation rating is the score), diagnostic AUC of the malignancy rating on the originals and on the
modified images (Becker et al. 2019, Tables 2-3; only where the key knows whether a nodule is shown), and
localisation hits (a click within `hit_mm` of a manipulated place). A constant rating (AUC 0.5) is the
trivial baseline every AUC is read against.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_file
from medfake.runinfo import write_run_record
from medfake.viewer.study import KEY, Study

HIT_MM = 20.0
POOLED = "all readers"


def observations(study: Study, key: dict, hit_mm: float) -> list[dict]:
    """One row per (reader, case, image) answered, with its truth."""
    from medfake.io import load_scan

    scans = {}
    rows = []
    for reader in study.readers():
        for case_id, answer in study.answers(reader).items():
            layout = study.cases[case_id]["layout"]
            for item in answer["images"]:
                truth = key["images"][item["image"]]
                hit = None
                if truth["tampered"]:
                    hit = False
                    if item["click"] is not None:
                        if item["image"] not in scans:
                            scans[item["image"]] = load_scan(study.image_path(item["image"]))
                        hit = click_hits(scans[item["image"]], item["click"], truth["locations_world"], hit_mm)
                rows.append({"reader": reader, "case": case_id, "layout": layout, "image": item["image"],
                             "tampered": truth["tampered"], "shows_nodule": truth["shows_nodule"],
                             "malignancy": item["malignancy"], "manipulation": item["manipulation"],
                             "click": item["click"], "hit": hit})
    return rows


def click_hits(scan, click_zyx, locations_world, hit_mm: float) -> bool:
    where = scan.voxel_to_world(click_zyx)
    return any(np.linalg.norm(where - np.asarray(w)) <= hit_mm for w in locations_world)


def auc_entry(labels, scores) -> dict:
    from medfake.stats import delong_auc

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    if labels.all() or not labels.any():
        return {"auc": None, "ci95": None, "n_pos": int(labels.sum()), "n_neg": int((~labels).sum()),
                "note": "needs both classes"}
    result = delong_auc(labels, scores)
    return {"auc": result.auc, "ci95": [result.low, result.high], "n_pos": result.n_pos, "n_neg": result.n_neg}


def summarise(rows: list[dict]) -> dict:
    tampered = [r for r in rows if r["tampered"]]
    diag = {}
    for name, subset in (("originals", [r for r in rows if not r["tampered"]]), ("modified", tampered)):
        known = [r for r in subset if r["shows_nodule"] is not None]
        diag[name] = auc_entry([r["shows_nodule"] for r in known], [r["malignancy"] for r in known])
    return {"n": len(rows),
            "manipulation": auc_entry([r["tampered"] for r in rows], [r["manipulation"] for r in rows]),
            "manipulation_singles": auc_entry([r["tampered"] for r in rows if r["layout"] == "single"],
                                              [r["manipulation"] for r in rows if r["layout"] == "single"]),
            "diagnostic": diag,
            "localisation": {"tampered_images": len(tampered), "clicked": sum(r["click"] is not None for r in tampered),
                             "hits": sum(bool(r["hit"]) for r in tampered)}}


def analyse(folder: Path, out: Path, hit_mm: float = HIT_MM) -> dict:
    study = Study(folder)
    key_path = study.folder / KEY
    if not key_path.exists():
        raise MedfakeError("the study has no key.json (it is needed to analyse)", key_path)
    key_text = key_path.read_text()
    if study.key_sha256 and hashlib.sha256(key_text.encode()).hexdigest() != study.key_sha256:
        raise MedfakeError("key.json does not match the checksum recorded when the study was made", key_path)
    rows = observations(study, json.loads(key_text), hit_mm)
    if not rows:
        raise MedfakeError("no answers yet (answers/*.jsonl is empty)", study.folder)
    readers = sorted({r["reader"] for r in rows})
    results = {reader: summarise([r for r in rows if r["reader"] == reader]) for reader in readers}
    if len(readers) > 1:
        results[POOLED] = summarise(rows)
    summary = {"readers": results, "hit_mm": hit_mm, "cases": len(study.case_ids),
               "baseline": "a constant rating has AUC 0.5"}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "analysis.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    write_observations(rows, out / "observations.csv")
    roc_png = plot_curves(rows, readers, out / "roc.png")
    write_html(summary, roc_png, out / "report.html")
    write_run_record(out, {"study": str(folder), "hit_mm": hit_mm})
    return summary


def write_observations(rows: list[dict], path: Path) -> None:
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "click": "" if row["click"] is None else " ".join(map(str, row["click"]))})


def plot_curves(rows, readers, path: Path) -> Path | None:
    from medfake.stats import plot_roc, roc_curve

    curves = {}
    for reader in readers:
        mine = [r for r in rows if r["reader"] == reader]
        entry = auc_entry([r["tampered"] for r in mine], [r["manipulation"] for r in mine])
        if entry["auc"] is not None:
            fpr, tpr, _ = roc_curve([r["tampered"] for r in mine], [r["manipulation"] for r in mine])
            curves[reader] = (fpr, tpr, f"{reader}: AUC {entry['auc']:.2f}")
    if not curves:
        return None
    plot_roc(curves, path, "manipulation detection by readers")
    return path


def fmt_auc(entry: dict) -> str:
    if entry["auc"] is None:
        return f"n/a ({entry['note']})"
    return f"{entry['auc']:.3f} [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"


def table_rows(summary: dict) -> list[list[str]]:
    out = []
    for reader, s in summary["readers"].items():
        loc = s["localisation"]
        out.append([reader, str(s["n"]), fmt_auc(s["manipulation"]), fmt_auc(s["diagnostic"]["originals"]),
                    fmt_auc(s["diagnostic"]["modified"]), f"{loc['hits']}/{loc['tampered_images']} ({loc['clicked']} clicked)"])
    out.append(["baseline: constant rating", "", "0.500", "0.500", "0.500", "0/—"])
    return out


HEADER = ["reader", "ratings", "manipulation AUC [95% CI]", "diagnostic AUC, originals", "diagnostic AUC, modified",
          "localisation hits"]


def write_html(summary: dict, roc_png: Path | None, path: Path) -> Path:
    from medfake.report import Section, write_report

    table = Section("readers", "Readers").table(HEADER, table_rows(summary))
    table.text(f"AUCs with DeLong 95 % confidence intervals; a hit is a click within {summary['hit_mm']:g} mm of a "
               "manipulated place; diagnostic AUCs use the malignancy rating and only images whose key says whether "
               "a nodule is shown. Small studies give wide intervals.", "note")
    sections = [table]
    if roc_png:
        sections.append(Section("roc", "ROC curves").image(roc_png, "manipulation rating vs truth, per reader"))
    sections.append(Section("raw", "Numbers").code(summary))
    return write_report(path, "Reader study", sections)
