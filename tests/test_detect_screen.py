"""Screening with a scan-level detector on the real lung1 CT: the map stays on its coarse grid, the findings are
its highest cells `separation_mm` apart (non-maximum suppression, no sort of the lung voxels), and the saved
map on the scan's grid agrees with both."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.detect.detectors import load_detector
from medfake.detect.gridmap import GridMap, grid_peaks
from medfake.detect.screen import screen_scan
from medfake.stats import robust_sigma


@pytest.fixture(scope="module")
def screening(lung1):
    return screen_scan(lung1, load_detector("selfref"), top=8, separation_mm=20.0)


def test_the_map_stays_on_a_coarse_grid_and_is_a_robust_z_score(lung1, lung1_lungs, screening):
    grid = screening.grid
    assert grid.factor == 4  # round(2 mm / 0.57 mm pixels)
    assert grid.values.dtype == np.float32 and grid.values.size * 12 < lung1.voxels.size
    measured = grid.values[np.isfinite(grid.values)]
    assert measured.size > 10_000
    assert abs(float(np.median(measured))) < 1e-3 and robust_sigma(measured) == pytest.approx(1.0, abs=1e-3)
    # slabs that leave the scan are not scored: lung1's 5 mm slices give a 6 mm slab one slice on each side
    assert not np.isfinite(grid.values[0]).any() and not np.isfinite(grid.values[-1]).any()
    full = screening.anomaly
    assert full.dtype == np.float16 and full.shape == lung1.shape and not full[~lung1_lungs].any()


def test_findings_are_the_highest_cells_apart_from_each_other(lung1, lung1_lungs, screening):
    findings = screening.findings
    assert len(findings) == 8 and screening.scan_score == findings[0].score
    scores = [f.score for f in findings]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(float(np.nanmax(screening.grid.values)))
    spacing = np.asarray(lung1.spacing)
    for i, a in enumerate(findings):
        assert lung1_lungs[a.voxel_zyx]
        for b in findings[i + 1:]:
            assert np.linalg.norm(np.subtract(a.voxel_zyx, b.voxel_zyx) * spacing) > 20.0 - 2 * 4 * spacing[1]
    full = screening.anomaly
    for f in findings:
        assert float(full[f.voxel_zyx]) == pytest.approx(f.score, rel=2e-3, abs=2e-3)
        assert f.world_xyz == pytest.approx(tuple(lung1.voxel_to_world(f.voxel_zyx)))
    # every cell that no finding suppressed lies below the last finding
    picked = np.zeros(screening.grid.values.shape, bool)
    cell_mm = spacing * [1, 4, 4]
    cells = np.argwhere(np.isfinite(screening.grid.values))
    for f in findings:
        c = (np.subtract(f.voxel_zyx, screening.grid.corner)) // [1, 4, 4]
        near = np.linalg.norm((cells - c) * cell_mm, axis=1) <= 20.0
        picked[tuple(cells[near].T)] = True
    rest = screening.grid.values[np.isfinite(screening.grid.values) & ~picked]
    assert rest.size and rest.max() <= scores[-1]


def test_peaks_on_a_small_grid_are_exact():
    values = np.full((3, 6, 6), np.nan, np.float32)
    values[1, 2, 2], values[1, 2, 3], values[2, 5, 5], values[0, 0, 0] = 9.0, 8.0, 7.0, 1.0
    grid = GridMap(values, 2, (10, 4, 4), (20, 20, 20))
    peaks = grid_peaks(grid, (1.0, 1.0, 1.0), top=5, separation_mm=2.5)
    assert peaks == [((1, 2, 2), 9.0), ((2, 5, 5), 7.0), ((0, 0, 0), 1.0)]  # (1, 2, 3) lies 2 mm from the first
    assert grid.cell_voxel((1, 2, 2)) == (11, 9, 9) and grid.cell_voxel((2, 5, 5)) == (12, 15, 15)
    assert grid.slice_at(11)[8:10, 8:10].tolist() == [[9.0, 9.0], [9.0, 9.0]] and grid.slice_at(0).max() == 0
