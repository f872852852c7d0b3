"""Rasterise the synthetic chest: tissue labels slice by slice, tubes and nodules with partial-volume
coverage, HU per tissue with texture, scanner blur and correlated noise."""

from __future__ import annotations

import numpy as np

from medfake.data import synth_anatomy as an

# mean HU per label (soft tissue values for non-contrast CT)
BASE_HU = np.array([-1000, -110, 48, 800, 280, -905, -1000, 30, 42, 42, 55, 30, -550, 150], dtype=np.float32)


class Grid:
    """Voxel centres in patient mm: X (columns), Y (rows), Z (slices)."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, spacing: tuple[float, float, float],
                 to_world: np.ndarray | None = None):
        self.xs, self.ys, self.zs = xs, ys, zs
        self.shape = (zs.size, ys.size, xs.size)
        self.spacing = spacing  # z, y, x
        self.to_world = np.zeros(3) if to_world is None else np.asarray(to_world, float)  # patient → scanner mm

    @property
    def world_origin(self) -> np.ndarray:
        return np.array([self.xs[0], self.ys[0], self.zs[0]]) + self.to_world

    def index_box(self, lo: np.ndarray, hi: np.ndarray):
        """Slices of the voxels whose centres fall in the patient-mm box [lo, hi] (x,y,z), or None."""
        out = []
        for axis_values, a, b in ((self.zs, lo[2], hi[2]), (self.ys, lo[1], hi[1]), (self.xs, lo[0], hi[0])):
            start, stop = np.searchsorted(axis_values, a), np.searchsorted(axis_values, b, side="right")
            if stop <= start:
                return None
            out.append(slice(start, stop))
        return tuple(out)

    def points(self, box):
        return (self.xs[box[2]][None, None, :], self.ys[box[1]][None, :, None], self.zs[box[0]][:, None, None])


def tissue_labels(chest: an.Chest, grid: Grid) -> np.ndarray:
    """Label map (z,y,x) of the static anatomy (no tubes, no nodules). Slice-invariant layers are
    computed once; the z-dependent organs only on the pixels of the thoracic cavity."""
    X, Y = (a.astype(np.float32) for a in np.meshgrid(grid.xs, grid.ys))
    base = np.zeros(X.shape, np.uint8)
    base[chest.table(X, Y)] = an.TABLE
    base[chest.body(X, Y)] = an.MUSCLE
    base[chest.body(X, Y, shrink=1.5)] = an.FAT
    muscle = chest.body(X, Y, shrink=1.5 + chest.fat)
    base[muscle] = an.MUSCLE
    cavity = chest.body(X, Y, shrink=chest.wall)
    cy, cx = np.nonzero(cavity)
    Xc, Yc = X[cavity], Y[cavity]
    below = chest.diaphragm(Xc, Yc, np.where(Xc < 0, -1.0, 1.0))
    ring = np.abs(np.sqrt((X / (chest.cavity[0] + 4.5)) ** 2 + (Y / (chest.cavity[1] + 4.5)) ** 2) - 1) < 0.12
    ry, rx = np.nonzero(ring)
    sy, sr = chest.spine
    spine_box = (slice(*np.searchsorted(grid.ys, [sy - sr - 2, sy + 3.2 * sr + 2])),
                 slice(*np.searchsorted(grid.xs, [-2.3 * sr - 2, 2.3 * sr + 2])))
    front_box = (slice(*np.searchsorted(grid.ys, [-chest.cavity[1] - 11, -chest.cavity[1]])),
                 slice(*np.searchsorted(grid.xs, [-0.14 * chest.cavity[0], 0.14 * chest.cavity[0]])))
    centre, semi = chest.heart
    labels = np.empty(grid.shape, np.uint8)
    for k, z in enumerate(grid.zs):
        lab = labels[k]
        lab[:] = base
        organ = np.full(Xc.shape, an.FAT, np.uint8)
        organ[z < below] = an.ABDOMEN
        heart = (((Xc - centre[0]) / semi[0]) ** 2 + ((Yc - centre[1]) / semi[1]) ** 2
                 + ((z - centre[2]) / semi[2]) ** 2 <= 1)
        organ[heart] = an.BLOOD
        organ[chest.lung(Xc, Yc, z)] = an.LUNG
        lab[cy, cx] = organ
        bone, marrow = chest.ribs(X[ry, rx], Y[ry, rx], z)
        lab[ry[bone], rx[bone]] = an.CORTEX
        lab[ry[marrow], rx[marrow]] = an.MARROW
        paint_spine(chest, X[spine_box], Y[spine_box], z, lab[spine_box], muscle[spine_box])
        sternum = chest.sternum(X[front_box], Y[front_box], z)
        lab[front_box][sternum] = an.CORTEX
        fx, fy = X[front_box], Y[front_box]
        inner = sternum & chest.sternum(fx, fy + 2.0, z) & chest.sternum(fx, fy - 2.0, z)
        lab[front_box][inner] = an.MARROW
    return labels


def paint_spine(chest: an.Chest, X, Y, z, lab: np.ndarray, muscle: np.ndarray) -> None:
    bone, marrow, canal, disc = chest.spine_bone(X, Y, z)
    lab[bone & muscle] = an.CORTEX
    lab[marrow & muscle] = an.MARROW
    lab[(canal | disc) & muscle] = an.MUSCLE


def tube_coverage(tube: an.Tube, grid: Grid, radius_extra: float = 0.0):
    """(box, coverage) of one tube segment: the fraction of each voxel inside radius (+extra), with an
    edge width equal to the voxel's extent across the tube so thin vessels in thick slices stay faint."""
    reach = max(tube.r0, tube.r1) + radius_extra + 2.0 * max(grid.spacing)
    box = grid.index_box(np.minimum(tube.p0, tube.p1) - reach, np.maximum(tube.p0, tube.p1) + reach)
    if box is None:
        return None, None
    X, Y, Z = grid.points(box)
    axis = tube.p1 - tube.p0
    length2 = float(axis @ axis) or 1e-9
    t = np.clip(((X - tube.p0[0]) * axis[0] + (Y - tube.p0[1]) * axis[1] + (Z - tube.p0[2]) * axis[2]) / length2, 0, 1)
    dx, dy, dz = X - (tube.p0[0] + t * axis[0]), Y - (tube.p0[1] + t * axis[1]), Z - (tube.p0[2] + t * axis[2])
    dist = np.sqrt(dx * dx + dy * dy + dz * dz).astype(np.float32)
    radius = tube.r0 + t * (tube.r1 - tube.r0) + radius_extra
    sz, sy, sx = grid.spacing
    inv = 1.0 / np.maximum(dist, 1e-6)
    edge = np.sqrt((dx * inv * sx) ** 2 + (dy * inv * sy) ** 2 + (dz * inv * sz) ** 2)
    coverage = np.clip((radius - dist) / edge + 0.5, 0.0, np.minimum(1.0, 2.0 * radius / edge))
    return box, coverage.astype(np.float32)


