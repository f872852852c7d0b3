"""Grid-artefact monitor: spectral peaks of (output − input) at the generator's up-sampling periods.

Becker et al. saw grid-like patterns appear late in training (~160k steps at 256², ~45-50k at 512×408) and
chose checkpoints by eye. A stride-2 transposed convolution overlaps its kernel unevenly on even and odd
output pixels (Odena et al. 2016) in both axes alike, so two of them modulate the output by p(y)·p(x) with p of
period 4: lines at the frequencies 1/4 and 1/2 cycle/pixel on each axis *and off the axes* (the period-2
checkerboard sits at (1/2, 1/2)). Only the five distinct off-axis positions {1/4, 1/2}×{1/4, 1/2, 3/4} are
scored: the axis lines also collect every edge aligned with the image grid (a patch border, the chest wall),
which is not an up-sampling artefact, and made a resize-convolution run's clean outputs score like a grid.

Score of a direction: the changes of M held-out images are Hann-windowed and their periodograms averaged;
at each position, log10(bin / background) with the background the larger of two medians: the ring of bins
2..3 away, and the bins 2..3 away along the same ray from the origin. An edge or vessel puts a ridge through
the origin of the spectrum: under a ridge the ring's median is low and the ray's is not, so structure
at some angle is not taken for a peak (with the ring alone, differences of two real CT patches scored like a
faint grid: 0.80 instead of 0.47 at the 0.1% level for M = 12). The strongest position counts; a run's
score is the higher of its two directions.

Threshold from first principles, not from training curves: without a periodic component (a smooth local
spectrum), the averaged bin over its local level is a mean of M exponential variables, Gamma(M, 1/M) (the
(1/2, 1/2) bin of a real image is real-valued: Gamma(M/2, 2/M)); the backgrounds estimate that
distribution's median. `chance_threshold(M)` is the score that grid-free changes exceed with probability
`CHANCE_ALPHA` (0.1%) at one snapshot, over both directions' five positions: 1.25 for M = 1, 0.48 for
M = 12, 0.31 for M = 32. The law ignores the noise of the background estimate; simulated white changes
(M = 12) pass it 0.1% of the time, differences of two real CT patches 0.2% of 2,000 draws (benchmarks/cyclegan.py). Above
it the pattern is more than chance; it adapts to the number of held-out images scored.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np

CORE, RING = 1, 3  # a peak bin against the median of the ring of bins 2..3 away (a thin ring: the spectrum's slope cancels)
GRID_CSV, GRID_PNG = "grid.csv", "grid.png"
CHANCE_ALPHA = 1e-3  # false-alarm probability of the threshold at one snapshot (both directions)
DIRECTIONS = 2


def peak_positions(h: int, w: int) -> list[tuple[int, int]]:
    """FFT bins (ky, kx) of the distinct off-axis frequencies of periods 2 and 4 ((ky, kx) ≡ (−ky, −kx))."""
    seen, out = set(), []
    for fy in (0.25, 0.5):
        for fx in (0.25, 0.5, 0.75):
            ky, kx = int(round(h * fy)) % h, int(round(w * fx)) % w
            if (ky, kx) not in seen:
                seen |= {(ky, kx), ((-ky) % h, (-kx) % w)}
                out.append((ky, kx))
    return out


def power_spectrum(change: np.ndarray) -> np.ndarray:
    """Hann-windowed periodogram of a (H, W) change image (mean removed)."""
    change = np.asarray(change, dtype=np.float64)
    if change.ndim != 2 or min(change.shape) < 16:
        raise ValueError("the grid score needs a 2-D image of at least 16×16")
    window = np.outer(np.hanning(change.shape[0]), np.hanning(change.shape[1]))
    return np.abs(np.fft.fft2((change - change.mean()) * window)) ** 2


def peak_ratios(power: np.ndarray) -> dict[tuple[int, int], float]:
    """log10(bin / ring median) at each scored position."""
    floor = power.mean() * 1e-9 + 1e-30
    ring = np.ones((2 * RING + 1, 2 * RING + 1), dtype=bool)
    ring[RING - CORE: RING + CORE + 1, RING - CORE: RING + CORE + 1] = False
    out = {}
    for ky, kx in peak_positions(*power.shape):
        around = _around(power, ky, kx, RING)
        background = max(np.median(around[ring]), np.median(_along_ray(power, ky, kx)))
        out[ky, kx] = float(np.log10((around[RING, RING] + floor) / (background + floor)))
    return out


def _along_ray(power: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """The bins on the same ray from the origin as (ky, kx), 2 and 3 bins closer and farther (along the larger
    frequency: the ring's distance, outside the Hann window's ±1-bin leak)."""
    h, w = power.shape
    fy, fx = (ky if ky <= h // 2 else ky - h), (kx if kx <= w // 2 else kx - w)
    radius = max(abs(fy), abs(fx))
    steps = [(radius + d) / radius for d in (-RING, -CORE - 1, CORE + 1, RING)]
    return np.array([power[int(round(fy * t)) % h, int(round(fx * t)) % w] for t in steps])


def peak_score(power: np.ndarray) -> float:
    """The strongest position's log10(bin / ring median)."""
    return max(peak_ratios(power).values())


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


@lru_cache(maxsize=64)
def chance_threshold(images: int, alpha: float = CHANCE_ALPHA, directions: int = DIRECTIONS) -> float:
    """The run score that grid-free changes of `images` held-out images per direction exceed with probability
    `alpha` (see the module's docstring; `tests/test_cyclegan.py` checks it against simulated white changes)."""
    from scipy import optimize, stats

    m = max(1, int(images))
    shapes = [m] * 4 + [m / 2]  # the four complex positions and the real-valued (1/2, 1/2) bin
    laws = [stats.gamma(k, scale=1.0 / k) for k in shapes]
    level = stats.gamma(m, scale=1.0 / m).median()  # what the ring's median estimates

    def exceed(log_ratio: float) -> float:
        inside = np.prod([law.cdf(level * 10.0 ** log_ratio) for law in laws])
        return 1.0 - inside ** directions - alpha

    return float(round(optimize.brentq(exceed, 0.0, 4.0), 3))


# --- the curve over training ------------------------------------------------------------------------
def append_row(run: Path, step: int, scores: dict[str, float]) -> None:
    path = run / GRID_CSV
    rows = read_rows(run)
    rows = [r for r in rows if int(r["step"]) < step] + [{"step": step, **{k: _text(v) for k, v in scores.items()}}]
    write_rows(path, rows)


def write_rows(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _text(value) -> str:
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.4f}"


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
    write_rows(Path(run) / GRID_CSV, rows)


def row_threshold(row: dict, threshold: float | None) -> float:
    """`threshold`, or when None the chance level of the row's number of scored images."""
    if threshold is not None:
        return float(threshold)
    if row.get("threshold"):
        return float(row["threshold"])
    return chance_threshold(int(row.get("images") or 1))


def select_step(run: Path, threshold: float | None, available: list[int]) -> int | None:
    """The last snapshot (among `available`) below `threshold` (None: each snapshot's chance level) before
    the score crosses it again.

    A freshly initialised transposed-convolution generator has a checkerboard of its own that training first
    removes, so snapshots before the score first drops below the threshold are skipped; the artefacts Becker
    et al. saw are the ones that come back later."""
    chosen, below = None, False
    for row in sorted(read_rows(run), key=lambda r: int(r["step"])):
        if float(row["score"]) < row_threshold(row, threshold):
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
