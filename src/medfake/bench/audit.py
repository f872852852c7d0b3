"""The benchmark matrix's robustness-audit stage (issue #13): a segmentation target attacked on held-out slices.

Config section (every key optional):

    segmentation_audit:
      target: null        # a `medfake train segmenter` run or a target YAML; null: train a small U-Net here
      scan: null          # CT + label map (default: TotalSegmentator's example_ct and its organ labels)
      labels: null
      classes: liver,spleen
      train_steps: 200    # the U-Net trained here (every `holdout_every`-th block of 4 slices held out)
      channels: [8, 16, 32, 64]
      crop: 64
      holdout_every: 4
      max_slices: 6       # held-out slices attacked (the ones holding the most organ pixels)
      drop: 0.3           # requested relative Dice drop (optimize mode)
      steps: 100          # optimize-mode iterations (early stop at the requested drop)

Two cells: `segaudit-target` (trains the U-Net unless a target is given) and `segaudit-attack` (the attack,
deformation-only, bias-only and PGD/FGSM at the same mean drop; results.json/md, attack.png, report.html).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfake.bench.config import Cells
from medfake.errors import MedfakeError

DEFAULTS = {"target": None, "scan": None, "labels": None, "classes": "liver,spleen", "train_steps": 200,
            "channels": [8, 16, 32, 64], "crop": 64, "holdout_every": 4, "max_slices": 6, "drop": 0.3,
            "steps": 100}


def audit_options(config: dict) -> dict:
    spec = config.get("segmentation_audit") or {}
    unknown = set(spec) - set(DEFAULTS)
    if unknown:
        raise MedfakeError(f"unknown segmentation_audit key(s): {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(DEFAULTS)})")
    options = {**DEFAULTS, **spec}
    if options["holdout_every"] < 2:
        raise MedfakeError("segmentation_audit.holdout_every must be at least 2 (held-out slices are attacked)")
    return options


def scan_and_labels(options: dict) -> tuple[Path, Path]:
    if options["scan"]:
        if not options["labels"]:
            raise MedfakeError("segmentation_audit.scan needs its label map (segmentation_audit.labels)")
        return Path(options["scan"]), Path(options["labels"])
    from medfake.data.samples import fetch

    folder = fetch("totalsegmentator")
    return folder / "example_ct.nii.gz", folder / "example_seg_fast_force_split.nii.gz"


def held_out_slices(target, scan: Path, labels: Path, options: dict):
    """The held-out blocks of the target's training split, the `max_slices` with the most organ pixels."""
    from medfake.attack.data import SliceSet, axial_slices, load_labelled
    from medfake.attack.segmenter import split_slices

    volume, label_volume = load_labelled(scan, labels)
    _, held = split_slices(axial_slices(volume, label_volume, target.organs, target.pixel_mm),
                           options["holdout_every"])
    if held is None or not len(held):
        raise MedfakeError("no held-out slice holds an organ", scan)
    keep = np.sort(np.argsort(-(held.classes > 0).sum(axis=(1, 2)), kind="stable")[:options["max_slices"]])
    return SliceSet(held.images[keep], held.classes[keep], held.z[keep], held.pixel_mm, held.source)


def segmentation_audit(cells: Cells, config: dict) -> dict:
    """Run (or resume) the audit stage; returns the target, the audit folder and a per-method summary."""
    options = audit_options(config)
    scan, labels = scan_and_labels(options)

    def train(folder: Path):
        from medfake.attack.segmenter import SegmenterConfig, train_segmenter

        seg = SegmenterConfig(classes=options["classes"], steps=options["train_steps"], crop=options["crop"],
                              channels=tuple(options["channels"]), holdout_every=options["holdout_every"],
                              seed=config.get("seed", 0), snapshot_every=options["train_steps"])
        return str(train_segmenter([scan], [labels], folder / "run", seg, show_progress=False))

    target_path = options["target"] or cells.run("segaudit-target", train)

    def attack(folder: Path):
        from medfake.attack.config import AttackConfig
        from medfake.attack.problem import Problem
        from medfake.attack.run import audit_problem
        from medfake.attack.target import load_target

        target = load_target(target_path)
        problem = Problem(target, held_out_slices(target, scan, labels, options))
        settings = AttackConfig(drop=options["drop"], steps=options["steps"], seed=config.get("seed", 0))
        results = audit_problem(problem, folder, settings, show_progress=False,
                                meta={"scan": str(scan), "labels": str(labels), "target": str(target_path)})
        return {"folder": str(folder), "target": str(target_path), "slices": results["slices"],
                "requested_drop": options["drop"], "methods": [method_summary(c) for c in results["comparison"]]}

    return cells.run("segaudit-attack", attack)


def method_summary(comparison: dict) -> dict:
    return {"method": comparison["method"], "note": comparison["note"], "mean_drop": comparison["mean_drop"],
            "perceptibility": comparison["perceptibility"], "ssim": comparison["ssim"],
            "folding_fraction": comparison["folding_fraction"],
            "dice": {organ: [v["dice_before"], v["dice_after"]] for organ, v in comparison["organs"].items()}}


def audit_rows(audit: dict) -> tuple[list[str], list[list]]:
    """One row per method: Dice before → after per organ, mean drop, P, SSIM, folding."""
    organs = list(audit["methods"][0]["dice"])
    header = ["method", *[f"{o} Dice before → after" for o in organs], "mean drop", "P", "SSIM", "folding"]
    rows = [[m["method"] + (f" ({m['note']})" if m["note"] else ""),
             *[f"{_fmt(m['dice'][o][0])} → {_fmt(m['dice'][o][1])}" for o in organs],
             m["mean_drop"], m["perceptibility"], m["ssim"], m["folding_fraction"]] for m in audit["methods"]]
    return header, rows


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"
