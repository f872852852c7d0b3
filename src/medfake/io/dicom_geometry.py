"""Geometry of a stack of DICOM images: slice order, spacing, origin, direction, gaps.

Slices are sorted by ImagePositionPatient projected on the normal of ImageOrientationPatient; the z
spacing is the typical distance between neighbours. A gap that is a whole multiple of that spacing is
"missing slices" (the volume gets empty slots there, so positions stay right); other deviations are
reported as uneven spacing. Images without position/orientation get a placeholder geometry and a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medfake.errors import MedfakeError

MAX_MISSING_IN_A_ROW = 20
LARGEST_MM = 1e6  # positions and spacings beyond a kilometre are corrupt values, not geometry


@dataclass
class StackGeometry:
    order: list[int]  # indices of the input images, sorted along the slice normal
    slots: list[int | None]  # per output slice: position in `order`, None for a missing slice
    spacing: tuple[float, float, float]  # z, y, x mm
    origin: tuple[float, float, float]  # x, y, z mm
    direction: np.ndarray
    gaps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def floats_of(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=float) if value is not None else None
    except (TypeError, ValueError):
        return None
    usable = array is not None and array.size == count and np.all(np.isfinite(array))
    return array if usable and np.all(np.abs(array) <= LARGEST_MM) else None


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and 0 < value <= LARGEST_MM else None


def nominal_slice_spacing(ds: Dataset) -> tuple[float, list[str]]:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm (when positions cannot tell), and a note for
    each of them that is present but not a positive number of millimetres."""
    notes = []
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(ds, keyword)
        if value is not None:
            return value, notes
        if ds.get(keyword) not in (None, ""):
            notes.append(f"{keyword} {ds.get(keyword)!r} is not a usable slice spacing")
    return 1.0, notes


def in_plane_spacing(ds: Dataset) -> tuple[tuple[float, float], bool]:
    """(row spacing = y, column spacing = x) in mm and whether it came from the header."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = floats_of(ds, keyword, 2)
        if pair is not None and np.all(pair > 0):
            return (float(pair[0]), float(pair[1])), True
    return (1.0, 1.0), False


def direction_from_iop(iop: np.ndarray) -> np.ndarray:
    """3x3 ITK direction (columns: row axis, column axis, slice normal), made exactly orthonormal."""
    row, col = iop[:3], iop[3:]
    matrix = np.column_stack([row, col, np.cross(row, col)])
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:  # cannot happen for two unit vectors, but keep it right-handed
        rotation[:, 2] *= -1
    return rotation


def plan_stack(headers: list[Dataset], source: Path) -> StackGeometry:
    first = headers[0]
    (dy, dx), have_spacing = in_plane_spacing(first)
    positions = [floats_of(h, "ImagePositionPatient", 3) for h in headers]
    iop = floats_of(first, "ImageOrientationPatient", 6)
    notes = [] if have_spacing else ["no PixelSpacing: in-plane spacing set to 1 mm"]
    others = {in_plane_spacing(h) for h in headers[1:]} - {((dy, dx), have_spacing)}
    if others:
        notes.append(f"in-plane spacing differs between slices ({len(others)} other value(s)); the volume uses "
                     f"{dy:g} x {dx:g} mm from the first file")
    if iop is None or np.linalg.norm(np.cross(iop[:3], iop[3:])) < 0.5 or any(p is None for p in positions):
        return placeholder_geometry(headers, (dy, dx), notes)
    direction = direction_from_iop(iop)
    points = np.stack(positions)
    distance = points @ direction[:, 2]
    order = [int(i) for i in np.argsort(distance, kind="stable")]
    sorted_distance = distance[order]
    dz, spacing_notes = slice_interval(sorted_distance, first)
    notes += spacing_notes
    _refuse_duplicates(sorted_distance, dz, [headers[i] for i in order], source)
    slots, gaps = place_slices(sorted_distance, dz)
    gaps += in_plane_drift(points[order], direction[:, 2])
    return StackGeometry(order, slots, (dz, dy, dx), tuple(points[order[0]]), direction, gaps, notes)


def slice_interval(sorted_distance: np.ndarray, first: Dataset) -> tuple[float, list[str]]:
    """The regular slice interval: median neighbour distance; one slice → SliceThickness or 1 mm."""
    if len(sorted_distance) < 2:
        return nominal_slice_spacing(first)
    steps = np.diff(sorted_distance)
    positive = steps[steps > 1e-4]
    return (float(np.median(positive)), []) if positive.size else (1.0, [])


def _refuse_duplicates(sorted_distance: np.ndarray, dz: float, headers: list[Dataset], source: Path) -> None:
    steps = np.diff(sorted_distance)
    same = int(np.count_nonzero(steps < max(1e-3, 0.05 * dz)))
    if same:
        raise MedfakeError(
            f"{same + 1} or more slices share a position: the series holds several volumes (echoes, phases or "
            f"time points), which medfake does not split; export one volume per series", source)


def place_slices(sorted_distance: np.ndarray, dz: float) -> tuple[list[int | None], list[str]]:
    """Output slots along z (None where slices are missing) and a description of every irregularity."""
    tolerance = max(0.005, 0.01 * dz)
    slots: list[int | None] = [0]
    gaps, uneven = [], []
    for i, step in enumerate(np.diff(sorted_distance)):
        multiple = int(round(step / dz))
        if abs(step - dz) <= tolerance:
            pass
        elif 2 <= multiple <= MAX_MISSING_IN_A_ROW + 1 and abs(step - multiple * dz) <= tolerance * multiple:
            slots += [None] * (multiple - 1)
            gaps.append(f"{multiple - 1} missing slice(s) between z={sorted_distance[i]:.2f} and "
                        f"z={sorted_distance[i + 1]:.2f} mm (spacing {dz:g} mm): filled with padding")
        else:
            uneven.append(step)
        slots.append(i + 1)
    if uneven:
        grid = sorted_distance[0] + dz * np.array([z for z, s in enumerate(slots) if s is not None])
        worst = float(np.max(np.abs(grid - sorted_distance)))
        gaps.append(f"uneven slice spacing: {len(uneven)} step(s) from {min(uneven):.3f} to {max(uneven):.3f} mm "
                    f"instead of {dz:g} mm; the volume uses {dz:g} mm, so slice positions are off by up to {worst:.3f} mm")
    return slots, gaps


def in_plane_drift(points: np.ndarray, normal: np.ndarray) -> list[str]:
    """Slices whose positions move sideways (gantry tilt): the regular volume ignores that shift."""
    offsets = points - points[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(sideways, axis=1))) if len(points) > 1 else 0.0
    if drift > 0.01:
        return [f"slice positions drift {drift:.3f} mm sideways (gantry tilt?); the volume is not sheared"]
    return []


def placeholder_geometry(headers: list[Dataset], in_plane: tuple[float, float], notes: list[str]) -> StackGeometry:
    """No usable ImagePositionPatient/ImageOrientationPatient: keep file/frame order, identity direction."""
    dz, spacing_notes = nominal_slice_spacing(headers[0])
    notes = notes + spacing_notes
    order = sorted(range(len(headers)), key=lambda i: (_instance(headers[i]), i))
    notes = notes + ["no ImagePositionPatient/ImageOrientationPatient: slices kept in instance order, identity "
                     f"direction, origin 0, z spacing {dz:g} mm (world coordinates are placeholders)"]
    return StackGeometry(order, list(range(len(headers))), (dz, *in_plane), (0.0, 0.0, 0.0), np.eye(3), [], notes)


def _instance(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0
