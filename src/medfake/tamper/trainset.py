"""Training sets for the injector (nodules) and the remover (healthy lung): one stored region per location,
the augmented cubes drawn from it on the fly.

Folder layout (written atomically):
  regions.bin      each location's view region, the scan's own voxels (int16 when they are integers that fit,
                   else float32), back to back; opened memory-mapped
  index.json       format, cube geometry, the views (rotation, flips, shift), one entry per location (scan,
                   voxel, source, spacing, region shape, dtype, byte offset), config
  equalizer.npz    histogram equalizer + normalization fitted on cubes of this set
  samples.png      middle slices of the unaugmented cube of the first locations
  run.json         resolved config, seed, versions, git commit

A location's region is large enough for every view (rotation corners, shifts, spline margin), so each
augmented cube is one cubic-spline resampling of the scan's voxels on a rotated/flipped/shifted isotropic
grid (no reflect-padded corners as in CT-GAN's rotate-then-crop). Cube i of the set is view i % V of
location i // V. Storing regions instead of CT-GAN's 67 cubes per location keeps a cohort in a few GB and
builds in minutes (benchmarks/trainset_scale.py).
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medfake.data.cohort import location_voxel, locations_for, scan_paths
from medfake.errors import MedfakeError
from medfake.io import atomic_dir, load_scan
from medfake.io.tables import Location, read_locations
from medfake.runinfo import write_run_record
from medfake.scan import Scan
from medfake.tamper.config import TrainsetConfig, require_action
from medfake.tamper.cube import IsoGrid, ViewSource, view_region
from medfake.tamper.equalizer import Equalizer
from medfake.tamper.sites import pick_sites

REGIONS, INDEX, EQUALIZER = "regions.bin", "index.json", "equalizer.npz"
FORMAT = 2  # 1: every augmented cube on disk (cubes.f16)
EQUALIZER_CUBES = 400
CACHED_SOURCES = 256  # spline coefficients kept per set (a region's coefficients are ~1 MB)
NODULE_KINDS = ("nodule", "TM", "FM", "FB", "malignant", "inject")


# --- reading -------------------------------------------------------------------------------------
class Regions:
    """The stored regions of a set and the augmented cubes drawn from them (`cubes(indices)`)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / INDEX).exists():
            raise MedfakeError("not a medfake training set (no index.json; build one with `medfake trainset`)", folder)
        self.folder = folder
        self.index = json.loads((folder / INDEX).read_text())
        if self.index.get("format") != FORMAT:
            raise MedfakeError("a training set in an older layout (every cube on disk): rebuild it with "
                               "`medfake trainset`", folder)
        self.config = self.index["config"]
        self.locations = self.index["locations"]
        self.views = [(float(r), bool(fy), bool(fx), tuple(shift)) for r, fy, fx, shift in self.index["views"]]
        expected = sum(_nbytes(loc) for loc in self.locations)
        if not (folder / REGIONS).exists() or (folder / REGIONS).stat().st_size != expected:
            raise MedfakeError(f"regions.bin is missing or not {expected} bytes", folder / REGIONS)
        self.store = np.memmap(folder / REGIONS, dtype=np.uint8, mode="r") if expected else np.zeros(0, np.uint8)
        self.cube, self.iso_spacing = int(self.config["cube"]), float(self.config["iso_spacing"])
        self._sources: OrderedDict[int, ViewSource] = OrderedDict()

    def __len__(self) -> int:
        return len(self.locations) * len(self.views)

    @property
    def location_ids(self) -> np.ndarray:
        """The location of every cube."""
        return np.repeat(np.arange(len(self.locations)), len(self.views))

    def region(self, location: int) -> np.ndarray:
        loc = self.locations[location]
        raw = self.store[loc["offset"]: loc["offset"] + _nbytes(loc)]
        return np.frombuffer(raw, dtype=loc["dtype"]).reshape(loc["shape"])

    def cubes(self, indices) -> np.ndarray:
        """(n, S, S, S) float32 HU: cube i is view i % V of location i // V. Rounded to float16 as the cubes of
        the earlier every-cube-on-disk layout were, so both layouts train on the very same numbers."""
        out = [self.source(int(i) // len(self.views)).sample(self.grid(int(i) // len(self.views)),
                                                               self.views[int(i) % len(self.views)])
               for i in np.atleast_1d(indices)]
        return np.stack(out).astype("<f2").astype(np.float32)

    def grid(self, location: int) -> IsoGrid:
        return IsoGrid(tuple(self.locations[location]["voxel_zyx"]), self.cube, self.iso_spacing)

    def source(self, location: int) -> ViewSource:
        """The location's spline coefficients (least recently used ones dropped beyond CACHED_SOURCES)."""
        if location in self._sources:
            self._sources.move_to_end(location)
            return self._sources[location]
        source = ViewSource.of(self.region(location), self.locations[location]["spacing"])
        self._sources[location] = source
        if len(self._sources) > CACHED_SOURCES:
            self._sources.popitem(last=False)
        return source


