"""Training sets of isotropic cubes for the injector (nodules) and the remover (healthy lung).

Folder layout (written atomically):
  cubes.f16        raw float16 HU, shape (N, S, S, S), opened memory-mapped (not a float64 pickle)
  index.json       shape, dtype, one entry per cube (scan, location, augmentation, location id), config
  equalizer.npz    histogram equalizer + normalization fitted on these cubes
  samples.png      middle slices of the first cubes, one per location
  run.json         resolved config, seed, versions, git commit

Every augmented cube is sampled straight from the scan on a rotated/flipped/shifted isotropic grid (one
interpolation; no reflect-padded corners as in CT-GAN's rotate-then-crop).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io import atomic_dir, load_scan
from medfake.io.tables import Location, read_locations
from medfake.runinfo import write_run_record
from medfake.scan import Scan
from medfake.data.cohort import location_voxel, locations_for, scan_paths
from medfake.tamper.config import AugmentConfig, TrainsetConfig
from medfake.tamper.cube import IsoGrid, iso_views
from medfake.tamper.equalizer import Equalizer

CUBES, INDEX, EQUALIZER = "cubes.f16", "index.json", "equalizer.npz"


# --- reading -------------------------------------------------------------------------------------
class TrainingSet:
    """A built set: `cubes` (memory-mapped float16 HU), `entries`, `equalizer`, `config`."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / INDEX).exists():
            raise MedfakeError("not a medfake training set (no index.json; build one with `medfake trainset`)", folder)
        self.folder = folder
        self.index = json.loads((folder / INDEX).read_text())
        self.config = self.index["config"]
        shape = tuple(self.index["shape"])
        expected = int(np.prod(shape)) * 2
        if not (folder / CUBES).exists() or (folder / CUBES).stat().st_size != expected:
            raise MedfakeError(f"cubes.f16 is missing or not {expected} bytes", folder / CUBES)
        self.cubes = np.memmap(folder / CUBES, dtype="<f2", mode="r", shape=shape)
        self.entries = self.index["entries"]
        self.equalizer = Equalizer.load(folder / EQUALIZER)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def location_ids(self) -> np.ndarray:
        return np.array([e["location"] for e in self.entries])

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


def build_trainset(action: str, scans, out: str | Path, coords: str | Path | None = None,
                   auto_healthy: int = 0, seed: int = 0, config: TrainsetConfig | None = None,
                   overwrite: bool = False, progress=None) -> Path:
    """Build a training set; returns its folder. `action` inject uses nodule locations from `coords`;
    remove uses healthy locations from `coords` and/or `auto_healthy` per scan (sampled in the lung mask
    away from the table's nodules, vessels and pleura)."""
    if action not in ("inject", "remove"):
        raise MedfakeError(f"action must be inject or remove, not '{action}'")
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
        entries, count, locations = [], 0, 0
        with open(tmp / CUBES, "wb") as fh:
            task = progress.add_task("cubes", total=len(paths), status="") if progress else None
            for path in paths:
                scan = load_scan(path)
                for zyx, source in _sites(action, path, scan, _sized(table, config), auto_healthy, rng):
                    cubes = iso_views(scan, IsoGrid(zyx, config.cube, config.iso_spacing), views)
                    fh.write(np.stack(cubes).astype("<f2").tobytes())
                    entries += [{"scan": str(path), "voxel_zyx": list(zyx), "source": source, "location": locations,
                                 "view": list(view[:3]) + [list(view[3])]} for view in views]
                    count, locations = count + len(cubes), locations + 1
                if progress:
                    progress.update(task, advance=1, status=f"{count} cubes")
        if count == 0:
            raise MedfakeError("no location of the table matches the scans (compare its filename column)", coords)
        shape = (count, config.cube, config.cube, config.cube)
        cubes = np.memmap(tmp / CUBES, dtype="<f2", mode="r", shape=shape)
        sample = np.sort(rng.choice(count, min(count, 400), replace=False))
        equalizer = Equalizer.fit(np.asarray(cubes[sample], dtype=np.float32), seed=seed)
        equalizer.save(tmp / EQUALIZER)
        record = {"action": action, "cube": config.cube, "iso_spacing": config.iso_spacing,
                  "coord_system": config.coord_system, "auto_healthy": auto_healthy,
                  "diameter_range_mm": [config.min_diameter_mm, config.max_diameter_mm],
                  "augment": asdict(config.augment), "views_per_location": len(views),
                  "coords": str(coords) if coords else None, "scans": [str(p) for p in paths]}
        (tmp / INDEX).write_text(json.dumps({"shape": list(shape), "dtype": "float16", "unit": "HU",
                                             "config": record, "entries": entries}, indent=1))
        save_sample_sheet(cubes, entries, tmp / "samples.png")
        write_run_record(tmp, record, seed)
    return out


def _sized(table: list[Location], config: TrainsetConfig) -> list[Location]:
    """Drop nodules outside the configured size range (rows without a size are kept)."""
    return [loc for loc in table if loc.diameter_mm is None or loc.kind not in NODULE_KINDS
            or config.min_diameter_mm <= loc.diameter_mm <= config.max_diameter_mm]


NODULE_KINDS = ("nodule", "TM", "FM", "FB", "malignant", "inject")


def _sites(action, path, scan, table, auto_healthy, rng):
    """Cube centres of one scan. For the remover, table rows that are nodules (LUNA16 annotations, CT-GAN
    types TM/FM/FB) are places to avoid; the other rows are healthy samples."""
    rows = locations_for(path, scan, table)
    nodules = [location_voxel(scan, loc) for loc in rows if loc.kind in NODULE_KINDS]
    for loc in rows:
        if action == "inject" or loc.kind not in NODULE_KINDS:
            yield location_voxel(scan, loc), "table"
    if action == "remove" and auto_healthy > 0:
        from medfake.tamper.sites import pick_sites

        # training cubes may overlap a little (16 mm apart); small lungs give fewer sites rather than none
        for zyx in pick_sites(scan, auto_healthy, rng, avoid_zyx=nodules, separation_mm=16.0, allow_fewer=True):
            yield zyx, "auto"


def save_sample_sheet(cubes: np.ndarray, entries: list[dict], path: Path, columns: int = 10, rows: int = 3) -> Path:
    """Middle z-slices (lung window) of the unaugmented cube of the first locations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts = [i for i, e in enumerate(entries) if i == 0 or e["location"] != entries[i - 1]["location"]]
    picks = firsts[: columns * rows]
    rows = max(1, -(-len(picks) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        cube = np.asarray(cubes[i], dtype=np.float32)
        ax.imshow(cube[cube.shape[0] // 2], cmap="gray", vmin=-1000, vmax=400)
        ax.set_title(f"#{entries[i]['location']}", fontsize=7)
    fig.suptitle(f"{len(firsts)} locations, {len(entries)} cubes (middle z-slice, -1000..400 HU)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
