"""Grid-artefact monitor: spectral peaks of (output − input) at the generator's up-sampling periods.

Becker et al. saw grid-like patterns appear late in training (~160k steps at 256², ~45-50k at 512×408) and
chose checkpoints by eye. Two stride-2 transposed convolutions leave periodic patterns of period 2 and 4
pixels (uneven kernel overlap, Odena et al. 2016), i.e. peaks at the frequencies 0, ±1/4 and 1/2 cycles/pixel
on each axis. The score is the strongest peak over those positions (except the DC term), as log10 of its
power over the median power of the ring of bins around it; for a run, the spectra of the held-out images'
changes are averaged first. Natural images and a smooth change have no such isolated peaks (score ≈ 0.3-0.7);
a visible grid gives ≥ 1 (10× its surroundings).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CORE, RING = 1, 3  # a peak bin against the median of the ring of bins 2..3 away (a thin ring: the spectrum's slope cancels)
GRID_CSV, GRID_PNG = "grid.csv", "grid.png"


def peak_bins(n: int) -> list[int]:
    """FFT bins of the frequencies 0, 1/4, 1/2, 3/4 cycles/pixel along an axis of n points."""
    return sorted({int(round(n * f)) % n for f in (0.0, 0.25, 0.5, 0.75)})


def power_spectrum(change: np.ndarray) -> np.ndarray:
    """Hann-windowed periodogram of a (H, W) change image (mean removed)."""
    change = np.asarray(change, dtype=np.float64)
    if change.ndim != 2 or min(change.shape) < 8:
        raise ValueError("the grid score needs a 2-D image of at least 8×8")
    window = np.outer(np.hanning(change.shape[0]), np.hanning(change.shape[1]))
    return np.abs(np.fft.fft2((change - change.mean()) * window)) ** 2


def peak_score(power: np.ndarray) -> float:
    """log10(peak / ring median) of the strongest bin at the up-sampling periods (DC excluded)."""
    h, w = power.shape
    floor = power.mean() * 1e-9 + 1e-30
    ring = np.ones((2 * RING + 1, 2 * RING + 1), dtype=bool)
    ring[RING - CORE: RING + CORE + 1, RING - CORE: RING + CORE + 1] = False
    best = -np.inf
    for ky in peak_bins(h):
        for kx in peak_bins(w):
            if ky == 0 and kx == 0:
                continue
            around = _around(power, ky, kx, RING)
            best = max(best, np.log10((around[RING, RING] + floor) / (np.median(around[ring]) + floor)))
    return float(best)


def grid_score(change: np.ndarray) -> float:
    """Grid score of one (H, W) change image (output − input)."""
    return peak_score(power_spectrum(change))


def _around(power: np.ndarray, ky: int, kx: int, r: int) -> np.ndarray:
    """(2r+1)² bins centred on (ky, kx), wrapping round (the spectrum is periodic)."""
    ys = (np.arange(ky - r, ky + r + 1)) % power.shape[0]
    xs = (np.arange(kx - r, kx + r + 1)) % power.shape[1]
    return power[np.ix_(ys, xs)]


def run_score(outputs: np.ndarray, inputs: np.ndarray) -> float:
    """Grid score of (N, C, H, W) generator outputs against their inputs: the images' spectra are averaged
    first, so a pattern shared by all stands out and chance peaks of single spectra average away."""
    changes = (np.asarray(outputs, dtype=np.float64) - np.asarray(inputs, dtype=np.float64)).mean(axis=1)
    return peak_score(np.mean([power_spectrum(c) for c in changes], axis=0))


# --- the curve over training ------------------------------------------------------------------------
def append_row(run: Path, step: int, scores: dict[str, float]) -> None:
    path = run / GRID_CSV
    rows = read_rows(run)
    rows = [r for r in rows if int(r["step"]) < step] + [{"step": step, **{k: f"{v:.4f}" for k, v in scores.items()}}]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[-1].keys()))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(run: Path) -> list[dict]:
    path = Path(run) / GRID_CSV
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def truncate(run: Path, step: int) -> None:
    """Drop rows after `step` (a resume continues from the checkpoint; later rows were never saved)."""
    rows = [r for r in read_rows(run) if int(r["step"]) <= step]
    if not rows:
        (Path(run) / GRID_CSV).unlink(missing_ok=True)
        return
    with open(Path(run) / GRID_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def select_step(run: Path, threshold: float, available: list[int]) -> int | None:
    """The last snapshot (among `available`) below `threshold` before the score crosses it again.

    A freshly initialised transposed-convolution generator has a checkerboard of its own that training first
    removes, so snapshots before the score first drops below the threshold are skipped; the artefacts Becker
    et al. saw are the ones that come back later."""
    chosen, below = None, False
    for row in sorted(read_rows(run), key=lambda r: int(r["step"])):
        if float(row["score"]) < threshold:
            below = True
            chosen = int(row["step"]) if int(row["step"]) in available else chosen
        elif below:
            break
    return chosen


def plot_curves(curves: dict[str, list[tuple[int, float]]], threshold: float, path: Path,
                selected: dict[str, int] | None = None, title: str = "grid score") -> Path:
    """One line per run (step, score), the threshold, and the selected snapshot of each run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.io.atomic import atomic_file

    figure = Figure(figsize=(5.5, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    for name, points in curves.items():
        if points:
            steps, scores = zip(*points)
            line, = ax.plot(steps, scores, marker="o", ms=3, label=name)
            if selected and selected.get(name) is not None:
                ax.axvline(selected[name], color=line.get_color(), ls=":", lw=1)
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="training step", ylabel="log10 peak / background", title=title)
    ax.legend(fontsize=8)
    figure.tight_layout()
    with atomic_file(Path(path), overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)
