"""The sites an evaluation scores, each with its content class: what the site shows (a tampered site: what it
pretends to show). A forensic reader asks "is this nodule real or injected?" and "is this empty lung real, or was
a nodule removed?", so positives are only ever compared with genuine sites of the content they claim.

- tampered (label 1): every row of a tamper manifest; an injected site claims a nodule, a removed one bare lung;
- before (label 0): the same site in the untouched source scan (bare lung before an injection, the real nodule
  before a removal); it differs from its tampered twin in content as well, so it only feeds secondary rows;
- table (label 0): genuine nodules, the rows of a location table (LUNA16 / CT-GAN / manifest columns);
- matched, random (label 0): nodule-free genuine lung; where there are removals, every one matched to a removal
  site (same lung side, depth and front-to-back position, and the same local density: the content-only baseline's
  dense-tissue fraction, read at the removal site in its tampered scan), else anywhere in the lung; always
  `AVOID_MM` away from every nodule the evaluation knows of.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.data.cohort import location_voxel, scan_key, scan_paths
from medfake.detect.patches import lung_mask_or_none, to_unit
from medfake.detect.selfref import dense_fraction
from medfake.errors import MedfakeError
from medfake.io import load_scan
from medfake.io.tables import read_locations, read_manifest
from medfake.scan import Scan

NODULE, LUNG = "nodule", "lung"
CLAIMS = {"inject": NODULE, "remove": LUNG}  # the content a tampered site pretends to show
BEFORE = {"inject": LUNG, "remove": NODULE}  # what the same site showed before tampering
AVOID_MM = 20.0  # genuine lung sites keep this far from every known nodule
DEPTH_TOLERANCE = 0.1  # a matched site lies within this fraction of the lung's z (and y) extent of its target
DENSITY_DRAWS = 300  # position-matched candidates whose density is measured per target: the nearest is taken (most
# removal sites hold no dense tissue; a tolerance would pair them with genuine sites holding a little, and the
# content baseline would win the row)
GRID = 4  # candidate lung sites on a 4-voxel in-plane grid


@dataclass
class Sample:
    scan: Path
    zyx: tuple[int, int, int]
    label: int  # 1 tampered, 0 genuine
    action: str = ""  # inject | remove: done at this site (tampered) or afterwards (before)
    method: str = ""
    modality: str = ""
    content: str = ""  # nodule | lung
    origin: str = ""  # tampered | before | table | matched | random
    group: str = ""  # optional cohort label (e.g. real | synthetic): rows are also reported per group


def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def tampered_samples(manifest: Path, paired: bool = True) -> list[Sample]:
    """Every tampered site, and (with `paired`) the same site in its untouched source scan."""
    manifest = Path(manifest)
    out = []
    for row in read_manifest(manifest):
        if row.action not in CLAIMS:
            raise MedfakeError(f"unknown tamper action '{row.action}' (expected {' or '.join(CLAIMS)})", manifest)
        zyx = (row.voxel_z, row.voxel_y, row.voxel_x)
        out.append(Sample(_resolve(manifest.parent, row.output), zyx, 1, row.action, row.method,
                          content=CLAIMS[row.action], origin="tampered"))
        source = _resolve(manifest.parent, row.scan)
        if paired and source.exists():
            out.append(Sample(source, zyx, 0, row.action, row.method, content=BEFORE[row.action], origin="before"))
    if not any(s.label for s in out):
        raise MedfakeError("tamper manifest has no rows", manifest)
    return out


def nodule_samples(table: Path) -> list[Sample]:
    """Genuine nodules: the rows of a location table. A row names its scan file next to the table, or (LUNA16:
    a series name without suffix) a scan there whose name starts with it."""
    table = Path(table)
    locations = read_locations(table, system="vox" if "vox" in table.name.lower() else "world")
    by_scan = defaultdict(list)
    folder_scans = None
    for loc in locations:
        path = _resolve(table.parent, loc.filename)
        if not path.exists():
            folder_scans = scan_paths(table.parent) if folder_scans is None else folder_scans
            name = scan_key(Path(loc.filename))
            path = next((p for p in folder_scans if scan_key(p) == name or scan_key(p).startswith(name + "_")), None)
            if path is None:
                raise MedfakeError(f"no scan next to the table for '{loc.filename}'", table)
        by_scan[path].append(loc)
    out = []
    for path, rows in by_scan.items():
        scan = load_scan(path)
        out += [Sample(path, location_voxel(scan, loc), 0, content=NODULE, origin="table") for loc in rows]
    return out


def known_nodules(samples: list[Sample]) -> dict[Path, list[tuple[int, int, int]]]:
    """Genuine nodule sites per scan (resolved path): table rows and the sites before a removal."""
    out = defaultdict(list)
    for s in samples:
        if not s.label and s.content == NODULE:
            out[Path(s.scan).resolve()].append(s.zyx)
    return dict(out)


def removal_targets(samples: list[Sample]) -> list[tuple[int, float, float, float, str]]:
    """(lung side, depth, front-to-back position, dense-tissue fraction, tamper method) of every removal site,
    read in its tampered scan."""
    targets = []
    removals = [s for s in samples if s.label and s.content == LUNG]
    for path, index in _group_index(removals).items():
        scan = load_scan(path)
        lung = lung_mask_or_none(scan)
        if lung is not None and lung.any():
            sites = [removals[i].zyx for i in index]
            sides, depths, fronts = lung_positions(lung, np.asarray(sites))
            targets += list(zip(sides.tolist(), depths.tolist(), fronts.tolist(), dense_fraction(scan, sites).tolist(),
                                [removals[i].method for i in index]))
    return targets


def genuine_samples(spec, per_scan: int, seed: int, margin: int = 48, avoid: dict | None = None,
                    targets: list[tuple[int, float]] = ()) -> list[Sample]:
    """Genuine sites: the rows of a location table (nodules), or `per_scan` nodule-free lung sites (CT; MRI: the
    foreground) of each genuine scan: all matched to the removal targets in turn where there are any, else random."""
    spec = Path(spec)
    if spec.is_file() and spec.suffix.lower() in (".csv", ".tsv"):
        return nodule_samples(spec)
    rng = np.random.default_rng(seed)
    avoid = avoid or {}
    out = []
    for k, path in enumerate(scan_paths(spec)):
        scan = load_scan(path)
        points, lung = candidate_sites(scan, margin, avoid.get(Path(path).resolve(), ()))
        if len(points) == 0:
            raise MedfakeError("no lung/foreground to sample genuine locations from", path)
        # the targets in turn, carried on from scan to scan, so every removal site (of every method) gets matches
        cycle = [targets[(k * per_scan + i) % len(targets)] for i in range(per_scan)] if targets else []
        matched = matched_sites(scan, points, lung, cycle, rng) if cycle and lung is not None else []
        taken = {i for i, _ in matched}
        rest = [i for i in range(len(points)) if i not in taken]
        extra = rng.choice(rest, size=min(per_scan - len(matched), len(rest)), replace=False) if rest else []
        out += [Sample(path, tuple(int(v) for v in points[i]), 0, "remove", method, content=LUNG, origin="matched")
                for i, method in matched]
        out += [Sample(path, tuple(int(v) for v in points[i]), 0, content=LUNG, origin="random") for i in extra]
    return out


def candidate_sites(scan: Scan, margin: int, nodules) -> tuple[np.ndarray, np.ndarray | None]:
    """Lung (CT) or foreground sites on a grid, `margin` voxels inside the slice, away from the given nodules;
    with the lung mask (None for MRI or where no lung is found)."""
    lung = lung_mask_or_none(scan)
    region = (lung if lung is not None else to_unit(scan) > 0.05).copy()
    region[:, :margin] = region[:, -margin:] = False
    region[:, :, :margin] = region[:, :, -margin:] = False
    points = np.argwhere(region[:, ::GRID, ::GRID]) * np.array([1, GRID, GRID])
    spacing = np.asarray(scan.spacing)
    for zyx in nodules:
        points = points[np.linalg.norm((points - np.asarray(zyx)) * spacing, axis=1) > AVOID_MM]
    return points, lung


def lung_positions(lung: np.ndarray, zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Side (0: the lower-x half of the lungs' x extent, 1: the other), depth and front-to-back position
    (fractions of the lungs' z and y extents) of sites (N, 3)."""
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    xs = np.flatnonzero(lung.any(axis=(0, 1)))
    sides = (zyx[:, 2] >= (xs[0] + xs[-1]) / 2).astype(int)
    depths = (zyx[:, 0] - zs[0]) / max(1, zs[-1] - zs[0])
    fronts = (zyx[:, 1] - ys[0]) / max(1, ys[-1] - ys[0])
    return sides, depths, fronts