SPLAT_MAX_RADIUS_MM = 1.5


def paint_tubes(tubes: list[an.Tube], grid: Grid, cover: dict[str, np.ndarray],
                allowed: np.ndarray | None = None) -> None:
    """Max-accumulate tube coverage into `cover['blood']`, `cover['lumen']`, `cover['wall']`: thin tubes
    are splatted all at once from points along their axes, thick ones rasterised one by one."""
    layers = {"blood": [], "lumen": [], "wall": []}
    for tube in tubes:
        if tube.label == an.AIRWAY:
            layers["wall"].append((tube, tube.wall))
            layers["lumen"].append((tube, 0.0))
        else:
            layers["blood"].append((tube, 0.0))
    for name, items in layers.items():
        thin = [(t, extra) for t, extra in items if max(t.r0, t.r1) + extra <= SPLAT_MAX_RADIUS_MM]
        for tube, extra in items:
            if max(tube.r0, tube.r1) + extra > SPLAT_MAX_RADIUS_MM:
                box, c = tube_coverage(tube, grid, extra)
                if box is not None:
                    if allowed is not None:
                        c = c * allowed[box]
                    np.maximum(cover[name][box], c, out=cover[name][box])
        splat_thin_tubes(thin, grid, cover[name], allowed)


def axis_points(tubes: list[tuple[an.Tube, float]], step: float):
    """Points (N,3 patient mm) every `step` mm along the tube axes, the tube radius and axis direction there."""
    points, radii, axes = [], [], []
    for tube, extra in tubes:
        axis = tube.p1 - tube.p0
        length = float(np.linalg.norm(axis))
        count = int(np.ceil(length / step)) + 1
        t = np.linspace(0.0, 1.0, count)[:, None]
        points.append(tube.p0 + t * axis)
        radii.append(tube.r0 + t[:, 0] * (tube.r1 - tube.r0) + extra)
        axes.append(np.broadcast_to(axis / max(length, 1e-9), (count, 3)))
    if not points:
        return np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3))
    return np.concatenate(points), np.concatenate(radii), np.concatenate(axes)


