"""Labels → LUNA16-style nodule rows (world centre in mm, equivalent-sphere diameter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medfake.io import load_scan
from medfake.io.tables import write_luna16
from medfake.scan import Scan


def nodules_from_label(label: Scan, scan: Scan | None = None) -> list[dict]:
    """One row per connected component of a binary label: centroid (x,y,z mm), voxel centre, diameter. With
    `scan`, the label must lie on its grid (shape, spacing, origin, direction), not merely have its shape."""
    if scan is not None:
        scan.require_same_grid(label)
    mask = label.voxels > 0
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    voxel_volume = float(np.prod(label.spacing))
    rows = []
    for index in range(1, count + 1):
        component = components == index
        zyx = np.array(ndimage.center_of_mass(component))
        volume = float(np.count_nonzero(component)) * voxel_volume
        diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
        x, y, z = label.voxel_to_world(zyx)
        rows.append({"coordX": x, "coordY": y, "coordZ": z, "diameter_mm": diameter,
                     "volume_mm3": volume, "voxel_zyx": tuple(np.rint(zyx).astype(int))})
    return rows


def write_radiomics_annotations(folder: Path) -> Path:
    """`annotations.csv` (LUNA16 columns) for the lung1 CT label, written beside the images."""
    label = load_scan(folder / "lung1_label.nrrd", modality="SEG")
    rows = [dict(seriesuid="lung1", **{k: r[k] for k in ("coordX", "coordY", "coordZ", "diameter_mm")})
            for r in nodules_from_label(label)]
    return write_luna16(rows, folder / "annotations.csv")
