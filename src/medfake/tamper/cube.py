"""Cubes around a location, resampled to an isotropic grid and back (only the cube, never the scan).

The isotropic grid is defined explicitly: `size` points per axis, `spacing` mm apart, along the scan's own
array axes, centred on the world point of the location's voxel (so a world and a voxel coordinate that name
the same voxel give the same cube). Its size is exact at any input spacing (CT-GAN defect 6), voxels outside
the scan read as -1000 HU (defect 7), and an in-plane rotation / flip / shift can be applied to the grid so
augmented training cubes are sampled straight from the scan's voxels (a stored view region) with a single
interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medfake.scan import Scan, cut_cube

SPLINE_MARGIN = 3  # extra source voxels per side so cubic interpolation never reads padding at the edge


@dataclass(frozen=True)
class IsoGrid:
    """An isotropic cube of `size`³ points `spacing` mm apart whose centre is the scan voxel `center`."""

    center: tuple[int, int, int]  # z,y,x voxel of the scan
    size: int = 32
    spacing: float = 1.0  # mm

    @property
    def half_extent_mm(self) -> float:
        return (self.size - 1) / 2.0 * self.spacing

    def offsets_mm(self) -> np.ndarray:
        """Offsets (mm) of the grid points from the centre along one axis."""
        return (np.arange(self.size) - (self.size - 1) / 2.0) * self.spacing

    def source_shape(self, scan_spacing, extra_mm: float = 0.0) -> np.ndarray:
        """Odd cuboid size in scan voxels that covers the grid (plus `extra_mm`) and the spline margin."""
        reach = (self.half_extent_mm + extra_mm) / np.asarray(scan_spacing, dtype=float)
        return 2 * (np.ceil(reach).astype(int) + SPLINE_MARGIN) + 1


View = tuple  # (rotation_deg, flip_y, flip_x, (dy, dx)): an in-plane rotation, flips and a shift in grid points
PLAIN_VIEW: View = (0.0, False, False, (0, 0))


def to_iso(scan: Scan, grid: IsoGrid) -> np.ndarray:
    """Sample the scan on the isotropic grid (float32 HU, cubic spline)."""
    return ViewSource.of(view_region(scan, grid, [PLAIN_VIEW]), scan.spacing).sample(grid, PLAIN_VIEW)


def region_shape(grid: IsoGrid, scan_spacing, views) -> np.ndarray:
    """Size (scan voxels) of the region around a location from which every one of `views` is sampled: the
    grid's reach plus the corners a rotation swings out, the largest shift and the spline margin."""
    max_shift = max((np.hypot(*v[3]) for v in views), default=0.0) * grid.spacing
    rotated = any(v[0] % 360 for v in views)
    extra_yx = (np.sqrt(2.0) - 1.0) * grid.half_extent_mm + grid.spacing if rotated else 0.0
    return grid.source_shape(scan_spacing, extra_mm=max(extra_yx, 0.0) + max_shift)


def view_region(scan: Scan, grid: IsoGrid, views) -> np.ndarray:
    """The scan's own voxels (its dtype; outside the scan: its pad value) that all `views` are sampled from."""
    return cut_cube(scan.voxels, grid.center, region_shape(grid, scan.spacing, views), scan.pad_value)


@dataclass(frozen=True)
class ViewSource:
    """A view region ready for interpolation: every view is one cubic-spline resampling of the scan's voxels
    (no rotate-then-crop, no padded corners)."""

    coeffs: np.ndarray  # spline coefficients of the region
    spacing: tuple[float, float, float]  # of the scan, z,y,x mm
    lo: float  # the region's value range: no spline overshoot beyond it
    hi: float

    @classmethod
    def of(cls, region: np.ndarray, spacing) -> "ViewSource":
        source = np.asarray(region, dtype=np.float32)
        coeffs = ndimage.spline_filter(source, order=3, mode="nearest")
        return cls(coeffs, tuple(float(s) for s in spacing), float(source.min()), float(source.max()))

    def sample(self, grid: IsoGrid, view: View) -> np.ndarray:
        """The grid's cube through one view (float32 HU); the grid's centre is the region's centre voxel."""
        rotation_deg, flip_y, flip_x, shift_yx = view
        zz, yy, xx = _grid_mm(grid, rotation_deg, flip_y, flip_x, shift_yx)
        centre = np.asarray(self.coeffs.shape) // 2  # cut_cube puts the centre voxel at index size//2
        spacing = self.spacing
        coords = np.stack([zz / spacing[0] + centre[0], yy / spacing[1] + centre[1], xx / spacing[2] + centre[2]])
        cube = ndimage.map_coordinates(self.coeffs, coords, order=3, mode="nearest", prefilter=False)
        return np.clip(cube, self.lo, self.hi).astype(np.float32)


def _grid_mm(grid: IsoGrid, rotation_deg, flip_y, flip_x, shift_yx):
    """World-aligned mm offsets (z,y,x) from the centre of every grid point after augmentation."""
    o = grid.offsets_mm()
    zz, yy, xx = np.meshgrid(o, o, o, indexing="ij")
    yy = yy + shift_yx[0] * grid.spacing
    xx = xx + shift_yx[1] * grid.spacing
    if flip_y:
        yy = -yy
    if flip_x:
        xx = -xx
    if rotation_deg % 360:
        t = np.deg2rad(rotation_deg)
        yy, xx = np.cos(t) * yy - np.sin(t) * xx, np.sin(t) * yy + np.cos(t) * xx
    return zz, yy, xx


def block_shape(scan_spacing, grid: IsoGrid) -> tuple[int, int, int]:
    """Odd size (z,y,x scan voxels) of the block of scan voxels the grid covers, centred on its centre voxel."""
    reach = np.floor(grid.half_extent_mm / np.asarray(scan_spacing, dtype=float) + 1e-9).astype(int)
    return tuple(int(n) for n in 2 * reach + 1)


def scan_block(scan: Scan, grid: IsoGrid) -> Scan:
    """The scan voxels the grid covers, as a crop that carries its geometry (`Scan.paste` puts it back);
    voxels beyond the scan read as its pad value."""
    return scan.crop(grid.center, block_shape(scan.spacing, grid))


def offsets_mm(shape, spacing) -> tuple[np.ndarray, ...]:
    """Per axis, the offsets (mm) of a block's voxels from its centre voxel."""
    return tuple((np.arange(n) - n // 2) * float(s) for n, s in zip(shape, spacing))


def distance_mm(block: Scan) -> np.ndarray:
    """Distance (mm) of every voxel of a block from its centre voxel."""
    zz, yy, xx = np.meshgrid(*offsets_mm(block.shape, block.spacing), indexing="ij")
    return np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)


def from_iso(cube: np.ndarray, grid: IsoGrid, block: Scan, order: int = 3) -> np.ndarray:
    """Resample an isotropic cube back onto the voxels of `block` (see `scan_block`), float32."""
    idx = [o / grid.spacing + (grid.size - 1) / 2.0 for o in offsets_mm(block.shape, block.spacing)]
    coords = np.stack(np.meshgrid(*idx, indexing="ij"))
    return ndimage.map_coordinates(np.asarray(cube, dtype=np.float32), coords, order=order,
                                   mode="nearest").astype(np.float32)
