"""`medfake attack segmentation`: audit one segmentation model on one labelled scan.

OUT: results.json, results.md, attack.png (image, segmentation, adversarial image, its segmentation, u as a
grid, b as a map; one row per method), report.html, run.json, and generator/ when a generator was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from medfake.attack.data import axial_slices, load_labelled
from medfake.attack.fields import jacobian_determinant, perceptibility, ssim
from medfake.attack.generator import GeneratorConfig, apply_generator, load_generator, train_generator
from medfake.attack.config import AttackConfig
from medfake.attack.optimize import optimize_fields, pgd_at_drop
from medfake.attack.problem import Outcome, Problem, mean_drop, relative_drops
from medfake.attack.target import load_target
from medfake.errors import MedfakeError

ALPHAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
SUCCESS_DROP = 0.3  # Chen et al.: an organ is successfully attacked at a 30 % relative Dice drop
MODES = ("generator", "optimize")
PERCEPTIBILITY = ("P = sqrt(mean((x_adv - x)^2)) / std(x) over all pixels of the attacked slices (HU), i.e. "
                  "sqrt((1/K) sum_k r_k^2) with r = x_adv - x on the slices z-scored per scan: the perceptibility of "
                  "Xie et al. 2017 after Szegedy et al., as Chen et al. use it; 'P of b' is the same measure of the "
                  "bias alone, x_adv against warp(x, u): the appearance change with the geometry factored out")
LABEL_VIEWS = ("dice_after: against the labels warped with u (the anatomy the adversarial image shows); "
               "dice_after_unwarped: against the original labels")


def summarise(problem: Problem, outcome: Outcome) -> dict:
    """Per-organ Dice and the perceptibility / field measures of one attack."""
    organs = [o.name for o in problem.target.organs]
    drops = relative_drops(problem.dice_before, outcome.dice_after)
    u_mm = np.linalg.norm(outcome.u, axis=1) * problem.pixel_mm
    det = jacobian_determinant(torch.from_numpy(outcome.u)).numpy()
    return {
        "method": outcome.method, "note": outcome.note,
        "organs": {name: {"dice_before": _num(problem.dice_before[k]), "dice_after": _num(outcome.dice_after[k]),
                          "dice_after_unwarped": _num(outcome.dice_after_unwarped[k]),
                          "relative_drop": _num(drops[k]),
                          "success_30": bool(drops[k] >= SUCCESS_DROP) if np.isfinite(drops[k]) else None}
                   for k, name in enumerate(organs)},
        "mean_drop": _num(np.nanmean(drops)),
        "perceptibility": _num(perceptibility(problem.slices.images, outcome.adversarial_hu)),
        "ssim": _num(ssim(problem.slices.images, outcome.adversarial_hu)),
        "u_mean_mm": _num(u_mm.mean()), "u_max_mm": _num(u_mm.max()),
        "folding_fraction": _num(float(np.mean(det <= 0))),
        "bias_min_hu": _num(outcome.b_hu.min()), "bias_max_hu": _num(outcome.b_hu.max()),
        "perceptibility_bias": _num(np.sqrt(np.mean(outcome.b_hu ** 2)) / (np.std(problem.slices.images) + 1e-8)),
        "seconds": round(outcome.seconds, 3), "iterations": outcome.iterations,
        "calibration": outcome.calibration,
    }


def _num(value) -> float | None:
    value = float(value)
    return round(value, 5) if np.isfinite(value) else None


def run_attack(problem: Problem, mode: str, attack: AttackConfig, generator: Path | None,
               gen_config: GeneratorConfig, train_dir: Path | None, show_progress: bool = True) -> Outcome:
    if mode == "optimize":
        return optimize_fields(problem, attack)
    if generator is None:
        if train_dir is None:
            raise MedfakeError("generator mode needs a trained generator (--generator) or a folder to train one")
        generator = train_generator(problem, train_dir, gen_config, attack, show_progress=show_progress)
    gen, info = load_generator(generator, problem.device)
    return apply_generator(problem, gen, attack, rescale_bias=info["std_hu"] / problem.std)


def audit(target_path: Path, scan_path: Path, labels_path: Path, out: Path, attack: AttackConfig,
          mode: str = "optimize", generator: Path | None = None, gen_config: GeneratorConfig | None = None,
          baselines: bool = True, table: bool = False, overwrite: bool = False, show_progress: bool = True,
          slices: str | None = None) -> dict:
    from medfake.io.atomic import atomic_dir
    from medfake.runinfo import write_run_record

    if mode not in MODES:
        raise MedfakeError(f"mode must be generator or optimize, not '{mode}'")
    gen_config = gen_config or GeneratorConfig()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the generator's loop picks the same (accelerate)
    target = load_target(target_path, device)
    scan, labels = load_labelled(scan_path, labels_path)
    stack = axial_slices(scan, labels, target.organs, target.pixel_mm, z=slice_range(slices, scan.shape[0]))
    problem = Problem(target, stack, attack.margin, device)
    meta = {"scan": str(scan_path), "labels": str(labels_path), "target": str(target_path)}
    with atomic_dir(out, overwrite) as tmp:
        results = audit_problem(problem, tmp, attack, mode, generator, gen_config, baselines, table, show_progress,
                                meta)
        write_run_record(tmp, {"attack": asdict(attack), "mode": mode, "generator": asdict(gen_config)}, attack.seed)
    return results


def audit_problem(problem: Problem, folder: Path, attack: AttackConfig, mode: str = "optimize",
                  generator: Path | None = None, gen_config: GeneratorConfig | None = None, baselines: bool = True,
                  table: bool = False, show_progress: bool = True, meta: dict | None = None) -> dict:
    """Attack prepared slices, compare with the baselines and write results.json/md, attack.png, report.html
    into `folder` (also the benchmark matrix's audit stage)."""
    from medfake.attack.report import write_outputs

    gen_config = gen_config or GeneratorConfig()
    main = run_attack(problem, mode, attack, generator, gen_config, folder / "generator", show_progress)
    rows = [main]
    if baselines:
        rows += compare_baselines(problem, attack, mean_drop(problem, main))
    chen = chen_table(problem, mode, attack, gen_config, folder, show_progress) if table else None
    results = {**(meta or {}), "mode": mode, "method": main.method, "alpha": attack.alpha,
               "requested_drop": attack.drop, "slices": [int(z) for z in problem.slices.z],
               "pixel_mm": problem.pixel_mm, "perceptibility_formula": PERCEPTIBILITY, "label_views": LABEL_VIEWS,
               "success_threshold": SUCCESS_DROP, "attack_config": asdict(attack)}
    main_summary = summarise(problem, main)
    results.update({k: main_summary[k] for k in ("perceptibility", "perceptibility_bias", "ssim", "u_mean_mm",
                                                 "u_max_mm", "folding_fraction", "bias_min_hu", "bias_max_hu",
                                                 "mean_drop", "organs", "seconds")})
    results["comparison"] = [summarise(problem, o) for o in rows]
    if chen is not None:
        results["chen_table"] = chen
    write_outputs(folder, problem, rows, results)
    return results


def slice_range(spec: str | None, count: int) -> list[int] | None:
    """`A:B` → slices A..B-1 (None: every slice holding an organ)."""
    if not spec:
        return None
    try:
        first, last = (int(v) for v in spec.split(":"))
    except ValueError:
        raise MedfakeError(f"--slices takes A:B (slice indices, B excluded), not '{spec}'") from None
    if not 0 <= first < last <= count:
        raise MedfakeError(f"--slices {spec} is outside the scan's 0:{count}")
    return list(range(first, last))


def compare_baselines(problem: Problem, attack: AttackConfig, achieved: float) -> list[Outcome]:
    """Deformation-only and bias-only with the same α/drop; PGD and FGSM with ε matched to the achieved drop."""
    out = [optimize_fields(problem, replace(attack, components=c)) for c in ("deformation", "bias")]
    if np.isfinite(achieved) and achieved > 0:
        out += [pgd_at_drop(problem, achieved), pgd_at_drop(problem, achieved, fgsm=True)]
    return out


def chen_table(problem: Problem, mode: str, attack: AttackConfig, gen_config: GeneratorConfig, tmp: Path,
               show_progress: bool) -> list[dict]:
    """Chen et al.'s Table 1 on this scan: clean, the 30 % line, one row per α, and φ-only / b-only at α = 2."""
    organs = [o.name for o in problem.target.organs]
    rows = [{"row": "clean", **dict(zip(organs, map(_num, problem.dice_before))), "perceptibility": None},
            {"row": "30% decrease (success threshold)",
             **dict(zip(organs, map(_num, 0.7 * problem.dice_before))), "perceptibility": None}]
    for alpha in ALPHAS:
        config = replace(attack, alpha=alpha, drop=None)
        outcome = run_attack(problem, mode, config, None, gen_config, tmp / f"generator_alpha{alpha:g}", show_progress)
        rows.append(table_row(problem, outcome, f"alpha = {alpha:g}"))
    for component, label in (("deformation", "deformation u only (alpha = 2)"), ("bias", "bias b only (alpha = 2)")):
        outcome = optimize_fields(problem, replace(attack, alpha=2.0, drop=None, components=component))
        rows.append(table_row(problem, outcome, label))
    return rows


def table_row(problem: Problem, outcome: Outcome, label: str) -> dict:
    summary = summarise(problem, outcome)
    return {"row": label, **{k: v["dice_after"] for k, v in summary["organs"].items()},
            "perceptibility": summary["perceptibility"], "folding_fraction": summary["folding_fraction"]}


def dump(results: dict) -> str:
    return json.dumps(results, indent=2, default=str)
