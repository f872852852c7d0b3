"""Labelled CT slices for the segmentation audit: organ names → label ids, labels put on the scan's grid, axial
slices resampled to the model's pixel size, and the intensity normalisation shared by every attack.

Label ids follow TotalSegmentator v2 (its `example_seg*` files); `name=ID[+ID…]` names any other label map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.scan import Scan

# TotalSegmentator v2 ids (class_map "total"); groups merge left/right or the lobes
TOTALSEG_IDS: dict[str, tuple[int, ...]] = {
    "spleen": (1,), "kidney_right": (2,), "kidney_left": (3,), "kidneys": (2, 3), "gallbladder": (4,),
    "liver": (5,), "stomach": (6,), "pancreas": (7,), "adrenal_glands": (8, 9), "lungs": (10, 11, 12, 13, 14),
    "urinary_bladder": (21,), "aorta": (52,),
}


@dataclass(frozen=True)
class Organ:
    name: str
    ids: tuple[int, ...]


def parse_classes(spec: str | list[str]) -> list[Organ]:
    """`liver,spleen,kidneys` or `liver=5,tumour=9+10` → organs (class k+1 of the model; 0 is background)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise MedfakeError("no organ classes given (e.g. --classes liver,spleen,kidneys)")
    organs = []
    for item in items:
        name, _, ids = item.partition("=")
        name = name.strip().lower()
        if ids:
            try:
                organs.append(Organ(name, tuple(int(v) for v in ids.split("+"))))
            except ValueError:
                raise MedfakeError(f"bad class '{item}': ids must be integers joined by '+'") from None
        elif name in TOTALSEG_IDS:
            organs.append(Organ(name, TOTALSEG_IDS[name]))
        else:
            raise MedfakeError(f"unknown organ '{name}' (known: {', '.join(TOTALSEG_IDS)}; or name=ID)")
    if len({o.name for o in organs}) < len(organs):
        raise MedfakeError("an organ is named twice in --classes")
    return organs


def class_map(labels: np.ndarray, organs: list[Organ]) -> np.ndarray:
    """Label ids → model classes (0 background, k+1 for organ k), uint8."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for k, organ in enumerate(organs):
        out[np.isin(labels, organ.ids)] = k + 1
    return out


def labels_on_scan_grid(scan: Scan, labels: Scan) -> np.ndarray:
    """The label volume re-indexed onto the scan's voxel grid; it must be the same grid up to axis flips and
    permutations (e.g. a NIfTI written from a DICOM series), otherwise the labels do not belong to the scan."""
    a_scan, a_lab = scan.index_to_world_matrix(), labels.index_to_world_matrix()
    m = np.linalg.solve(a_lab, a_scan)  # scan (x,y,z) index → label (x,y,z) continuous index
    rot, shift = m[:3, :3], m[:3, 3]
    perm = np.abs(rot).argmax(axis=0)
    signed = np.zeros((3, 3))
    signed[perm, range(3)] = np.sign(rot[perm, range(3)])
    shape_scan, shape_lab = np.array(scan.shape[::-1]), np.array(labels.shape[::-1])
    corners = [shift, shift + rot @ (shape_scan - 1)]
    ok = (sorted(perm) == [0, 1, 2] and np.allclose(rot, signed, atol=1e-3)
          and np.allclose(shift, np.round(shift), atol=1e-2)
          and all(np.all(np.round(c) >= 0) and np.all(np.round(c) <= shape_lab - 1) for c in corners))
    if not ok:
        raise MedfakeError(f"labels do not match the scan: label grid {labels.shape} at {_fmt(labels.spacing)} mm, "
                           f"origin {_fmt(labels.origin)} vs scan {scan.shape} at {_fmt(scan.spacing)} mm, "
                           f"origin {_fmt(scan.origin)}", labels.meta.get("path"))
    index = [np.round(shift[perm[i]] + signed[perm[i], i] * np.arange(shape_scan[i])).astype(int) for i in range(3)]
    # label array axes are z,y,x = index axes 2,1,0; gather along the scan's x,y,z
    vol = np.asarray(labels.voxels)
    lab_axes_zyx = [2 - perm[i] for i in (2, 1, 0)]  # label array axis holding scan axis z, y, x
    vol = np.transpose(vol, lab_axes_zyx)
    return vol[np.ix_(index[2], index[1], index[0])]


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in np.round(values, 2)) + ")"


@dataclass
class SliceSet:
    """Axial slices in HU on a square `pixel_mm` grid padded to a multiple of `multiple`, with model classes."""
    images: np.ndarray  # N,H,W float32 HU
    classes: np.ndarray  # N,H,W uint8 (0 background)
    z: np.ndarray  # source slice index per image
    pixel_mm: float
    source: str

    def __len__(self) -> int:
        return len(self.images)


def load_labelled(scan_path: str | Path, label_path: str | Path) -> tuple[Scan, np.ndarray]:
    from medfake.io import load_scan

    scan = load_scan(scan_path)
    if scan.modality != "CT":
        raise MedfakeError(f"the segmentation audit expects CT, got {scan.modality}", scan_path)
    labels = load_scan(label_path, modality="SEG")
    return scan, labels_on_scan_grid(scan, labels)


def axial_slices(scan: Scan, labels: np.ndarray, organs: list[Organ], pixel_mm: float, multiple: int = 16,
                 min_pixels: int = 20, z: list[int] | None = None) -> SliceSet:
    """Slices with at least `min_pixels` organ pixels (or the slices `z`), resampled to `pixel_mm`, padded with
    air to a multiple of `multiple` pixels per side (centred)."""
    classes = class_map(labels, organs)
    if z is None:
        z = [k for k in range(scan.shape[0]) if np.count_nonzero(classes[k]) >= min_pixels]
    if not z:
        raise MedfakeError(f"no slice holds any of {', '.join(o.name for o in organs)} in the labels",
                           scan.meta.get("path"))
    _, sy, sx = scan.spacing
    zoom = (sy / pixel_mm, sx / pixel_mm)
    images, maps = [], []
    for k in z:
        image = ndimage.zoom(scan.voxels[k].astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
        label = ndimage.zoom(classes[k], zoom, order=0, mode="nearest", grid_mode=True)
        images.append(pad_to(image, multiple, -1000.0))
        maps.append(pad_to(label, multiple, 0))
    return SliceSet(np.stack(images).astype(np.float32), np.stack(maps).astype(np.uint8), np.asarray(z), pixel_mm,
                    str(scan.meta.get("path", "")))


def pad_to(image: np.ndarray, multiple: int, value: float) -> np.ndarray:
    pads = [((-n) % multiple) for n in image.shape]
    return np.pad(image, [(p // 2, p - p // 2) for p in pads], constant_values=value)


@dataclass(frozen=True)
class Normalisation:
    """HU → network input: clip to the window [low, high] and map it to [0, 1] (`scale` multiplies after)."""
    low: float = -200.0
    high: float = 300.0

    def apply(self, hu):
        return ((hu.clamp(self.low, self.high) if hasattr(hu, "clamp") else np.clip(hu, self.low, self.high))
                - self.low) / (self.high - self.low)

    def as_dict(self) -> dict:
        return {"window": [self.low, self.high]}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Normalisation":
        window = (data or {}).get("window", [cls.low, cls.high])
        if len(window) != 2 or float(window[1]) <= float(window[0]):
            raise MedfakeError(f"normalisation window must be [low, high] with high > low, got {window}")
        return cls(float(window[0]), float(window[1]))
