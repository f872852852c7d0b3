"""`medfake trainset cyclegan`: two domains of 2-D images for unpaired translation, A = healthy, B = lesion.

Inputs per domain (any mix of): 2-D image files or folders of them (single-frame DICOM MG/CR/DX,
PNG/TIFF/JPEG), and 3-D scans (CT/MR in any format `load_scan` reads). From a 3-D scan, domain B takes in-plane patches
through each lesion (rows of `--coords` naming the scan, and the components of a sibling label volume
`<name>_label.*`), at the centre slice and ±¼ diameter; domain A takes patches at automatic healthy lung sites
away from every lesion, and each lesion's healthy *twins*: the same in-plane place a few millimetres above and
below the lesion, where the lung is nodule-free. Lesions often touch the chest wall while automatic sites lie
deep in the lung; without the twins the lesion → healthy direction learns "turn chest wall into lung" (the
largest difference between the domains) instead of "take the nodule away". Patches are `patch` points at `pixel_mm` (isotropic grid, one interpolation),
HU windowed to [-1, 1].

Folder: a.npy, b.npy (float16, N×C×H×W in [-1, 1]); index.json (kind, size, channels, source kind,
window, one entry per image: source, patient, how it was made); samples.png; run.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io import atomic_dir, load_scan
from medfake.runinfo import write_run_record
from medfake.tamper.cyclegan.images import PROJECTION_MODALITIES, is_picture, prepare, read_image2d

INDEX = "index.json"
DOMAINS = {"a": "healthy", "b": "lesion"}
CT_WINDOW = (-1000.0, 400.0)


@dataclass
class TrainsetOptions:
    size: tuple = (64, 64)  # (H, W) of 2-D images
    patch: int = 32  # CT patches: points per side …
    pixel_mm: float = 1.0  # … and their spacing
    window: tuple = CT_WINDOW  # HU → [-1, 1] for CT patches and CT/MR slices
    healthy_per_scan: int = 8
    twins_per_lesion: int = 2  # healthy patches at the lesion's in-plane place, above/below it (domain A)
    mammogram: str = "auto"  # auto (Modality MG) | yes | no
    coords: str | None = None  # lesion table for 3-D scans (CT-GAN, LUNA16 or manifest)
    seed: int = 0
    overwrite: bool = False
    extra: dict = field(default_factory=dict)


def build_trainset(domain_a, domain_b, out: str | Path, options: TrainsetOptions, progress=None) -> Path:
    """Write the training set; returns its folder."""
    out = Path(out)
    rng = np.random.default_rng(options.seed)
    images, entries, kinds = {}, {}, {}
    for key, paths in (("a", domain_a), ("b", domain_b)):
        files = list(paths or [])
        if not files:
            raise MedfakeError(f"domain {key.upper()} ({DOMAINS[key]}) is empty: give at least one image or scan")
        images[key], entries[key], kinds[key] = collect(key, files, options, rng, progress)
        if not images[key]:
            raise MedfakeError(f"domain {key.upper()} ({DOMAINS[key]}) gave no images", files[0])
    check_compatible(images, kinds, domain_a[0])
    with atomic_dir(out, options.overwrite) as tmp:
        for key in ("a", "b"):
            np.save(tmp / f"{key}.npy", np.stack(images[key]).astype(np.float16))
        first = images["a"][0]
        index = {"kind": "cyclegan", "size": list(first.shape[1:]), "channels": int(first.shape[0]),
                 "source": kinds["a"], "window": list(options.window) if kinds["a"] == "ct" else None,
                 "pixel_mm": options.pixel_mm if kinds["a"] == "ct" else None,
                 "domains": {k: {"name": DOMAINS[k], "count": len(images[k]), "items": entries[k]} for k in DOMAINS},
                 "options": asdict(options)}
        (tmp / INDEX).write_text(json.dumps(index, indent=1, default=str))
        save_samples(images, tmp / "samples.png")
        write_run_record(tmp, index["options"], options.seed)
    return out


def check_compatible(images: dict, kinds: dict, where) -> None:
    ca, cb = images["a"][0].shape[0], images["b"][0].shape[0]
    if ca != cb or any(im.shape[0] != ca for im in images["a"]) or any(im.shape[0] != cb for im in images["b"]):
        raise MedfakeError(f"mismatched channels: domain A images have {ca} channel(s), domain B {cb} "
                           "(give both domains as grey or both as colour images)", where)
    if kinds["a"] != kinds["b"]:
        raise MedfakeError(f"domain A holds {kinds['a']} images and domain B {kinds['b']}: both must be of one kind",
                           where)
    if images["a"][0].shape != images["b"][0].shape:
        raise MedfakeError(f"domain A images are {images['a'][0].shape[1:]} and domain B {images['b'][0].shape[1:]}",
                           where)


# --- gathering -------------------------------------------------------------------------------------------
def collect(key: str, paths, options: TrainsetOptions, rng, progress=None) -> tuple[list, list, str]:
    """Images (C, H, W) of one domain, their index entries, and the kind (mammogram | image | ct)."""
    flat, scans = expand(paths)
    images, entries, kinds = [], [], set()
    task = progress.add_task(f"domain {key.upper()}", total=len(flat) + len(scans), status="") if progress else None
    for path in flat:
        image = read_image2d(path)
        mammogram = is_mammogram(image, options.mammogram)
        prepared = prepare(image, tuple(options.size), mammogram)
        images.append(prepared.net)
        entries.append({"source": str(path), "patient": image.patient, **prepared.info})
        kinds.add("mammogram" if mammogram else "image")
        _advance(progress, task)
    for path in scans:
        patches, rows = scan_patches(key, path, options, rng)
        images += patches
        entries += rows
        kinds.add("ct")
        _advance(progress, task)
    if len(kinds) > 1:
        raise MedfakeError(f"domain {key.upper()} mixes {' and '.join(sorted(kinds))} images", paths[0])
    return images, entries, (kinds.pop() if kinds else "image")


def _advance(progress, task) -> None:
    if progress is not None:
        progress.update(task, advance=1)


def is_mammogram(image, choice: str) -> bool:
    if choice not in ("auto", "yes", "no"):
        raise MedfakeError(f"--mammogram must be auto, yes or no, not '{choice}'")
    return choice == "yes" or (choice == "auto" and image.modality == "MG")


def expand(paths) -> tuple[list[Path], list[Path]]:
    """(2-D image files, 3-D scans) named by the paths (files, folders of images, folders of scans)."""
    from medfake.data.cohort import scan_paths

    flat, scans = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise MedfakeError("no such image, scan or folder", path)
        if path.is_file():
            (flat if is_2d(path) else scans).append(path)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        pictures = [p for p in files if is_picture(p) or (p.suffix.lower() == ".dcm" and is_2d(p))]
        if pictures:
            flat += pictures
        else:
            scans += scan_paths(path)
    return flat, scans


def is_2d(path: Path) -> bool:
    """A picture, or a single-frame DICOM of a projection modality (MG, CR, DX, …)."""
    if is_picture(path):
        return True
    from medfake.io.dicom import read_dataset

    try:
        ds = read_dataset(path, header_only=True, must_be_dicom=False)
    except MedfakeError:
        return False
    return ds is not None and str(ds.get("Modality", "")).upper() in PROJECTION_MODALITIES and \
        int(ds.get("NumberOfFrames", 1) or 1) == 1


# --- CT patches ------------------------------------------------------------------------------------------
def scan_patches(key: str, path: Path, options: TrainsetOptions, rng) -> tuple[list, list]:
    from medfake.lungmask import lung_mask
    from medfake.tamper.sites import pick_sites

    scan = load_scan(path)
    lesions = lesion_sites(path, scan, options.coords)
    if key == "b":
        sites = [(zyx, diameter, "lesion") for zyx, diameter in lesions]
    else:
        lung = lung_mask(scan)
        sites = [(zyx, None, "auto") for zyx in pick_sites(scan, options.healthy_per_scan, rng, lung,
                                                             avoid_zyx=[z for z, _ in lesions], allow_fewer=True)]
        sites += [(zyx, None, "twin") for zyx in twin_sites(scan, lesions, lung, options.twins_per_lesion, rng)]
    patches, rows = [], []
    for zyx, diameter, kind in sites:
        for offset in slice_offsets(diameter, options.pixel_mm):
            patches.append(ct_patch(scan, zyx, offset, options))
            rows.append({"source": str(path), "patient": path.name, "voxel_zyx": [int(v) for v in zyx],
                         "z_offset_mm": offset, "diameter_mm": diameter, "site": kind})
    return patches, rows


TWIN_GAPS_MM = (6.0, 12.0)  # beyond the lesion's edge (the patches' ±2 mm slices stay clear of it)
TWIN_CLEARANCE_MM = 20.0  # from every other lesion
TWIN_MAX_HU = -500.0  # the twin's centre is parenchyma, not a vessel or the wall


def twin_sites(scan, lesions, lung, per_lesion: int, rng) -> list[tuple[int, int, int]]:
    """Up to `per_lesion` healthy places per lesion at its (y, x), `d/2 + gap` mm above or below it, inside the
    lung, with parenchyma at the centre and far from every lesion: the lesion's context without the lesion."""
    if per_lesion <= 0 or not lesions:
        return []
    spacing = np.asarray(scan.spacing, dtype=float)
    centres = np.array([zyx for zyx, _ in lesions], dtype=float)
    out = []
    for i, (zyx, diameter) in enumerate(lesions):
        radius = (diameter or 10.0) / 2.0
        others = np.delete(centres, i, axis=0)
        candidates = []
        for gap in TWIN_GAPS_MM:
            for sign in (-1, 1):
                z = int(zyx[0] + sign * np.ceil((radius + gap) / spacing[0]))
                twin = (z, int(zyx[1]), int(zyx[2]))
                if not (0 <= z < scan.shape[0] and lung[twin] and _is_parenchyma(scan, twin)):
                    continue
                if len(others) and np.min(np.linalg.norm((others - twin) * spacing, axis=1)) < TWIN_CLEARANCE_MM:
                    continue
                candidates.append(twin)
        out += [candidates[int(k)] for k in rng.permutation(len(candidates))[:per_lesion]]
    return out


