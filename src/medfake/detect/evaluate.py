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
from medfake.io import load_scan
from medfake.io.atomic import atomic_dir
from medfake.stats import delong_auc, plot_roc, roc_curve

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
            scores[name][index] = det.score_sites(scan, centres)
        if task is not None:
            progress.advance(task, len(index))
    return scores


def rows(samples: list[Sample]) -> dict[str, tuple[np.ndarray, str]]:
    """name → (indices: positives then negatives, kind: headline | secondary); rows need both classes."""
    groups = defaultdict(list)
    for i, s in enumerate(samples):
        if s.label:
            groups[(s.action, s.method, s.modality)].append(i)
            groups[(s.action, "all", s.modality)].append(i)
    genuine = [(i, s) for i, s in enumerate(samples) if not s.label]
    out = {}
    for (action, method, modality), pos in sorted(groups.items()):
        claimed = [i for i, s in genuine if s.modality == modality and s.content == CLAIMS[action]]
        before = [i for i, s in genuine if s.modality == modality and s.origin == "before" and s.action == action
                  and method in ("all", s.method)]
        for name, neg, kind in ((f"{action}-{method}-{modality}", claimed, "headline"),
                                (f"{action}-vs-before-{method}-{modality}", before, "secondary")):
            if neg:
                out[name] = (np.asarray(pos + neg), kind)
    return out


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


def write_sample_scores(samples, scores, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scan", "voxel_z", "voxel_y", "voxel_x", "label", "action", "method", "modality", "content",
                         "origin", *scores])
        for i, s in enumerate(samples):
            writer.writerow([str(s.scan), *s.zyx, s.label, s.action, s.method, s.modality, s.content, s.origin,
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
