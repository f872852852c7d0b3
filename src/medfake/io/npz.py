"""Our own NPZ: voxels plus geometry, nothing else."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.scan import Scan

KEYS = ("voxels", "spacing", "origin", "direction", "modality")


def load_npz(path: Path) -> Scan:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data]
            if missing:
                raise MedfakeError(f"not a medfake NPZ: missing {', '.join(missing)}", path)
            return Scan(
                voxels=data["voxels"],
                spacing=tuple(data["spacing"]),
                origin=tuple(data["origin"]),
                direction=data["direction"],
                modality=str(data["modality"]),
                meta={"format": "npz"},
                path=str(path),
            )
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MedfakeError(f"not a readable NPZ file ({exc.__class__.__name__})", path) from None


def save_npz(scan: Scan, path: Path) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            voxels=scan.voxels,
            spacing=np.asarray(scan.spacing),
            origin=np.asarray(scan.origin),
            direction=np.asarray(scan.direction),
            modality=np.asarray(scan.modality),
        )
