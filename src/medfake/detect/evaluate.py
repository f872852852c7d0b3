"""`medfake evaluate`: tampered and genuine sites scored by detectors beside a content-only baseline; ROC AUC with
DeLong 95% CIs on rows that compare like with like (the sites and their content classes: `detect.samples`).

- headline rows (`inject-METHOD-MODALITY`, `remove-…`, and `…-all-…` over methods): the tampered sites against
  genuine sites of the content they claim: injected nodules vs genuine nodules, removals vs nodule-free genuine
  lung. A detector that only sees "is there a nodule here" sits at 0.5 on them.
- secondary rows (`inject-vs-before-…`, `remove-vs-before-…`): each tampered site against the same site before
  tampering. Content changed as well, so these show what content alone does; they are never pooled with the
  headline.
Every row carries the content-only baseline (the dense-tissue fraction at the centre, `selfref.dense_fraction`)
and says whether its classes still differ in content (the baseline's 95% CI excludes 0.5).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from medfake.detect.detectors import Detector
from medfake.detect.patches import modality_key
from medfake.detect.samples import (CLAIMS, Sample, genuine_samples, known_nodules, nodule_samples, removal_targets,
                                    tampered_samples)
from medfake.detect.selfref import dense_fraction
from medfake.errors import MedfakeError
from medfake.io import load_scan
from medfake.io.atomic import atomic_dir
from medfake.stats import delong_auc, delong_paired_test, plot_roc, roc_curve

__all__ = ["CONTENT_BASELINE", "Sample", "evaluate", "evaluation_samples", "genuine_samples", "rows",
           "score_samples", "tampered_samples"]
CONTENT_BASELINE = "content-baseline"  # dense-tissue fraction at the site: knows content, nothing of tampering
PD_FAR = 0.01  # probability of detection reported at this false-alarm rate (M3Dsynth's metric)


def evaluation_samples(manifest: Path, genuine=None, per_scan: int = 20, seed: int = 0, paired: bool = True,
                       nodules=None) -> list[Sample]:
    """Tampered sites (and the same sites before), genuine nodules from a location table, and genuine lung
    from genuine scans (a folder, list or scan; or a table, read as nodules), matched to the removals first."""
    samples = tampered_samples(Path(manifest), paired)
    if nodules is not None:
        samples += nodule_samples(Path(nodules))
    if genuine is not None:
        samples += genuine_samples(genuine, per_scan, seed, avoid=known_nodules(samples),
                                   targets=removal_targets(samples))
    return samples


def score_samples(samples: list[Sample], detectors: dict[str, Detector], progress=None) -> dict[str, np.ndarray]:
    """Scores per detector and of the content baseline, scan by scan (each scan loaded once); sets each sample's
    modality."""
    by_scan = defaultdict(list)
    for i, s in enumerate(samples):
        by_scan[s.scan].append(i)
    scores = {name: np.full(len(samples), np.nan) for name in [*detectors, CONTENT_BASELINE]}
    task = progress.add_task("scoring", total=len(samples), status="") if progress else None
    for path, index in by_scan.items():
        scan = load_scan(path)
        modality = modality_key(scan)
        centres = [samples[i].zyx for i in index]
        for i in index:
            samples[i].modality = modality
        scores[CONTENT_BASELINE][index] = dense_fraction(scan, centres)
        for name, det in detectors.items():
            if det.config.modality != modality:
                continue
            try:
                scores[name][index] = det.score_sites(scan, centres)
            except MedfakeError:  # e.g. too little flat lung to calibrate a scan-level detector: not scored
                if not det.scan_level:
                    raise
        if task is not None:
            progress.advance(task, len(index))
    return scores


def rows(samples: list[Sample]) -> dict[str, tuple[np.ndarray, str]]:
    """name → (indices: positives then negatives, kind: headline | secondary); rows need both classes."""
    groups = defaultdict(list)
    for i, s in enumerate(samples):
        if s.label:
            for group in {"", s.group}:
                groups[(s.action, s.method, s.modality, group)].append(i)
                groups[(s.action, "all", s.modality, group)].append(i)
    genuine = [(i, s) for i, s in enumerate(samples) if not s.label]
    out = {}
    for (action, method, modality, group), pos in sorted(groups.items()):
        mine = [(i, s) for i, s in genuine if s.modality == modality and group in ("", s.group)]
        claimed = [i for i, s in mine if s.content == CLAIMS[action] and headline_negative(s, action, method)]
        before = [i for i, s in mine if s.origin == "before" and s.action == action and method in ("all", s.method)]
        suffix = f"-{group}" if group else ""
        for name, neg, kind in ((f"{action}-{method}-{modality}{suffix}", claimed, "headline"),
                                (f"{action}-vs-before-{method}-{modality}{suffix}", before, "secondary")):
            if neg:
                out[name] = (np.asarray(pos + neg), kind)
    return out


def headline_negative(s: Sample, action: str, method: str) -> bool:
    """Removal rows take genuine lung drawn for them (not the bare lung before an injection, drawn anywhere), and
    lung matched to one method's removal sites only in that method's rows and "all"."""
    if action != "remove":
        return True
    return s.origin == "random" or (s.origin == "matched" and (not s.method or method in ("all", s.method)))


def evaluate(samples: list[Sample], detectors: dict[str, Detector], out: Path, overwrite: bool = False,
             progress=None) -> dict:
    """results.json: `subsets` (row → detector → AUC), `rows` (row → kind, counts, content baseline and whether
    the row's classes still differ in content); results.md, scores.csv and one ROC PNG per row."""
    scores = score_samples(samples, detectors, progress)
    labels = np.array([s.label for s in samples])
    results = {"detectors": {n: {"method": d.method, "model": d.source, "options": d.options.__dict__}
                             for n, d in detectors.items()}, "subsets": {}, "rows": {}}
    with atomic_dir(out, overwrite) as tmp:
        write_sample_scores(samples, scores, tmp / "scores.csv")
        for row, (index, kind) in rows(samples).items():
            entry, curves = {}, {}
            for name in [*detectors, CONTENT_BASELINE]:
                valid = index[np.isfinite(scores[name][index])]
                if len(np.unique(labels[valid])) < 2:
                    continue
                auc = delong_auc(labels[valid], scores[name][valid])
                fpr, tpr, _ = roc_curve(labels[valid], scores[name][valid])
                entry[name] = {**auc.as_dict(), "pd_at_1pct_far": float(tpr[fpr <= PD_FAR].max())}
                curves[name] = (fpr, tpr, f"{name}: {auc.auc:.3f} [{auc.low:.3f}, {auc.high:.3f}]")
            add_paired_tests(entry, labels, scores, index)
            baseline = entry.pop(CONTENT_BASELINE)
            results["rows"][row] = {"kind": kind, "n_tampered": baseline["n_tampered"],
                                    "n_genuine": baseline["n_genuine"], "content_baseline": baseline,
                                    "content_differs": not baseline["ci95"][0] <= 0.5 <= baseline["ci95"][1]}
            if entry:
                results["subsets"][row] = entry
            plot_roc(curves, tmp / f"roc_{row}.png", f"{row} ({kind})")
        (tmp / "results.json").write_text(json.dumps(results, indent=2))
        (tmp / "results.md").write_text(markdown_table(results))
    return results


def add_paired_tests(entry: dict, labels, scores, index, reference: str = "btd") -> None:
    """Each detector's paired DeLong test against BTD on the sites both scored (p-value, AUC difference)."""
    if reference not in entry:
        return
    for name in entry:
        if name in (reference, CONTENT_BASELINE):
            continue
        both = index[np.isfinite(scores[name][index]) & np.isfinite(scores[reference][index])]
        if len(np.unique(labels[both])) == 2:
            diff, p = delong_paired_test(labels[both], scores[name][both], scores[reference][both])
            entry[name]["vs_btd"] = {"auc_difference": diff, "p": p}


def write_sample_scores(samples, scores, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scan", "voxel_z", "voxel_y", "voxel_x", "label", "action", "method", "modality", "content",
                         "origin", "group", *scores])
        for i, s in enumerate(samples):
            writer.writerow([str(s.scan), *s.zyx, s.label, s.action, s.method, s.modality, s.content, s.origin, s.group,
                             *(f"{scores[n][i]:.8g}" for n in scores)])