def _is_parenchyma(scan, zyx, half_mm: float = 1.5) -> bool:
    r = [max(1, int(round(half_mm / s))) for s in scan.spacing[1:]]
    z, y, x = zyx
    block = scan.voxels[z, max(0, y - r[0]): y + r[0] + 1, max(0, x - r[1]): x + r[1] + 1]
    return float(np.mean(block)) < TWIN_MAX_HU


def slice_offsets(diameter: float | None, pixel_mm: float) -> list[float]:
    """The centre slice and ±¼ diameter (lesions), or ±2 mm (healthy sites)."""
    step = diameter / 4.0 if diameter else 2.0
    step = max(pixel_mm, round(step / pixel_mm) * pixel_mm)
    return [0.0, -step, step]


def ct_patch(scan, zyx, offset_mm: float, options: TrainsetOptions) -> np.ndarray:
    from medfake.tamper.cube import IsoGrid, to_iso

    grid = IsoGrid(tuple(int(v) for v in zyx), options.patch, options.pixel_mm)
    cube = to_iso(scan, grid)
    index = int(round((options.patch - 1) / 2.0 + offset_mm / options.pixel_mm))
    return hu_to_net(cube[int(np.clip(index, 0, options.patch - 1))], options.window)[None]


def hu_to_net(hu: np.ndarray, window) -> np.ndarray:
    lo, hi = window
    return np.clip(2.0 * (np.asarray(hu, np.float32) - lo) / (hi - lo) - 1.0, -1.0, 1.0).astype(np.float32)


