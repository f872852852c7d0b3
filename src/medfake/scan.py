"""The one scan type: voxels (z,y,x) with the geometry that places them in the patient (LPS) frame.

Voxel coordinates are z,y,x indices (CT-GAN's order); world coordinates are x,y,z millimetres (LUNA16's
order). The direction matrix follows SimpleITK/ITK: column k is the unit vector of array axis k in
x,y,z order (column 0 = the x/column axis, 2 = the z/slice axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from medfake.errors import MedfakeError

AIR_HU = -1000.0


def nearest_index(coords: Sequence[float] | np.ndarray) -> np.ndarray:
    """Round continuous voxel coordinates to the nearest index, halves upwards (never truncate)."""
    return np.floor(np.asarray(coords, dtype=float) + 0.5).astype(int)


@dataclass
class Scan:
    voxels: np.ndarray
    spacing: tuple[float, float, float]  # z, y, x (mm)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, z (mm) of voxel (0,0,0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "CT"
    meta: dict[str, Any] = field(default_factory=dict)  # source format, headers for writing back
    path: str | None = None  # the file or DICOM folder it was read from (never written to)

    def __post_init__(self):
        if self.voxels.ndim != 3:
            raise MedfakeError(f"expected a 3-D volume, got shape {self.voxels.shape}", self.path)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        path = self.path
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise MedfakeError(f"spacing and origin need 3 values, got {self.spacing} and {self.origin}", path)
        if not all(np.isfinite(self.spacing)) or any(s <= 0 for s in self.spacing):
            raise MedfakeError(f"spacing must be positive, got {self.spacing}", path)
        if not np.all(np.isfinite(self.origin)) or not np.all(np.isfinite(self.direction)):
            raise MedfakeError("origin and direction must be finite numbers", path)
        if abs(np.linalg.det(self.direction)) < 1e-6:
            raise MedfakeError("direction matrix is singular (axes are parallel)", path)

    # --- geometry -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)

    @property
    def spacing_xyz(self) -> np.ndarray:
        return np.asarray(self.spacing[::-1])

    @property
    def pad_value(self) -> float:
        return AIR_HU if self.modality == "CT" else float(np.min(self.voxels))

    def index_to_world_matrix(self) -> np.ndarray:
        """4x4 affine from continuous (x,y,z) index to world (x,y,z) mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing_xyz)
        affine[:3, 3] = self.origin
        return affine

    def voxel_to_world(self, zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """z,y,x voxel coordinates (one point or N×3) → x,y,z world mm."""
        pts = np.atleast_2d(np.asarray(zyx, dtype=float))[:, ::-1]
        world = pts @ (self.direction @ np.diag(self.spacing_xyz)).T + np.asarray(self.origin)
        return world[0] if np.ndim(zyx) == 1 else world

    def world_to_continuous(self, xyz: Sequence[float] | np.ndarray) -> np.ndarray:
        """x,y,z world mm → continuous z,y,x voxel coordinates (any direction matrix)."""
        pts = np.atleast_2d(np.asarray(xyz, dtype=float)) - np.asarray(self.origin)
        index_xyz = np.linalg.solve(self.direction @ np.diag(self.spacing_xyz), pts.T).T
        zyx = index_xyz[:, ::-1]
        return zyx[0] if np.ndim(xyz) == 1 else zyx

    def world_to_voxel(self, xyz: Sequence[float] | np.ndarray) -> np.ndarray:
        """x,y,z world mm → nearest z,y,x voxel index (rounded, never truncated)."""
        return nearest_index(self.world_to_continuous(xyz))

    def contains(self, zyx: Sequence[float]) -> bool:
        """True when the voxel nearest to z,y,x lies inside the volume."""
        idx = nearest_index(zyx)
        return bool(np.all(idx >= 0) and np.all(idx < np.asarray(self.shape)))

    def require_inside(self, zyx: Sequence[float], label: str = "coordinate") -> np.ndarray:
        if not self.contains(zyx):
            raise MedfakeError(
                f"{label} z,y,x=({', '.join(f'{v:.1f}' for v in np.asarray(zyx, float))}) is outside the scan "
                f"of shape {tuple(int(n) for n in self.shape)}",
                self.path,
            )
        return nearest_index(zyx)

    def same_grid(self, other: "Scan", tolerance_mm: float = 1e-3) -> bool:
        """True when `other` has this scan's full geometry: shape, spacing, origin and direction."""
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, atol=tolerance_mm)
                and np.allclose(self.origin, other.origin, atol=tolerance_mm)
                and np.allclose(self.direction, other.direction, atol=1e-6))

    def require_same_grid(self, other: "Scan", what: str = "label volume") -> None:
        if not self.same_grid(other):
            raise MedfakeError(
                f"{what} does not lie on the scan's grid (shape {other.shape} vs {self.shape}, spacing "
                f"{_fmt(other.spacing)} vs {_fmt(self.spacing)}, origin {_fmt(other.origin)} vs {_fmt(self.origin)})",
                other.path)

    # --- cuboids (TorchIO's way: a crop is a Scan whose origin moved) ---------------------------
    def crop_box(self, start_zyx: Sequence[int], stop_zyx: Sequence[int], pad: float | None = None) -> "Scan":
        """The voxels in [start, stop) as a Scan placed where they lie in the patient; outside is `pad`."""
        start = np.asarray(start_zyx, dtype=int)
        voxels = cut_box(self.voxels, start, np.asarray(stop_zyx, dtype=int), self.pad_value if pad is None else pad)
        origin = tuple(self.voxel_to_world(start.astype(float)))
        return replace(self, voxels=voxels, origin=origin, meta=dict(self.meta))

    def crop(self, center_zyx: Sequence[int], shape_zyx: Sequence[int], pad: float | None = None) -> "Scan":
        """The cuboid of `shape` centred on `center` (see `cube_bounds`), carrying its geometry."""
        start, stop = cube_bounds(center_zyx, shape_zyx)
        return self.crop_box(start, stop, pad)

    def offset_of(self, crop: "Scan") -> np.ndarray:
        """Voxel index in this scan of the crop's first voxel (the crop must share spacing and direction)."""
        if not (np.allclose(crop.spacing, self.spacing) and np.allclose(crop.direction, self.direction)):
            raise MedfakeError("the crop does not share this scan's spacing and direction", crop.path)
        return nearest_index(self.world_to_continuous(crop.origin))

    def paste(self, crop: "Scan", weight: np.ndarray | None = None) -> "Scan":
        """A copy with `crop` put back where it lies (parts outside are dropped); with `weight` (0..1, the
        crop's shape) each voxel becomes weight·crop + (1 − weight)·this."""
        start = self.offset_of(crop)
        return self.with_voxels(paste_box(self.voxels, crop.voxels, start, weight))

    def cut_cube(self, center_zyx: Sequence[int], shape_zyx: Sequence[int], pad: float | None = None) -> np.ndarray:
        return cut_cube(self.voxels, center_zyx, shape_zyx, self.pad_value if pad is None else pad)

    def with_voxels(self, voxels: np.ndarray, **changes) -> "Scan":
        """A scan with the same geometry and metadata but new voxels (metadata is copied, not shared)."""
        meta = changes.pop("meta", dict(self.meta))
        return replace(self, voxels=voxels, meta=meta, **changes)


def mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box (slices) of a mask's True voxels; None when there is none. Reads the mask through its
    projections, so no index array of the whole volume is made."""
    where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)]
    if any(w.size == 0 for w in where):
        return None
    return tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)


def cube_bounds(center_zyx: Sequence[int], shape_zyx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and stop (exclusive) of a cuboid of `shape` whose centre voxel is `center`.

    For even sizes the centre is the voxel just after the middle (start = c - size//2)."""
    center = nearest_index(center_zyx)
    shape = np.asarray(shape_zyx, dtype=int)
    start = center - shape // 2
    return start, start + shape


def overlap(start, stop, vol_shape) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """The one clip under every crop and paste: for the box [start, stop) against a volume of `vol_shape`,
    (slices into the volume, slices into the box) of the part they share, or None when they share nothing."""
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, np.asarray(vol_shape, dtype=int))
    if np.any(hi <= lo):
        return None
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    return src, dst


def cut_box(volume: np.ndarray, start, stop, pad: float) -> np.ndarray:
    """Copy of volume[start:stop] (any number of axes); voxels outside the volume are `pad`."""
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    out = np.full(tuple(stop - start), pad, dtype=volume.dtype)
    ov = overlap(start, stop, volume.shape)
    if ov is not None:
        src, dst = ov
        out[dst] = volume[src]
    return out


def cut_cube(volume: np.ndarray, center_zyx, shape_zyx, pad: float) -> np.ndarray:
    """Copy of a cuboid around `center`; voxels outside the volume are `pad`."""
    start, stop = cube_bounds(center_zyx, shape_zyx)
    return cut_box(volume, start, stop, pad)


def paste_cube(volume: np.ndarray, cube: np.ndarray, center_zyx, weight: np.ndarray | None = None) -> np.ndarray:
    """Copy of `volume` with `cube` pasted around `center` (parts outside the volume are dropped).

    With `weight` (same shape as cube, 0..1) the result is weight*cube + (1-weight)*volume."""
    start, _ = cube_bounds(center_zyx, cube.shape)
    return paste_box(volume, cube, start, weight)


def paste_box(volume: np.ndarray, box: np.ndarray, start, weight: np.ndarray | None = None) -> np.ndarray:
    """Copy of `volume` with `box` written from index `start` on (clipped; integer volumes are rounded)."""
    out = volume.copy()
    start = np.asarray(start, dtype=int)
    ov = overlap(start, start + np.asarray(box.shape), volume.shape)
    if ov is None:
        return out
    src, dst = ov
    cube = box
    patch = cube[dst]
    if weight is not None:
        w = weight[dst]
        patch = w * patch + (1.0 - w) * volume[src]
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        patch = np.clip(np.rint(patch), info.min, info.max)
    out[src] = patch.astype(out.dtype)
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
