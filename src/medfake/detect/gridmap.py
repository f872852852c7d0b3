"""An anomaly map on a coarse in-plane grid, and its findings by non-maximum suppression.

Screening measures its statistics on a grid of ≈ 2 mm cells; the map stays on that grid (a 512×512×300 CT
gives ≈ 5 M cells, 1/16 of the voxels) and only the outputs that need the scan's own grid (the saved map, the
overlays) are expanded, slice by slice. The findings are picked on the grid, the highest cell first, each
suppressing the cells within the separation around it: no sort of every lung voxel, no full-volume copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GridMap:
    """Cell (k, j, i) covers voxels z0 + k, y0 + j·f … y0 + (j+1)·f − 1, x0 + i·f … (the last cells clipped to the
    scan). `values`: (z, ny, nx) float32, NaN where nothing was measured."""

    values: np.ndarray
    factor: int
    corner: tuple[int, int, int]  # z0, y0, x0
    shape: tuple[int, int, int]  # the scan's

    def expand(self, k: int) -> np.ndarray:
        """Cell row k on the scan's in-plane grid (float32, NaN where unmeasured and outside the grid)."""
        out = np.full(self.shape[1:], np.nan, np.float32)
        f, (_, y0, x0) = self.factor, self.corner
        block = np.repeat(np.repeat(self.values[k], f, axis=0), f, axis=1)
        h, w = min(block.shape[0], self.shape[1] - y0), min(block.shape[1], self.shape[2] - x0)
        out[y0:y0 + h, x0:x0 + w] = block[:h, :w]
        return out

    def slice_at(self, z: int, region: np.ndarray | None = None) -> np.ndarray:
        """The map on slice z of the scan's grid: 0 where unmeasured and outside `region` (one slice of it)."""
        k = z - self.corner[0]
        if not 0 <= k < self.values.shape[0]:
            return np.zeros(self.shape[1:], np.float32)
        out = np.nan_to_num(self.expand(k), nan=0.0)
        return out if region is None else out * region

    def full(self, region: np.ndarray | None = None, dtype=np.float16) -> np.ndarray:
        """The whole map on the scan's grid, built slice by slice in `dtype` (float16: the int16 volume's size)."""
        out = np.zeros(self.shape, dtype)
        for k in range(self.values.shape[0]):
            z = self.corner[0] + k
            out[z] = self.slice_at(z, None if region is None else region[z])
        return out

    def mip(self) -> np.ndarray:
        """Maximum over z on the scan's in-plane grid (0 where nothing was measured)."""
        finite = np.isfinite(self.values)
        if not finite.any():
            return np.zeros(self.shape[1:], np.float32)
        top = np.where(finite, self.values, -np.inf).max(axis=0)
        expanded = GridMap(np.where(np.isfinite(top), top, np.nan)[None].astype(np.float32), self.factor,
                           (0, *self.corner[1:]), (1, *self.shape[1:])).expand(0)
        return np.nan_to_num(expanded, nan=0.0)

    def cell_voxel(self, cell, region: np.ndarray | None = None) -> tuple[int, int, int]:
        """The voxel a finding at `cell` reports: the cell's centre, or its region voxel nearest the centre."""
        f, (z0, y0, x0) = self.factor, self.corner
        k, j, i = (int(v) for v in cell)
        y, x = y0 + j * f, x0 + i * f
        y1, x1 = min(y + f, self.shape[1]), min(x + f, self.shape[2])
        centre = np.array([min(y + f // 2, y1 - 1), min(x + f // 2, x1 - 1)])
        if region is not None and not region[z0 + k, centre[0], centre[1]]:
            inside = np.argwhere(region[z0 + k, y:y1, x:x1]) + (y, x)
            if len(inside):
                centre = inside[np.argmin(((inside - centre) ** 2).sum(axis=1))]
        return z0 + k, int(centre[0]), int(centre[1])


def grid_peaks(grid: GridMap, spacing, top: int, separation_mm: float) -> list[tuple[tuple[int, int, int], float]]:
    """The `top` highest cells, each at least `separation_mm` from those picked before: (cell, value)."""
    work = np.where(np.isfinite(grid.values), grid.values, -np.inf)
    cell_mm = np.array([spacing[0], spacing[1] * grid.factor, spacing[2] * grid.factor], float)
    reach = np.floor(separation_mm / cell_mm).astype(int)
    axes = [np.arange(-r, r + 1) * s for r, s in zip(reach, cell_mm)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= separation_mm ** 2
    out = []
    while len(out) < top:
        cell = np.unravel_index(int(np.argmax(work)), work.shape)
        value = float(work[cell])
        if not np.isfinite(value):
            break
        out.append((tuple(int(c) for c in cell), value))
        lo = [c - r for c, r in zip(cell, reach)]
        view = work[tuple(slice(max(0, a), a + len(ax)) for a, ax in zip(lo, axes))]
        view[ball[tuple(slice(max(0, -a), max(0, -a) + n) for a, n in zip(lo, view.shape))]] = -np.inf
    return out
