"""A random adult chest as analytic shapes, evaluated on any (X, Y, Z) arrays in mm.

Patient frame (LPS orientation, centred on the chest): X to the patient's left, Y to the back, Z up;
Z = 0 is the lowest point of the lungs (posterior costophrenic recess), Z = H their apex.
All sizes scale with the body half-width `A`, except nodules (which follow LIDC sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# tissue labels of the truth map
AIR, FAT, MUSCLE, CORTEX, MARROW, LUNG, AIRWAY, AIRWAY_WALL, VESSEL, BLOOD, ABDOMEN, NODULE, GGO, TABLE = range(14)
LABEL_NAMES = ("air", "fat", "muscle", "bone_cortex", "bone_marrow", "lung", "airway", "airway_wall", "vessel",
               "blood", "abdomen", "nodule_solid", "nodule_ggo", "table")


@dataclass
class Tube:
    """A segment of a tube (vessel or airway) with linearly varying radius, in patient mm."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    label: int
    wall: float = 0.0  # airway wall thickness (mm), 0 for vessels


@dataclass
class Chest:
    A: float  # body half-width
    B: float  # body half-depth
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    H: float  # lung height
    dome_right: float  # diaphragm dome heights
    dome_left: float
    carina_z: float

    # --- derived sizes ------------------------------------------------------------------------
    @property
    def wall(self) -> float:
        return self.fat + self.muscle + 9.0  # to the inner side of the ribs

    @property
    def cavity(self) -> tuple[float, float]:
        return self.A - self.wall, self.B - self.wall

    @property
    def spine(self) -> tuple[float, float]:
        """Centre Y of the vertebral body and its radius."""
        radius = 0.12 * self.A
        return self.cavity[1] - 0.6 * radius, radius

    @property
    def heart(self) -> tuple[np.ndarray, np.ndarray]:
        ai, bi = self.cavity
        return np.array([0.12 * ai, -0.18 * bi, 0.24 * self.H]), np.array([0.40 * ai, 0.42 * bi, 0.26 * self.H])

    # --- shapes ---------------------------------------------------------------------------------
    def body(self, X, Y, Z=None, shrink: float = 0.0):
        """Superelliptic cross-section, flattened at the back where the patient lies on the table."""
        a, b = self.A - shrink, self.B - shrink
        inside = (np.abs(X) / a) ** 2.3 + (np.abs(Y) / b) ** 2.3 <= 1.0
        return inside & (Y <= 0.93 * self.B - shrink)

    def lung(self, X, Y, Z):
        """Both lungs (no vessels or airways): inside the rib cage, outside the mediastinum, above the
        diaphragm, tapering to the apex."""
        ai, bi = self.cavity
        X, Y, Z = np.broadcast_arrays(X, Y, Z)
        side = np.where(X < 0, -1.0, 1.0)
        cx, cy = side * 0.50 * ai, 0.05 * bi
        rel = np.clip((Z - 0.55 * self.H) / (0.45 * self.H), 0.0, 1.0)
        taper = np.sqrt(np.clip(1.0 - rel ** 2, 0.0, 1.0))
        ax = (0.60 * ai) * np.maximum(taper, 1e-3)
        ay = (1.02 * bi) * np.maximum(taper, 1e-3)
        lobe = ((X - cx) / ax) ** 2 + ((Y - cy - (1 - taper) * 0.25 * bi) / ay) ** 2 <= 1.0
        inside = lobe & self.body(X, Y, shrink=self.wall) & (Z <= self.H)
        return inside & (Z >= self.diaphragm(X, Y, side)) & ~self.mediastinum(X, Y, Z, margin=3.0)

    def diaphragm(self, X, Y, side):
        ai, bi = self.cavity
        dome = np.where(side < 0, self.dome_right, self.dome_left)
        rho2 = ((X - side * 0.45 * ai) / (0.62 * ai)) ** 2 + ((Y + 0.15 * bi) / (1.05 * bi)) ** 2
        posterior = np.clip(Y / bi, 0.0, 1.0) * 0.10 * self.H
        return dome * (1.0 - rho2) - posterior + 0.08 * self.H

    def mediastinum(self, X, Y, Z, margin: float = 0.0):
        """Soft tissue between the lungs: a central band, the heart, the spine and the descending aorta."""
        ai, bi = self.cavity
        upper = np.clip((Z - 0.45 * self.H) / (0.2 * self.H), 0.0, 1.0)
        half_width = 6.0 + 0.08 * ai * upper + margin + 0.05 * ai * np.clip(Y / bi + 0.3, 0, 1)
        band = np.abs(X - 0.03 * ai) <= half_width
        centre, semi = self.heart
        heart = (((X - centre[0]) / (semi[0] + margin)) ** 2 + ((Y - centre[1]) / (semi[1] + margin)) ** 2
                 + ((Z - centre[2]) / (semi[2] + margin)) ** 2) <= 1.0
        sy, sr = self.spine
        spine = (np.abs(X) <= 1.6 * sr + margin) & (Y >= sy - sr - margin)
        aorta = ((X - self.aorta_xy[0]) ** 2 + (Y - self.aorta_xy[1]) ** 2 <= (self.aorta_r + margin) ** 2) & (
            Z <= 0.72 * self.H)
        return band | heart | spine | aorta

    @property
    def aorta_r(self) -> float:
        return 0.075 * self.A

    @property
    def aorta_xy(self) -> tuple[float, float]:
        """Centre of the descending aorta: left of the spine, in front of its side."""
        sy, sr = self.spine
        return 1.25 * sr + 0.5 * self.aorta_r, sy - sr

    def ribs(self, X, Y, Z):
        """(bone, marrow) masks of 12 ribs: bands around the cavity that slope down towards the front."""
        ai, bi = self.cavity
        ra, rb = ai + 4.5, bi + 4.5
        norm = np.sqrt((X / ra) ** 2 + (Y / rb) ** 2)
        radial = (norm - 1.0) * 0.5 * (ra + rb)
        near = np.abs(radial) <= 4.0
        bone = np.zeros(np.shape(X), bool)
        marrow = np.zeros(np.shape(X), bool)
        if not near.any():
            return bone, marrow
        phi = np.abs(np.arctan2(X[near], Y[near])) / np.pi  # 0 at the back, 1 at the front
        rad = radial[near]
        spacing = (self.H + 40.0) / 11.0
        for k in range(12):
            z_back = self.H + 15.0 - k * spacing
            z_rib = z_back - 0.60 * self.H * phi ** 1.3
            height = (Z[near] if np.ndim(Z) else Z) - z_rib
            inside = (rad / 3.4) ** 2 + (height / 5.0) ** 2 <= 1.0
            inside &= phi <= 0.80
            core = (rad / 2.0) ** 2 + (height / 3.6) ** 2 <= 1.0
            bone[near] |= inside
            marrow[near] |= inside & core
        return bone, marrow

    def spine_bone(self, X, Y, Z):
        """(bone, marrow, canal) masks: vertebral body with discs, canal, lamina and processes."""
        sy, sr = self.spine
        body = X ** 2 + (Y - sy) ** 2 <= sr ** 2
        disc_phase = np.mod(Z, 26.0)
        disc = disc_phase < 5.0
        canal_y = sy + sr + 0.45 * sr
        canal = X ** 2 + (Y - canal_y) ** 2 <= (0.42 * sr) ** 2
        arch = (X ** 2 + (Y - canal_y) ** 2 <= (0.75 * sr) ** 2) & ~canal & (Y >= sy + 0.8 * sr)
        process = (np.abs(X) <= 3.0) & (Y >= canal_y) & (Y <= canal_y + 1.6 * sr)
        transverse = (np.abs(Y - canal_y + 0.2 * sr) <= 3.5) & (np.abs(X) <= 2.2 * sr) & ~disc
        posterior = arch | process | transverse
        bone = (body & ~disc) | posterior
        inner = ((X ** 2 + (Y - sy) ** 2 <= (sr - 2.0) ** 2) & ~disc) | posterior
        return bone, inner, canal, body & disc

    def sternum(self, X, Y, Z):
        ai, bi = self.cavity
        plate = (np.abs(X) <= 0.10 * ai) & (Y >= -bi - 9.0) & (Y <= -bi - 1.0)
        return plate & (Z >= 0.30 * self.H) & (Z <= 0.98 * self.H)

    def table(self, X, Y):
        y0 = 0.93 * self.B + 6.0
        return (Y >= y0) & (Y <= y0 + 5.0) & (np.abs(X) <= 0.85 * self.A)


