"""Synthetic lung nodules: solid, part-solid or ground-glass; lobulated and spiculated by LIDC ratings."""

from __future__ import annotations

import numpy as np

from medfake.data import synth_anatomy as an
from medfake.data.synth_render import Grid, tube_coverage

SPICULES_BY_RATING = {1: 0, 2: 3, 3: 6, 4: 10, 5: 14}


def nodule_type(texture_rating: float) -> str:
    """LIDC texture 1-2 non-solid, 3 part-solid, 4-5 solid."""
    return "ground-glass" if texture_rating <= 2 else "part-solid" if texture_rating == 3 else "solid"


def fibonacci_sphere(n: int = 42) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def place(chest: an.Chest, rng: np.random.Generator, radius: float, z_range: tuple[float, float],
          taken: list[tuple[np.ndarray, float]], juxtapleural: bool, tries: int = 400) -> np.ndarray | None:
    """A centre (patient mm) whose sphere (radius + 2 mm) lies in the lung (for a juxtapleural nodule:
    the centre in the lung and at least half the sphere), apart from other nodules; None if none found."""
    ai, bi = chest.cavity
    shell = fibonacci_sphere()
    z_lo, z_hi = z_range[0] + radius, z_range[1] - radius
    if z_hi <= z_lo:
        return None
    for _ in range(tries):
        centre = np.array([rng.uniform(-ai, ai), rng.uniform(-bi, bi), rng.uniform(z_lo, z_hi)])
        if not chest.lung(*centre):
            continue
        points = centre + shell * (radius + 2.0)
        inside = chest.lung(points[:, 0], points[:, 1], points[:, 2]).mean()
        if (inside < 1.0 and not juxtapleural) or (juxtapleural and not 0.5 <= inside < 1.0):
            continue
        if all(np.linalg.norm(centre - c) > radius + r + 5.0 for c, r in taken):
            return centre
    return None


def render_nodule(centre: np.ndarray, radius: float, read: dict, grid: Grid, rng: np.random.Generator):
    """(box, coverage, core_coverage, hu_solid, hu_ggo, kind) of one nodule. Coverage is the voxel fraction
    inside the lobulated surface plus spicules; core_coverage the solid part of a part-solid nodule."""
    kind = nodule_type(read["texture"])
    reach = radius * 2.3 + 2 * max(grid.spacing)
    box = grid.index_box(centre - reach, centre + reach)
    X, Y, Z = grid.points(box)
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    inv = 1.0 / np.maximum(dist, 1e-6)
    ux, uy, uz = dx * inv, dy * inv, dz * inv
    lobulation = 0.05 * (read["lobulation"] - 1) * lobes(rng, ux, uy, uz)
    sz, sy, sx = grid.spacing
    edge = np.sqrt((ux * sx) ** 2 + (uy * sy) ** 2 + (uz * sz) ** 2)
    surface = radius * (1.0 + lobulation)
    coverage = np.clip((surface - dist) / edge + 0.5, 0, 1).astype(np.float32)
    for tube in spicules(centre, radius, int(read["spiculation"]), rng):
        sbox, c = tube_coverage(tube, grid)
        if sbox is None:
            continue
        local = tuple(slice(max(s.start, b.start) - b.start, min(s.stop, b.stop) - b.start) for s, b in zip(sbox, box))
        inner = tuple(slice(lo.start + b.start - s.start, lo.stop + b.start - s.start)
                      for lo, s, b in zip(local, sbox, box))
        np.maximum(coverage[local], c[inner], out=coverage[local])
    core = np.zeros_like(coverage)
    if kind == "part-solid":
        core_radius = radius * rng.uniform(0.35, 0.6)
        core = np.clip((core_radius * (1.0 + lobulation) - dist) / edge + 0.5, 0, 1).astype(np.float32)
    elif kind == "solid":
        core = coverage.copy()
    hu_solid = rng.uniform(-10.0, 60.0)
    hu_ggo = rng.uniform(-650.0, -350.0)
    return box, coverage, core, hu_solid, hu_ggo, kind


def lobes(rng: np.random.Generator, ux, uy, uz, waves: int = 5) -> np.ndarray:
    """A zero-mean random function on the unit sphere with std ~0.5 (low angular frequencies)."""
    total = 0.0
    for _ in range(waves):
        k = rng.normal(size=3)
        k *= rng.uniform(2.0, 4.0) / np.linalg.norm(k)
        total = total + np.cos(k[0] * ux + k[1] * uy + k[2] * uz + rng.uniform(0, 2 * np.pi))
    return total / np.sqrt(waves * 2.0) * 1.4


def spicules(centre: np.ndarray, radius: float, rating: int, rng: np.random.Generator) -> list[an.Tube]:
    count = SPICULES_BY_RATING.get(rating, 0)
    tubes = []
    for direction in rng.normal(size=(count, 3)):
        direction /= np.linalg.norm(direction)
        length = radius * rng.uniform(0.5, 1.1)
        base = float(np.clip(0.12 * radius, 0.5, 1.4))
        tubes.append(an.Tube(centre + direction * 0.8 * radius, centre + direction * (radius + length), base, 0.2,
                             an.NODULE))
    return tubes
