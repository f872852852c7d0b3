"""`medfake evaluate`: score tampered and genuine patches with one or more detectors; ROC AUC with DeLong 95% CIs.

Positives: every row of a tamper manifest (the tampered output scan at its voxel location).
Negatives (genuine): the untouched source scans at the same locations (paired, when the manifest's `scan`
exists), plus either random lung locations in genuine scans (a folder or list) or the locations of a table
(CT-GAN / LUNA16 / manifest columns, scan names resolved next to the table).
Subsets: action (inject/remove) × tamper method × modality, and each action pooled.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.data.cohort import location_voxel, scan_paths
from medfake.detect.detectors import Detector
from medfake.detect.patches import lung_mask_or_none, modality_key, patches_at, to_unit
from medfake.errors import MedfakeError
from medfake.io import load_scan
from medfake.io.atomic import atomic_dir
from medfake.io.tables import read_locations, read_manifest
from medfake.stats import delong_auc, plot_roc, roc_curve


@dataclass
class Sample:
    scan: Path
    zyx: tuple[int, int, int]
    label: int  # 1 tampered, 0 genuine
    action: str = ""
    method: str = ""
    modality: str = ""


def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def tampered_samples(manifest: Path, paired: bool = True) -> list[Sample]:
    out = []
    for row in read_manifest(manifest):
        zyx = (row.voxel_z, row.voxel_y, row.voxel_x)
        out.append(Sample(_resolve(manifest.parent, row.output), zyx, 1, row.action, row.method))
        source = _resolve(manifest.parent, row.scan)
        if paired and source.exists():
            out.append(Sample(source, zyx, 0, "paired"))
    if not any(s.label for s in out):
        raise MedfakeError("tamper manifest has no rows", manifest)
    return out


def genuine_samples(spec, per_scan: int, seed: int, margin: int = 48) -> list[Sample]:
    """Random lung (CT) or foreground (MRI) locations in genuine scans, or the rows of a location table."""
    spec = Path(spec)
    if spec.is_file() and spec.suffix.lower() in (".csv", ".tsv"):
        out = []
        for loc in read_locations(spec, system="vox" if "vox" in spec.name.lower() else "world"):
            path = _resolve(spec.parent, loc.filename)
            out.append(Sample(path, location_voxel(load_scan(path), loc), 0, "table"))
        return out
    rng = np.random.default_rng(seed)
    out = []
    for path in scan_paths(spec):
        scan = load_scan(path)
        region = lung_mask_or_none(scan)
        if region is None:
            region = to_unit(scan) > 0.05
        region[:, :margin] = region[:, -margin:] = False
        region[:, :, :margin] = region[:, :, -margin:] = False
        points = np.argwhere(region[:, ::4, ::4]) * np.array([1, 4, 4])
        if len(points) == 0:
            raise MedfakeError("no lung/foreground to sample genuine locations from", path)
        for i in rng.choice(len(points), size=min(per_scan, len(points)), replace=False):
            out.append(Sample(path, tuple(int(v) for v in points[i]), 0, "random"))
    return out


def score_samples(samples: list[Sample], detectors: dict[str, Detector], progress=None) -> dict[str, np.ndarray]:
    """Scores per detector, scan by scan (each scan loaded once); sets each sample's modality."""
    by_scan = defaultdict(list)
    for i, s in enumerate(samples):
        by_scan[s.scan].append(i)
    scores = {name: np.full(len(samples), np.nan) for name in detectors}
    task = progress.add_task("scoring", total=len(samples), status="") if progress else None
    for path, index in by_scan.items():
        scan = load_scan(path)
        modality = modality_key(scan)
        centres = [samples[i].zyx for i in index]
        for i in index:
            samples[i].modality = modality
        for name, det in detectors.items():
            if det.config.modality != modality:
                continue
            unit = to_unit(scan, det.config.window)
            scores[name][index] = det.scores(patches_at(unit, centres, det.config.patch_size, "btd"))
        if task is not None:
            progress.advance(task, len(index))
    return scores


def subsets(samples: list[Sample]) -> dict[str, tuple[np.ndarray, str]]:
    """name → (indices of its positives + all genuine samples of its modality, modality)."""
    groups = defaultdict(list)
    for i, s in enumerate(samples):
        if s.label:
            groups[(s.action, s.method, s.modality)].append(i)
            groups[(s.action, "all", s.modality)].append(i)
    out = {}
    for (action, method, modality), pos in sorted(groups.items()):
        neg = [i for i, s in enumerate(samples) if not s.label and s.modality == modality]
        if neg:
            out[f"{action}-{method}-{modality}"] = (np.asarray(pos + neg), modality)
    return out


def evaluate(samples: list[Sample], detectors: dict[str, Detector], out: Path, overwrite: bool = False,
             progress=None) -> dict:
    scores = score_samples(samples, detectors, progress)
    labels = np.array([s.label for s in samples])
    results = {"detectors": {n: {"method": d.method, "model": d.source, "options": d.options.__dict__}
                             for n, d in detectors.items()}, "subsets": {}}
    with atomic_dir(out, overwrite) as tmp:
        write_sample_scores(samples, scores, tmp / "scores.csv")
        for subset, (index, modality) in subsets(samples).items():
            entry, curves = {}, {}
            for name in detectors:
                valid = index[np.isfinite(scores[name][index])]
                if len(np.unique(labels[valid])) < 2:
                    continue
                auc = delong_auc(labels[valid], scores[name][valid])
                entry[name] = auc.as_dict()
                fpr, tpr, _ = roc_curve(labels[valid], scores[name][valid])
                curves[name] = (fpr, tpr, f"{name}: {auc.auc:.3f} [{auc.low:.3f}, {auc.high:.3f}]")
            if entry:
                results["subsets"][subset] = entry
                plot_roc(curves, tmp / f"roc_{subset}.png", subset)
        (tmp / "results.json").write_text(json.dumps(results, indent=2))
        (tmp / "results.md").write_text(markdown_table(results))
    return results


def write_sample_scores(samples, scores, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scan", "voxel_z", "voxel_y", "voxel_x", "label", "action", "method", "modality", *scores])
        for i, s in enumerate(samples):
            writer.writerow([str(s.scan), *s.zyx, s.label, s.action, s.method, s.modality,
                             *(f"{scores[n][i]:.8g}" for n in scores)])


def markdown_table(results: dict) -> str:
    names = list(results["detectors"])
    lines = ["| subset | n tampered | n genuine | " + " | ".join(f"{n} AUC [95% CI]" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for subset, entry in results["subsets"].items():
        first = next(iter(entry.values()))
        cells = [f"{entry[n]['auc']:.3f} [{entry[n]['ci95'][0]:.3f}, {entry[n]['ci95'][1]:.3f}]" if n in entry else "–"
                 for n in names]
        lines.append(f"| {subset} | {first['n_tampered']} | {first['n_genuine']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAUC: DeLong 95% confidence intervals (normal approximation, clipped to [0, 1]).\n"
