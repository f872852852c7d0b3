"""A plain summary of a loaded scan (what `medfake info` prints), JSON-ready."""

from __future__ import annotations

import numpy as np

from medfake.scan import Scan


def describe_scan(scan: Scan) -> dict:
    """Format, modality, shape z,y,x, spacing z,y,x, origin x,y,z, direction, value range, series, gaps."""
    voxels = scan.voxels
    return {
        "path": scan.path,
        "format": scan.meta.get("format", "memory"),
        "modality": scan.modality,
        "shape": [int(n) for n in scan.shape],
        "spacing": [float(s) for s in scan.spacing],
        "origin": [float(o) for o in scan.origin],
        "direction": np.asarray(scan.direction, dtype=float).round(10).tolist(),
        "dtype": str(voxels.dtype),
        "hu_min": float(voxels.min()) if voxels.size else None,
        "hu_max": float(voxels.max()) if voxels.size else None,
        "series_uid": scan.meta.get("series_uid"),
        "slice_count": int(scan.shape[0]),
        "source_images": len(scan.meta.get("dicom") or []) or None,
        "gaps": list(scan.meta.get("gaps", [])),
        "warnings": list(scan.meta.get("warnings", [])),
    }
