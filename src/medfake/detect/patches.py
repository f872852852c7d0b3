"""Axial-slice patches for the detectors: intensity windows, the BTD crop protocol, and a training sampler.

Intensities: CT is clipped to a HU window (BTD: −700…2000) and mapped to [0, 1]; MRI is scaled per scan
by its 0.5/99.5 percentiles to [0, 1] (BTD's MRI trainer sees [0, 1] image intensities). Diffusion models
map [0, 1] to [−1, 1] themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.lungmask import lung_mask
from medfake.scan import Scan, cut_cube, overlap

CT_WINDOW = (-700.0, 2000.0)
PATCH_SIZE = {"ct": 96, "mri": 128}
CENTRE_STEP = 4  # candidate training centres on a 4-pixel in-plane grid (keeps the index small)


def modality_key(scan_or_name) -> str:
    name = scan_or_name.modality if isinstance(scan_or_name, Scan) else str(scan_or_name)
    return "ct" if name.upper() == "CT" else "mri"


def to_unit(scan: Scan, window: tuple[float, float] = CT_WINDOW, clip: bool = True) -> np.ndarray:
    """The whole volume as float32 in [0, 1] (CT: HU window; MRI: per-scan percentile scaling). With `clip`
    off the window only scales: values beyond it keep their (float) distance, nothing is erased."""
    voxels = np.asarray(scan.voxels, dtype=np.float32)
    if modality_key(scan) == "ct":
        lo, hi = window
    else:
        lo, hi = (float(v) for v in np.percentile(voxels, (0.5, 99.5)))
        hi = hi if hi > lo else lo + 1.0
    scaled = (voxels - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) if clip else scaled).astype(np.float32)


def btd_crop(plane: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """BTD's patch: rows [max(0, y−P/2), min(H, y+P/2)), columns likewise, zero-padded at the bottom/right
    only. Near the top/left border the content is therefore shifted, as in the reference notebook."""
    half = size // 2
    out = np.zeros((size, size), dtype=np.float32)
    shared = overlap((y - half, x - half), (y + half, x + half), plane.shape)
    if shared is not None:
        piece = plane[shared[0]]
        out[: piece.shape[0], : piece.shape[1]] = piece
    return out


def centred_crop(plane: np.ndarray, y: int, x: int, size: int, pad: float = 0.0) -> np.ndarray:
    """A size×size crop whose centre pixel is (y, x) (start = c − size//2), `pad` outside the image."""
    return cut_cube(plane, (y, x), (size, size), pad).astype(np.float32, copy=False)


def slab_indices(z: int, context: int, depth: int) -> list[int]:
    """Slices z−context … z+context (2.5-D input channels), repeating the edge slice beyond the volume."""
    return [min(max(z + k, 0), depth - 1) for k in range(-context, context + 1)]


def patches_at(unit: np.ndarray, centres_zyx, size: int, protocol: str = "btd", context: int = 0) -> np.ndarray:
    """(N, 2·context + 1, size, size) float32 patches from axial slices of a [0, 1] volume at z,y,x centres."""
    crop = btd_crop if protocol == "btd" else centred_crop
    out = np.empty((len(centres_zyx), 2 * context + 1, size, size), dtype=np.float32)
    for i, (z, y, x) in enumerate(np.asarray(centres_zyx, dtype=int).reshape(-1, 3)):
        for c, k in enumerate(slab_indices(int(z), context, unit.shape[0])):
            out[i, c] = crop(unit[k], int(y), int(x), size)
    return out


_MASKS: dict = {}  # lung masks of scan files already seen in this process: (path, mtime, shape) → mask


def lung_mask_or_none(scan: Scan, cache: bool = True) -> np.ndarray | None:
    """The lung mask of a CT (None for MRI, or when no lung is found: e.g. a phantom or a partial scan).
    `cache`: keep the last scan's mask for the next call (which then gets a copy); screening, which needs it
    once, passes False and holds one mask, not two."""
    if modality_key(scan) != "ct":
        return None
    path = scan.path
    key = (str(path), Path(path).stat().st_mtime_ns, scan.shape) if cache and path and Path(path).exists() else None
    if key in _MASKS:
        return _MASKS[key].copy()
    try:
        mask = lung_mask(scan)
    except MedfakeError:
        mask = None
    if key is None or mask is None:
        return mask
    _MASKS.clear()
    _MASKS[key] = mask
    return mask.copy()


def exclusion_mask(shape, centres_zyx, spacing, radius_mm: float) -> np.ndarray:
    """True where a patch centre would come within `radius_mm` (in-plane) and one slice-radius of a location."""
    keep_out = np.zeros(shape, dtype=bool)
    for z, y, x in np.asarray(centres_zyx, dtype=float).reshape(-1, 3):
        rz = max(1, int(np.ceil(radius_mm / spacing[0])))
        ry, rx = (int(np.ceil(radius_mm / s)) for s in spacing[1:])
        z0, y0, x0 = int(round(z)), int(round(y)), int(round(x))
        keep_out[max(0, z0 - rz): z0 + rz + 1, max(0, y0 - ry): y0 + ry + 1, max(0, x0 - rx): x0 + rx + 1] = True
    return keep_out


@dataclass
class Volume:
    """One training scan: [0, 1] voxels and the allowed patch centres."""

    name: str
    unit: np.ndarray
    centres: np.ndarray  # (M, 3) int z,y,x


@dataclass
class PatchSampler:
    """Random genuine patches (with random flips) from a list of volumes; the state is a numpy Generator."""

    volumes: list[Volume]
    size: int
    flips: bool = True
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    context: int = 0  # 2.5-D: neighbouring slices as channels

    def batch(self, n: int) -> np.ndarray:
        out = np.empty((n, 2 * self.context + 1, self.size, self.size), dtype=np.float32)
        for i in range(n):
            vol = self.volumes[self.rng.integers(len(self.volumes))]
            z, y, x = vol.centres[self.rng.integers(len(vol.centres))]
            patch = np.stack([centred_crop(vol.unit[k], int(y), int(x), self.size)
                              for k in slab_indices(int(z), self.context, vol.unit.shape[0])])
            if self.flips and self.rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            if self.flips and self.rng.random() < 0.5:
                patch = patch[:, ::-1, :]
            out[i] = patch
        return out


def training_volume(scan: Scan, name: str, size: int, window=CT_WINDOW, in_lung: bool = True,
                    exclude_zyx=(), exclude_radius_mm: float = 20.0, clip: bool = True) -> Volume:
    """Allowed centres: inside the lung mask for CT (if `in_lung`), else any pixel whose patch stays inside
    the slice; never near an excluded (tampered/nodule) location."""
    shape = scan.shape
    allowed = np.zeros(shape, dtype=bool)
    half = size // 2
    if shape[1] >= size and shape[2] >= size:
        allowed[:, half: shape[1] - half + 1, half: shape[2] - half + 1] = True
    else:
        allowed[:, shape[1] // 2, shape[2] // 2] = True
    mask = lung_mask_or_none(scan) if in_lung else None
    if mask is not None:
        allowed &= mask
    if len(exclude_zyx):
        allowed &= ~exclusion_mask(shape, exclude_zyx, scan.spacing, exclude_radius_mm + half * min(scan.spacing[1:]))
    step = CENTRE_STEP
    centres = np.argwhere(allowed[:, ::step, ::step]) * np.array([1, step, step])
    if len(centres) == 0:
        raise MedfakeError("no genuine patch centre left in this scan (all excluded or no lung)", scan.path)
    return Volume(name, to_unit(scan, window, clip), centres.astype(np.int32))