def splat_thin_tubes(tubes, grid: Grid, cover: np.ndarray, allowed: np.ndarray | None) -> None:
    """Coverage of many thin tubes: each axis point paints a small stencil of voxels with the same
    partial-volume rule as `tube_coverage`; the maximum over points approximates the distance to the axis."""
    sz, sy, sx = grid.spacing
    points, radii, axes = axis_points(tubes, step=0.8 * min(sx, sy))
    origin = np.array([grid.xs[0], grid.ys[0], grid.zs[0]], np.float32)
    pitch = np.array([sx, sy, sz], np.float32)
    centre = np.rint((points - origin) / pitch).astype(np.int64)  # x, y, z indices
    shape_xyz = np.array([grid.shape[2], grid.shape[1], grid.shape[0]])
    low = 0.0
    for high in (0.4, 0.7, 1.0, SPLAT_MAX_RADIUS_MM):
        # a voxel j steps from the nearest one is ≥ (j - 1/2) pitch away; coverage needs < r + pitch/2
        k, kz = int(high / min(sx, sy) + 1.0), int(high / sz + 1.0)
        near = (radii > low) & (radii <= high) & np.all((centre >= -k) & (centre < shape_xyz + k), axis=1)
        low = high
        stencil = np.stack(np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), np.arange(-kz, kz + 1),
                                       indexing="ij"), axis=-1).reshape(-1, 3)
        for chunk in np.array_split(np.flatnonzero(near), max(1, int(near.sum()) * len(stencil) // 2_000_000)):
            if chunk.size:
                splat(points[chunk].astype(np.float32), radii[chunk].astype(np.float32),
                      axes[chunk].astype(np.float32), centre[chunk], stencil, origin, pitch, shape_xyz, cover, allowed)


def splat(points, radii, axes, centre, stencil, origin, pitch, shape_xyz, cover, allowed) -> None:
    """Paint one batch: per axis (x, y, z) arrays of shape (points, stencil) keep the arithmetic in float32."""
    base = (centre * pitch + origin - points).astype(np.float32)  # nearest voxel centre minus point, mm
    steps = (stencil * pitch).astype(np.float32)
    o = [base[:, i, None] + steps[None, :, i] for i in range(3)]
    along = o[0] * axes[:, 0, None] + o[1] * axes[:, 1, None] + o[2] * axes[:, 2, None]
    across = [o[i] - along * axes[:, i, None] for i in range(3)]
    across_len = np.sqrt(across[0] ** 2 + across[1] ** 2 + across[2] ** 2) + np.float32(1e-6)
    edge = np.sqrt(sum((across[i] * pitch[i]) ** 2 for i in range(3))) / across_len
    np.maximum(edge, pitch.min(), out=edge)
    dist = np.sqrt(o[0] ** 2 + o[1] ** 2 + o[2] ** 2)
    r = radii[:, None]
    c = np.clip((r - dist) / edge + 0.5, 0.0, np.minimum(1.0, 2.0 * r / edge))
    index = [centre[:, i, None] + stencil[None, :, i] for i in range(3)]
    keep = c > 0
    for i in range(3):
        keep &= (index[i] >= 0) & (index[i] < shape_xyz[i])
    flat = (index[2][keep] * shape_xyz[1] + index[1][keep]) * shape_xyz[0] + index[0][keep]
    c = c[keep]
    if allowed is not None:
        c *= allowed.reshape(-1)[flat]
    np.maximum.at(cover.reshape(-1), flat, c)


def smooth_field(rng: np.random.Generator, grid: Grid, wavelength_mm: float, waves: int = 6) -> np.ndarray:
    """A smooth random field (z,y,x) with unit-ish amplitude: a sum of random plane waves, evaluated on
    every 4th pixel in-plane and repeated (the field varies over tens of mm)."""
    step = 4
    xs, ys, zs = grid.xs[::step], grid.ys[::step], grid.zs
    field = np.zeros((zs.size, ys.size, xs.size), np.float32)
    for _ in range(waves):
        k = rng.normal(size=3)
        k *= 2 * np.pi / wavelength_mm / np.linalg.norm(k) * rng.uniform(0.7, 1.3)
        phase = rng.uniform(0, 2 * np.pi)
        phases = k[2] * zs[:, None, None] + k[1] * ys[None, :, None] + k[0] * xs[None, None, :] + phase
        field += np.cos(phases).astype(np.float32)
    field = field.repeat(step, axis=1).repeat(step, axis=2)[:, : grid.shape[1], : grid.shape[2]]
    return field / np.sqrt(waves / 2.0)


def tissue_hu(labels: np.ndarray, chest: an.Chest, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """HU from labels: base value per tissue, slow texture, lung density rising towards the back."""
    hu = BASE_HU[labels]
    slow = smooth_field(rng, grid, 60.0)
    amplitude = np.array([3, 10, 8, 150, 60, 25, 2, 5, 5, 5, 6, 0, 0, 20], np.float32)
    hu += amplitude[labels] * slow
    lung = labels == an.LUNG
    depth = np.clip((grid.ys - (-chest.cavity[1])) / (2 * chest.cavity[1]), 0, 1).astype(np.float32)
    hu += lung * (70.0 * depth ** 2)[None, :, None]
    return hu


def parenchyma_texture(rng: np.random.Generator, grid: Grid, lung: np.ndarray, amplitude: float) -> np.ndarray:
    """Fine lung texture (small vessels, interstitium): white noise on a grid twice as coarse in-plane,
    repeated (the scanner blur smooths the blocks), only in the lung; std = amplitude."""
    nz, ny, nx = grid.shape
    coarse = rng.standard_normal((nz, (ny + 1) // 2, (nx + 1) // 2), dtype=np.float32) * amplitude
    return coarse.repeat(2, axis=1).repeat(2, axis=2)[:, :ny, :nx] * lung


def noise_power_amplitude(grid: Grid, peak_per_mm: float) -> np.ndarray:
    """sqrt of a CT-like noise power spectrum f·exp(-f/peak) (ramp filter × smooth apodisation), peaking
    at `peak_per_mm` cycles/mm, normalised to unit image variance, on the rfft2 grid (y, x//2+1)."""
    sz, sy, sx = grid.spacing
    ny, nx = grid.shape[1:]
    full = np.hypot(np.fft.fftfreq(ny, sy)[:, None], np.fft.fftfreq(nx, sx)[None, :])
    half = np.hypot(np.fft.fftfreq(ny, sy)[:, None], np.fft.rfftfreq(nx, sx)[None, :])
    power = lambda f: f * np.exp(-f / peak_per_mm)
    return (np.sqrt(power(half)) / np.sqrt(power(full).mean())).astype(np.float32)


def scanner(hu: np.ndarray, grid: Grid, rng: np.random.Generator, noise_hu: float, psf_mm: float = 0.42,
            nps_peak_per_mm: float = 0.30, slice_blur: float = 0.15) -> np.ndarray:
    """What the scanner adds: a Gaussian in-plane PSF, a little blur across slices, and stationary noise
    with a CT-like power spectrum and std `noise_hu`, all in one 2-D Fourier pass per slice."""
    from scipy import fft

    blurred = hu.copy()
    if hu.shape[0] > 2:
        blurred[1:-1] = (1 - 2 * slice_blur) * hu[1:-1] + slice_blur * (hu[:-2] + hu[2:])
    sz, sy, sx = grid.spacing
    ny, nx = grid.shape[1:]
    f2 = np.fft.fftfreq(ny, sy)[:, None] ** 2 + np.fft.rfftfreq(nx, sx)[None, :] ** 2
    mtf = np.exp(-2 * np.pi ** 2 * psf_mm ** 2 * f2).astype(np.float32)
    spectrum = fft.rfft2(blurred, norm="ortho")
    spectrum *= mtf
    amplitude = noise_power_amplitude(grid, nps_peak_per_mm) * np.float32(noise_hu / np.sqrt(2.0))
    shape = spectrum.shape
    real, imag = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    spectrum += (real + 1j * imag) * amplitude
    return fft.irfft2(spectrum, s=(ny, nx), norm="ortho")
