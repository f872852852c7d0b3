"""Figures of the detectors: loss curves, patch grids, screening heat-map overlays (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfake.io.atomic import atomic_file


def _save_figure(figure, path: Path) -> Path:
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    return path


def save_loss_curve(losses: np.ndarray, path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", lw=0.8, label="per step")
    if len(losses) >= 10:
        width = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1:], smooth, color="C0", lw=1.5, label=f"mean of {width}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    if len(losses) and np.all(losses > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_patch_grid(rows: list[np.ndarray], labels: list[str], path: Path) -> Path:
    """One row per (N, 1, P, P) array of [0, 1] patches, labelled on the left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(r) for r in rows)
    figure = Figure(figsize=(1.3 * n + 1.2, 1.4 * len(rows)), dpi=100)
    FigureCanvasAgg(figure)
    for r, (patches, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = figure.add_subplot(len(rows), n, r * n + c + 1)
            ax.axis("off")
            if c < len(patches):
                ax.imshow(np.clip(patches[c, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_title(label, fontsize=7, loc="left")
    figure.tight_layout()
    return _save_figure(figure, path)