def _auc_cell(auc: dict | None) -> str:
    if not auc:
        return "–"
    return f"{auc['auc']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}], Pd {auc['pd_at_1pct_far']:.2f}"


def markdown_table(results: dict) -> str:
    names = list(results["detectors"])
    lines = ["| row | kind | n tampered | n genuine | content baseline | "
             + " | ".join(f"{n} AUC [95% CI]" for n in names) + " |", "|---|---|---|---|---|" + "---|" * len(names)]
    for kind in ("headline", "secondary"):
        for row, meta in results["rows"].items():
            if meta["kind"] != kind:
                continue
            entry = results["subsets"].get(row, {})
            flag = " (content differs)" if meta["content_differs"] else ""
            lines.append(f"| {row} | {kind} | {meta['n_tampered']} | {meta['n_genuine']} | "
                         f"{_auc_cell(meta['content_baseline'])}{flag} | "
                         + " | ".join(_auc_cell(entry.get(n)) for n in names) + " |")
    return "\n".join(lines) + (
        "\n\nHeadline rows pair tampered sites only with genuine sites of the content they claim (injected vs genuine "
        "nodules; removals vs nodule-free genuine lung); secondary rows compare each site with itself before "
        "tampering. Content baseline: the dense-tissue fraction at the site (near 0.5 when the row's classes hold "
        "the same content). AUC: DeLong 95% confidence intervals (normal approximation, clipped to [0, 1]); Pd: the "
        f"fraction of tampered sites detected at a false-alarm rate ≤ {PD_FAR:.0%} on the row's genuine sites.\n")