def random_chest(rng: np.random.Generator, half_width: float) -> Chest:
    A = half_width
    H = A * rng.uniform(1.35, 1.55)
    return Chest(A=A, B=A * rng.uniform(0.62, 0.72), fat=A * rng.uniform(0.03, 0.10),
                 muscle=A * rng.uniform(0.03, 0.05),
                 H=H, dome_right=H * rng.uniform(0.24, 0.30), dome_left=H * rng.uniform(0.18, 0.24),
                 carina_z=H * rng.uniform(0.60, 0.66))


# --- tubes: trachea, bronchi, great vessels, lung vessel and airway trees ---------------------------
def central_tubes(chest: Chest, z_top: float) -> list[Tube]:
    """Trachea and main bronchi (air with a wall), ascending aorta, arch, descending aorta, pulmonary trunk."""
    ai, bi = chest.cavity
    sy, sr = chest.spine
    trachea_y = sy - sr - 0.11 * chest.A
    r_tr = 0.06 * chest.A
    carina = np.array([-2.0, trachea_y, chest.carina_z])
    wall = 0.15 * r_tr + 0.8
    tubes = [Tube(np.array([-2.0, trachea_y, z_top + 20.0]), carina, r_tr, r_tr, AIRWAY, wall)]
    for tip, radius in right_left_main_bronchi(chest, carina):
        tubes.append(Tube(carina, tip, 0.8 * r_tr, radius, AIRWAY, 0.15 * radius + 0.8))
    ax, ay = chest.aorta_xy
    ra = chest.aorta_r
    heart_c, heart_s = chest.heart
    arch_top = 0.78 * chest.H
    ascend = np.array([-0.10 * ai, heart_c[1] + 0.3 * heart_s[1], heart_c[2] + 0.5 * heart_s[2]])
    arch_front = np.array([-0.05 * ai, -0.25 * bi, arch_top])
    arch_back = np.array([ax, ay - 10.0, arch_top])
    descend_top = np.array([ax, ay, 0.70 * chest.H])
    descend_bottom = np.array([ax, ay, -40.0])
    for p0, p1 in ((ascend, arch_front), (arch_front, arch_back), (arch_back, descend_top),
                   (descend_top, descend_bottom)):
        tubes.append(Tube(p0, p1, ra, ra, BLOOD))
    trunk = np.array([0.12 * ai, -0.12 * bi, chest.carina_z - 0.06 * chest.H])
    trunk_start = np.array([0.15 * ai, heart_c[1], heart_c[2] + 0.6 * heart_s[2]])
    tubes.append(Tube(trunk_start, trunk, 0.9 * ra, 0.9 * ra, BLOOD))
    return tubes


