"""Automatic locations inside the lungs: injection sites and healthy training samples.

A site needs room: it lies inside the lung mask at least `room_mm` from the pleura (the mask border, and
the scan border), `vessel_mm` from vessels/airway walls (lung voxels above -600 HU) and `avoid_mm` from
existing nodules; chosen sites are `separation_mm` apart. The search runs on a grid of ~2 mm pixels.
When too few places qualify, the vessel clearance is relaxed before giving up (unless `relax=False`).
"""

from __future__ import annotations

import numpy as np

from medfake.errors import MedfakeError
from medfake.lungmask import distance_mm, lung_mask
from medfake.scan import Scan, mask_box

VESSEL_HU = -600.0
COARSE_MM = 2.0


def pick_sites(scan: Scan, n: int, rng: np.random.Generator, lung: np.ndarray | None = None,
               avoid_zyx=(), room_mm: float = 15.0, vessel_mm: float = 4.0, avoid_mm: float = 30.0,
               separation_mm: float = 34.0, allow_fewer: bool = False,
               relax: bool = True) -> list[tuple[int, int, int]]:
    """`n` voxel sites (z,y,x) drawn at random among the places that satisfy the clearances (or as many as
    fit with `allow_fewer`). `relax=False` never relaxes the vessel clearance."""
    if n <= 0:
        return []
    if lung is None:
        lung = lung_mask(scan)
    step = np.array([1] + [max(1, int(round(COARSE_MM / s))) for s in scan.spacing[1:]])
    coarse_spacing = np.asarray(scan.spacing) * step
    sub = (slice(None), slice(step[1] // 2, None, step[1]), slice(step[2] // 2, None, step[2]))
    inside = np.asarray(lung[sub], dtype=bool)
    box = mask_box(inside) or tuple(slice(0, n) for n in inside.shape)  # every distance below is exact inside the lungs' box (see _distance_inside)
    corner = np.array([b.start for b in box])
    inside = inside[box]
    hu = np.asarray(scan.voxels[sub][box], dtype=np.float32)
    room = _distance_inside(inside, coarse_spacing)
    vessel_distance = _distance_to(inside & (hu > VESSEL_HU), coarse_spacing)
    allowed = inside & (room >= room_mm)
    allowed &= _far_from(allowed.shape, corner, step, avoid_zyx, coarse_spacing, avoid_mm)
    best: list = []
    clearances = (vessel_mm, vessel_mm / 2, 0.0) if relax else (vessel_mm,)
    for clearance in clearances:
        candidates = allowed & (vessel_distance >= clearance)
        sites = _draw(candidates, n, rng, coarse_spacing, separation_mm)
        best = sites if len(sites) > len(best) else best
        if len(sites) == n or (allow_fewer and clearance == clearances[-1]):
            return [tuple(int(v) for v in (s + corner) * step + np.array([0, step[1] // 2, step[2] // 2]))
                    for s in best]
    raise MedfakeError(f"found room for only {len(best)} of {n} site(s) inside the lungs "
                       f"(need {room_mm:g} mm from the pleura, {avoid_mm:g} mm from nodules)", scan.path)


def _distance_to(features: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) to the nearest True voxel (infinite when there is none)."""
    if not features.any():
        return np.full(features.shape, np.inf)
    return distance_mm(~features, spacing)


def _distance_inside(inside: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) to the nearest voxel outside the mask, counting the scan border as outside. Cropping
    to the mask's box changes nothing inside the mask: the nearest outside voxel is never farther than the
    padding layer around the box."""
    padded = np.pad(inside, 1, constant_values=False)
    return distance_mm(padded, spacing)[1:-1, 1:-1, 1:-1]


def _far_from(shape, corner, step, points_zyx, spacing, distance_mm) -> np.ndarray:
    """Coarse voxels of the box at `corner` at least `distance_mm` from every point (full-resolution z,y,x)."""
    ok = np.ones(shape, dtype=bool)
    if len(points_zyx) == 0:
        return ok
    grid = [g + c for g, c in zip(np.indices(shape, sparse=True), corner)]
    for p in np.atleast_2d(np.asarray(points_zyx, dtype=float)) / step:
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, p, spacing))
        ok &= d2 >= distance_mm ** 2
    return ok


def _draw(candidates: np.ndarray, n: int, rng, spacing, separation_mm) -> list[np.ndarray]:
    points = np.argwhere(candidates)
    chosen: list[np.ndarray] = []
    for index in rng.permutation(len(points)):
        p = points[index]
        if all(np.linalg.norm((p - q) * spacing) >= separation_mm for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                break
    return chosen