class TrainingSet(Regions):
    """A built set: `cubes(indices)`, `locations`, `views`, `equalizer`, `config`."""

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        self.equalizer = Equalizer.load(self.folder / EQUALIZER)

    def split(self, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) cube indices, split by location so no augmented copy of a val location is trained on."""
        ids = self.location_ids
        locations = np.unique(ids)
        n_val = int(round(val_fraction * len(locations)))
        if val_fraction > 0 and len(locations) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(locations) - 1)
        val_locations = np.random.default_rng(seed).choice(locations, n_val, replace=False) if n_val else []
        is_val = np.isin(ids, val_locations)
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class CubeFeed:
    """Cubes for the coming batches, drawn by `workers` processes ahead of training (0: drawn when asked).
    A batch is asked for by its cube indices, so what the feed returns never depends on timing: the same
    cubes, in the same order, with or without workers (exact resume included)."""

    def __init__(self, data: Regions, workers: int = 0):
        self.data, self.pending = data, deque()
        self.pool = None
        if workers > 0:  # spawn: safe beside CUDA; a worker imports this module, not torch
            self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_open_set,
                                            initargs=(str(data.folder),))
            weakref.finalize(self, self.pool.shutdown, wait=False, cancel_futures=True)

    def cubes(self, indices: np.ndarray, upcoming=()) -> np.ndarray:
        """The cubes of `indices` (float32 HU); `upcoming` batches are started in the workers meanwhile."""
        match = next((k for k, (key, _) in enumerate(self.pending) if np.array_equal(key, indices)), None)
        if match is None:  # not a planned batch (validation, preview): drawn here, the plan stays
            result = self.data.cubes(indices)
        else:
            for _ in range(match):  # planned batches that were skipped
                self.pending.popleft()[1].cancel()
            result = self.pending.popleft()[1].result()
        if self.pool is not None:
            queued = [key for key, _ in self.pending]
            for batch in upcoming:
                if not any(np.array_equal(batch, key) for key in queued):
                    self.pending.append((np.asarray(batch), self.pool.submit(_draw, np.asarray(batch))))
        return result


_WORKER_SET: Regions | None = None


def _open_set(folder: str) -> None:
    global _WORKER_SET
    _WORKER_SET = Regions(folder)


def _draw(indices: np.ndarray) -> np.ndarray:
    return _WORKER_SET.cubes(indices)


def _nbytes(location: dict) -> int:
    return int(np.prod(location["shape"])) * np.dtype(location["dtype"]).itemsize


# --- building ------------------------------------------------------------------------------------
def build_trainset(action: str, scans, out: str | Path, coords: str | Path | None = None,
                   auto_healthy: int = 0, seed: int = 0, config: TrainsetConfig | None = None,
                   overwrite: bool = False, progress=None) -> Path:
    """Build a training set; returns its folder. `action` inject uses nodule locations from `coords`;
    remove uses healthy locations from `coords` and/or `auto_healthy` per scan (sampled in the lung mask
    away from the table's nodules, vessels and pleura)."""
    require_action(action)
    config = config or TrainsetConfig(action)
    config.action, config.auto_healthy = action, auto_healthy
    paths = scan_paths(scans)
    table = read_locations(coords, config.coord_system) if coords else []
    if action == "inject" and not table:
        raise MedfakeError("the injector needs nodule locations: pass --coords TABLE")
    if action == "remove" and not table and auto_healthy <= 0:
        raise MedfakeError("the remover needs healthy locations: pass --coords TABLE and/or --auto-healthy N")
    rng = np.random.default_rng(seed)
    views = config.augment.views()
    out = Path(out)
    with atomic_dir(out, overwrite) as tmp:
        locations = write_regions(tmp / REGIONS, action, paths, table, config, views, rng, progress)
        if not locations:
            raise MedfakeError("no location of the table matches the scans (compare its filename column)", coords)
        record = {"action": action, "cube": config.cube, "iso_spacing": config.iso_spacing,
                  "coord_system": config.coord_system, "auto_healthy": auto_healthy,
                  "diameter_range_mm": [config.min_diameter_mm, config.max_diameter_mm],
                  "augment": asdict(config.augment), "views_per_location": len(views),
                  "coords": str(coords) if coords else None, "scans": [str(p) for p in paths]}
        (tmp / INDEX).write_text(json.dumps({"format": FORMAT, "unit": "HU", "config": record,
                                             "views": [list(v[:3]) + [list(v[3])] for v in views],
                                             "locations": locations}, indent=1))
        regions = Regions(tmp)
        sample = np.sort(rng.choice(len(regions), min(len(regions), EQUALIZER_CUBES), replace=False))
        Equalizer.fit(regions.cubes(sample), seed=seed).save(tmp / EQUALIZER)
        save_sample_sheet(regions, tmp / "samples.png")
        write_run_record(tmp, record, seed)
    return out


def write_regions(path: Path, action: str, paths, table, config: TrainsetConfig, views, rng, progress) -> list[dict]:
    """Append every location's view region to `path`; returns the index entries."""
    locations, offset = [], 0
    task = progress.add_task("regions", total=len(paths), status="") if progress else None
    with open(path, "wb") as fh:
        for path_ in paths:
            scan = load_scan(path_)
            for zyx, source in _sites(action, path_, scan, _sized(table, config), config.auto_healthy, rng):
                region = stored(view_region(scan, IsoGrid(zyx, config.cube, config.iso_spacing), views))
                fh.write(region.tobytes())
                locations.append({"scan": str(path_), "voxel_zyx": [int(v) for v in zyx], "source": source,
                                  "spacing": list(scan.spacing), "shape": list(region.shape),
                                  "dtype": region.dtype.str, "offset": offset})
                offset += region.nbytes
            if progress:
                progress.update(task, advance=1, status=f"{len(locations)} locations")
    return locations


def stored(region: np.ndarray) -> np.ndarray:
    """The region as int16 when its voxels are integers that fit (CT in HU), else float32: exact either way."""
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(np.int16)
        if region.size == 0 or (region.min() >= info.min and region.max() <= info.max):
            return region.astype("<i2")
    return region.astype("<f4")


def _sized(table: list[Location], config: TrainsetConfig) -> list[Location]:
    """Drop nodules outside the configured size range (rows without a size are kept)."""
    return [loc for loc in table if loc.diameter_mm is None or loc.kind not in NODULE_KINDS
            or config.min_diameter_mm <= loc.diameter_mm <= config.max_diameter_mm]


def _sites(action, path, scan: Scan, table, auto_healthy, rng):
    """Cube centres of one scan. For the remover, table rows that are nodules (LUNA16 annotations, CT-GAN
    types TM/FM/FB) are places to avoid; the other rows are healthy samples."""
    rows = locations_for(path, scan, table)
    nodules = [location_voxel(scan, loc) for loc in rows if loc.kind in NODULE_KINDS]
    for loc in rows:
        if action == "inject" or loc.kind not in NODULE_KINDS:
            yield location_voxel(scan, loc), "table"
    if action == "remove" and auto_healthy > 0:
        # training cubes may overlap a little (16 mm apart); small lungs give fewer sites rather than none
        for zyx in pick_sites(scan, auto_healthy, rng, avoid_zyx=nodules, separation_mm=16.0, allow_fewer=True):
            yield zyx, "auto"


def save_sample_sheet(regions: Regions, path: Path, columns: int = 10, rows: int = 3) -> Path:
    """Middle z-slices (lung window) of the unaugmented cube of the first locations."""
    picks = list(range(min(len(regions.locations), columns * rows)))
    rows = max(1, -(-len(picks) // columns))
    figure = Figure(figsize=(columns * 1.2, rows * 1.3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    cubes = regions.cubes([location * len(regions.views) for location in picks]) if picks else []
    for ax, location, cube in zip(axes.ravel(), picks, cubes):
        ax.imshow(cube[cube.shape[0] // 2], cmap="gray", vmin=-1000, vmax=400)
        ax.set_title(f"#{location}", fontsize=7)
    figure.suptitle(f"{len(regions.locations)} locations × {len(regions.views)} views (middle z-slice, "
                    "-1000..400 HU)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