def right_left_main_bronchi(chest: Chest, carina: np.ndarray):
    ai = chest.cavity[0]
    right = carina + np.array([-0.22 * ai, 0.05 * ai, -0.12 * chest.H])
    left = carina + np.array([0.30 * ai, 0.08 * ai, -0.16 * chest.H])
    return (right, 0.045 * chest.A), (left, 0.040 * chest.A)


def hilum_points(chest: Chest) -> list[np.ndarray]:
    """Tips of the right and left main bronchi (where arteries and bronchi enter each lung)."""
    carina = np.array([-2.0, chest.spine[0] - chest.spine[1] - 0.11 * chest.A, chest.carina_z])
    return [tip for tip, _ in right_left_main_bronchi(chest, carina)]


def vein_roots(chest: Chest) -> list[np.ndarray]:
    """Where the pulmonary veins leave each lung: in front of and below the hilum, towards the atrium."""
    return [tip + np.array([0.0, -0.12 * chest.A, -0.08 * chest.H]) for tip in hilum_points(chest)]


class LungLookup:
    """Fast point-in-lung test on a 2 mm grid covering the whole chest (for growing trees)."""

    def __init__(self, chest: Chest, cell: float = 2.0):
        ai, bi = chest.cavity
        self.lo = np.array([-ai, -bi, 0.0 - 0.1 * chest.H])
        self.cell = cell
        axes = [np.arange(lo, hi + cell, cell) for lo, hi in zip(self.lo, (ai, bi, 1.05 * chest.H))]
        X, Y, Z = np.meshgrid(*axes, indexing="ij")
        self.inside = chest.lung(X, Y, Z)

    def sample(self, rng: np.random.Generator, count: int, side: float) -> np.ndarray:
        """`count` random points (N,3 mm) of one lung (side -1 right, +1 left), uniform over its volume."""
        cells = np.argwhere(self.inside)
        points = self.lo + cells * self.cell
        points = points[np.sign(points[:, 0]) == side]
        return points[rng.choice(len(points), size=count, replace=False)]

    def __call__(self, point: np.ndarray) -> bool:
        i, j, k = (int(round((p - lo) / self.cell)) for p, lo in zip(point.tolist(), self.lo.tolist()))
        ni, nj, nk = self.inside.shape
        return 0 <= i < ni and 0 <= j < nj and 0 <= k < nk and bool(self.inside[i, j, k])


