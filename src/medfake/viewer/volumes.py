"""The volumes a viewer shows and the slices it sends: raw little-endian int16 HU (float32 for a heat map).

Planes are named by their normal: axial (fixed z), coronal (fixed y), sagittal (fixed x). A slice keeps the
array's own row order; the page flips coronal and sagittal rows so the head is up (`z_up` in the info).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medfake.errors import MedfakeError
from medfake.scan import Scan

PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
INT16 = np.iinfo(np.int16)


def as_int16(voxels: np.ndarray) -> np.ndarray:
    if voxels.dtype == np.int16:
        return np.ascontiguousarray(voxels)
    return np.clip(np.rint(np.asarray(voxels, dtype=np.float32)), INT16.min, INT16.max).astype(np.int16)


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    axis = PLANES[plane]
    if not 0 <= index < volume.shape[axis]:
        raise IndexError(f"{plane} slice {index} is outside 0..{volume.shape[axis] - 1}")
    return np.take(volume, index, axis=axis)


def slice_shape(shape: tuple[int, int, int], plane: str) -> tuple[int, int]:
    return tuple(n for axis, n in enumerate(shape) if axis != PLANES[plane])


def require_same_grid(scan: Scan, other: Scan, what: str) -> None:
    if other.shape != scan.shape:
        raise MedfakeError(f"{what} has shape {other.shape}, the scan {scan.shape}: they must share the voxel grid",
                           other.meta.get("path"))


def geometry(scan: Scan) -> dict:
    """What the page needs to turn voxels into millimetres and world coordinates."""
    return {"shape": list(scan.shape), "spacing": list(scan.spacing),
            "affine": scan.index_to_world_matrix().tolist(),  # (x, y, z index) → world x, y, z mm
            "z_up": bool(scan.voxel_to_world((1, 0, 0))[2] >= scan.voxel_to_world((0, 0, 0))[2]),
            "modality": scan.modality}


@dataclass
class Marker:
    """A point drawn on the slices: a manifest row's location or an edit made in this session."""

    zyx: tuple[int, int, int]
    label: str
    kind: str = "truth"  # truth | edit

    def as_dict(self) -> dict:
        return {"zyx": list(self.zyx), "label": self.label, "kind": self.kind}


@dataclass
class VolumeSet:
    """before (the scan), after (a compared or edited copy), their difference, and an optional heat map."""

    scan: Scan
    before: np.ndarray
    after: np.ndarray | None = None
    heat: np.ndarray | None = None
    markers: list[Marker] = field(default_factory=list)

    @classmethod
    def build(cls, scan: Scan, compare: Scan | None = None, heat: Scan | None = None,
              markers: list[Marker] | None = None, editable: bool = False) -> "VolumeSet":
        for other, what in ((compare, "--compare"), (heat, "--heatmap")):
            if other is not None:
                require_same_grid(scan, other, what)
        before = as_int16(scan.voxels)
        after = as_int16(compare.voxels) if compare is not None else (before.copy() if editable else None)
        heat_map = np.ascontiguousarray(heat.voxels, dtype=np.float32) if heat is not None else None
        return cls(scan, before, after, heat_map, list(markers or []))

    def volume(self, name: str) -> np.ndarray:
        if name == "before":
            return self.before
        if name == "after" and self.after is not None:
            return self.after
        if name == "heat" and self.heat is not None:
            return self.heat
        raise KeyError(name)

    def slice_bytes(self, name: str, plane: str, index: int) -> tuple[bytes, tuple[int, int]]:
        """One slice as bytes (int16, or float32 for the heat map) and its (rows, columns)."""
        if plane not in PLANES:
            raise KeyError(plane)
        if name == "diff":
            if self.after is None:
                raise KeyError(name)
            a = plane_slice(self.after, plane, index).astype(np.int32)
            values = as_int16(a - plane_slice(self.before, plane, index))
        else:
            values = plane_slice(self.volume(name), plane, index)
        dtype = "<f4" if name == "heat" else "<i2"
        return np.ascontiguousarray(values, dtype=dtype).tobytes(), values.shape

    def heat_range(self) -> list[float] | None:
        if self.heat is None:
            return None
        finite = self.heat[np.isfinite(self.heat)]
        sample = finite[:: max(1, finite.size // 2_000_000)]
        low, high = (np.percentile(sample, [50, 99.5]) if sample.size else (0.0, 1.0))
        return [float(low), float(max(high, low + 1e-6))]

    def info(self) -> dict:
        return {**geometry(self.scan), "volumes": ["before"] + (["after", "diff"] if self.after is not None else []),
                "heat": self.heat_range(), "markers": [m.as_dict() for m in self.markers]}