def matched_sites(scan: Scan, points: np.ndarray, lung: np.ndarray, targets, rng) -> list[tuple[int, str]]:
    """For each (side, depth, front, density, method) target one distinct candidate (with the target's method): on the same side, within
    DEPTH_TOLERANCE of its depth and front-to-back position (or the nearest there), and of those (up to
    DENSITY_DRAWS at random) one of those nearest to its dense-tissue fraction."""
    sides, depths, fronts = lung_positions(lung, points)
    chosen: list[tuple[int, str]] = []
    for side, depth, front, density, method in targets:
        pool = np.flatnonzero(sides == side)
        pool = pool[~np.isin(pool, [i for i, _ in chosen])]
        if len(pool) == 0:
            continue
        gap = np.maximum(np.abs(depths[pool] - depth), np.abs(fronts[pool] - front))
        near = pool[gap <= max(DEPTH_TOLERANCE, gap.min())]
        near = rng.choice(near, size=min(len(near), DENSITY_DRAWS), replace=False)
        miss = np.abs(dense_fraction(scan, points[near]) - density)
        alike = near[miss <= miss.min() + 1e-9]
        chosen.append((int(rng.choice(alike)), method))
    return chosen


def _group_index(samples: list[Sample]) -> dict[Path, list[int]]:
    out = defaultdict(list)
    for i, s in enumerate(samples):
        out[s.scan].append(i)
    return dict(out)