def branching_tree(chest: Chest, lookup: LungLookup, rng: np.random.Generator, root: np.ndarray, radius: float,
                   label: int, min_radius: float, wall_fraction: float = 0.0, max_segments: int = 1500,
                   roots: int = 8) -> list[Tube]:
    """A monopodial branching tree grown from `root` into the lung: `roots` first branches head for random
    points of that lung (so the tree spreads over its volume); each segment splits into a larger and a smaller child (Murray-like radii), spread
    by 15-60 degrees, bent or pruned where it would leave the lung."""
    from collections import deque

    fan = lookup.sample(rng, roots, side=-1.0 if root[0] < 0 else 1.0) - root
    queue = deque((root.astype(float), d / np.linalg.norm(d), radius, True) for d in fan)
    tubes: list[Tube] = []
    while queue and len(tubes) < max_segments:
        start, direction, r, is_root = queue.popleft()
        end = grow(lookup, rng, start, direction, r, is_root)
        if end is None:
            continue
        tubes.append(Tube(start, end, r, 0.92 * r, label, wall_fraction * r))
        if r < min_radius:
            continue
        axis = (end - start) / np.linalg.norm(end - start)
        major = (rng.uniform(0.85, 0.93), rng.uniform(15, 30))
        minor = (rng.uniform(0.55, 0.75), rng.uniform(35, 60))
        for share, spread in (major, minor):
            queue.append((end, turn(axis, spread, rng), 0.92 * r * share, False))
    return tubes


def grow(in_lung: LungLookup, rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, r: float,
         is_root: bool, attempts: int = 6) -> np.ndarray | None:
    """End of a new segment from `start`: a few tries with the direction bent further each time until
    the segment's middle and end lie in the lung (roots start outside, at the hilum)."""
    for attempt in range(attempts):
        heading = direction if attempt == 0 else turn(direction, 20.0 * attempt, rng)
        end = start + heading * (r * rng.uniform(6.0, 10.0) + 2.0)
        middle = 0.5 * (start + end)
        if in_lung(end) and (is_root or in_lung(middle)):
            return end
    return None


def turn(direction: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """`direction` (unit) rotated by `degrees` towards a random perpendicular."""
    other = rng.standard_normal(3)
    other -= other.dot(direction) * direction
    other /= np.sqrt(other.dot(other)) + 1e-12
    angle = np.radians(degrees)
    return np.cos(angle) * direction + np.sin(angle) * other