def net_to_hu(net: np.ndarray, window) -> np.ndarray:
    lo, hi = window
    return ((np.asarray(net, np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def lesion_sites(path: Path, scan, coords) -> list[tuple[tuple[int, int, int], float | None]]:
    """Lesions of a 3-D scan: rows of the coordinate table naming it and the components of a sibling label."""
    from medfake.data.annotations import nodules_from_label
    from medfake.data.cohort import location_voxel, locations_for
    from medfake.io.tables import read_locations

    sites = []
    if coords:
        for loc in locations_for(path, scan, read_locations(coords)):
            sites.append((location_voxel(scan, loc), loc.diameter_mm))
    label = sibling_label(path)
    if label is not None:
        label_scan = load_scan(label, modality="SEG")
        if label_scan.shape == scan.shape:
            sites += [(tuple(int(v) for v in r["voxel_zyx"]), float(r["diameter_mm"]))
                      for r in nodules_from_label(label_scan)]
    return sites


def sibling_label(path: Path) -> Path | None:
    from medfake.data.cohort import scan_key

    key = scan_key(path)
    stem = key[: -len("_image")] if key.endswith("_image") else key
    for candidate in sorted(path.parent.glob(f"{stem}_label*")) + sorted(path.parent.glob(f"{stem}_seg*")):
        if candidate != path:
            return candidate
    return None


# --- reading it back --------------------------------------------------------------------------------
class CycleGANSet:
    """A training set folder: `images(key)` (N, C, H, W) float32, `items(key)`, `split(key, fraction, seed)`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.exists():
            raise MedfakeError("not a CycleGAN training set (no index.json; build one with "
                               "`medfake trainset cyclegan`)", self.folder)
        self.index = json.loads(index_path.read_text())
        if self.index.get("kind") != "cyclegan":
            raise MedfakeError(f"this training set is for {self.index.get('kind', 'CT-GAN cubes')}, not a CycleGAN",
                               self.folder)
        self.arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in DOMAINS}

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.index["size"])

    @property
    def channels(self) -> int:
        return int(self.index["channels"])

    def images(self, key: str, indices=None) -> np.ndarray:
        array = self.arrays[key]
        return np.asarray(array if indices is None else array[np.sort(indices)], dtype=np.float32)

    def split(self, key: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) indices: whole patients held out when the domain has several, else whole sources."""
        items = self.index["domains"][key]["items"]
        groups = [it.get("patient") or it["source"] for it in items]
        if len(set(groups)) < 2:
            groups = [it["source"] for it in items]
        unique = sorted(set(groups))
        n_out = int(round(fraction * len(unique))) if len(unique) > 1 else 0
        held = set(np.random.default_rng(seed).permutation(unique)[:n_out].tolist()) if n_out else set()
        idx = np.arange(len(items))
        out = np.array([g in held for g in groups])
        return idx[~out], idx[out]


def save_samples(images: dict, path: Path, per_domain: int = 8) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(per_domain, max(len(images["a"]), len(images["b"])))
    figure = Figure(figsize=(1.6 * n, 3.4), dpi=80)
    FigureCanvasAgg(figure)
    for row, key in enumerate(("a", "b")):
        for col in range(n):
            ax = figure.add_subplot(2, n, row * n + col + 1)
            ax.set_axis_off()
            if col < len(images[key]):
                ax.imshow(images[key][col].mean(axis=0), cmap="gray", vmin=-1, vmax=1)
            if col == 0:
                ax.set_title(f"{key.upper()} ({DOMAINS[key]})", fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
