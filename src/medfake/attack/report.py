"""The audit's outputs: results.json, results.md, attack.png and a self-contained report.html."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medfake.attack.problem import Outcome, Problem

WINDOW = (-160.0, 240.0)  # abdomen display window (HU)


def pick_slice(problem: Problem) -> int:
    """The slice with the most organ pixels."""
    return int(np.argmax((problem.slices.classes > 0).sum(axis=(1, 2))))


def grey(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)


def overlay(ax, hu: np.ndarray, classes: np.ndarray, count: int) -> None:
    from matplotlib import colormaps

    ax.imshow(grey(hu), cmap="gray", vmin=0, vmax=1)
    colours = colormaps["tab10"](np.arange(count) % 10)
    rgba = np.zeros(classes.shape + (4,))
    for k in range(1, count + 1):
        rgba[classes == k] = (*colours[k - 1][:3], 0.45)
    ax.imshow(rgba)


def deformed_grid(ax, u: np.ndarray, step: int = 6) -> None:
    """Lines of a regular grid moved by u (each point p drawn at p - u(p): where the content it shows came
    from is p + u(p), so the grid shows the motion of the tissue)."""
    h, w = u.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    gx, gy = xs - u[0], ys - u[1]
    for r in range(0, h, step):
        ax.plot(gx[r], gy[r], color="tab:blue", lw=0.5)
    for c in range(0, w, step):
        ax.plot(gx[:, c], gy[:, c], color="tab:blue", lw=0.5)
    ax.set_xlim(0, w - 1)
    ax.set_ylim(h - 1, 0)
    ax.set_aspect("equal")


def attack_figure(problem: Problem, outcomes: list[Outcome], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.io.atomic import atomic_file

    k = pick_slice(problem)
    classes = problem.classes - 1
    clean_pred = problem.clean_pred[k].cpu().numpy()
    figure = Figure(figsize=(15, 2.7 * len(outcomes)), dpi=80)
    FigureCanvasAgg(figure)
    titles = ["image", "segmentation S(x)", "adversarial image", "S(adversarial)", "u (grid)", "b (HU)"]
    limit = max(1.0, max(float(np.abs(o.b_hu[k]).max()) for o in outcomes))
    for row, outcome in enumerate(outcomes):
        axes = [figure.add_subplot(len(outcomes), 6, 6 * row + i + 1) for i in range(6)]
        axes[0].imshow(grey(problem.slices.images[k]), cmap="gray", vmin=0, vmax=1)
        overlay(axes[1], problem.slices.images[k], clean_pred, classes)
        axes[2].imshow(grey(outcome.adversarial_hu[k]), cmap="gray", vmin=0, vmax=1)
        overlay(axes[3], outcome.adversarial_hu[k], outcome.prediction[k], classes)
        deformed_grid(axes[4], outcome.u[k])
        shown = axes[5].imshow(outcome.b_hu[k], cmap="coolwarm", vmin=-limit, vmax=limit)
        figure.colorbar(shown, ax=axes[5], fraction=0.046)
        for i, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[i] if row == 0 else "", fontsize=9)
        axes[0].set_ylabel(outcome.method, fontsize=10)
    figure.suptitle(f"slice z={int(problem.slices.z[k])}, {problem.slices.pixel_mm:g} mm pixels")
    figure.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    return path


def comparison_rows(results: dict) -> tuple[list[str], list[list]]:
    organs = list(results["organs"])
    header = ["method", *[f"{o} Dice" for o in organs], "mean drop", "P", "P of b", "SSIM", "|u| mean/max mm",
              "folding", "bias HU", "s"]
    rows = [["clean", *[results["organs"][o]["dice_before"] for o in organs], 0.0, 0.0, 0.0, 1.0, "", "", "", ""]]
    for c in results["comparison"]:
        rows.append([c["method"] + (f" ({c['note']})" if c["note"] else ""),
                     *[c["organs"][o]["dice_after"] for o in organs], c["mean_drop"], c["perceptibility"],
                     c.get("perceptibility_bias"), c["ssim"],
                     f"{c['u_mean_mm']:.2f}/{c['u_max_mm']:.2f}", c["folding_fraction"],
                     f"{c['bias_min_hu']:.0f}..{c['bias_max_hu']:.0f}", c["seconds"]])
    return header, rows


def markdown_table(header: list[str], rows: list[list]) -> str:
    cell = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def chen_rows(results: dict) -> tuple[list[str], list[list]]:
    organs = list(results["organs"])
    header = ["row", *organs, "P", "folding"]
    return header, [[r["row"], *[r.get(o) for o in organs], r.get("perceptibility"), r.get("folding_fraction")]
                    for r in results["chen_table"]]


def write_outputs(folder: Path, problem: Problem, outcomes: list[Outcome], results: dict) -> None:
    from medfake.report import Section, write_report

    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    attack_figure(problem, outcomes, folder / "attack.png")
    header, rows = comparison_rows(results)
    target = f"requested drop {results['requested_drop']}" if results["requested_drop"] else f"alpha {results['alpha']}"
    md = [f"# Segmentation audit: {Path(results['scan']).name}", "",
          f"Target {results['target']}, mode {results['mode']}, {target}, {len(results['slices'])} slices at "
          f"{results['pixel_mm']:g} mm.", "", f"Perceptibility: {results['perceptibility_formula']}.",
          f"Dice: {results['label_views']}. Success: relative drop ≥ 30 %.", "", markdown_table(header, rows), "",
          "Dice against the original (unwarped) labels: " + ", ".join(
              f"{c['method']}: " + "/".join(f"{v['dice_after_unwarped']}" for v in c["organs"].values())
              for c in results["comparison"]), "", "![attack](attack.png)"]
    section = Section("audit", "Segmentation audit").text(
        f"Mode {results['mode']}, {target}; {results['perceptibility_formula']}; {results['label_views']}")
    section.table(header, rows).image(folder / "attack.png", "rows: methods; columns: image, S(x), adversarial, "
                                                             "S(adversarial), u as a deformed grid, b in HU")
    sections = [section]
    if "chen_table" in results:
        c_header, c_rows = chen_rows(results)
        md += ["", "## Chen et al. Table 1, on this scan (Dice after the attack)", "", markdown_table(c_header, c_rows)]
        sections.append(Section("chen", "Chen et al. Table 1 on this scan").table(c_header, c_rows))
    (folder / "results.md").write_text("\n".join(md) + "\n")
    sections.append(Section("config", "Configuration").code(results["attack_config"]))
    write_report(folder / "report.html", "medfake segmentation audit", sections)
