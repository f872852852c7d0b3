"""How well a protection works, measured three ways with stated directions (protection_and_attacks.md A.6):
imperceptibility d(x, x_p), disruption d(T(x), T(x_p)) inside the ROI plus the CAD judge's verdict on each
tampered scan, and collateral change outside the ROI.

Data ranges: `full` = the original scan's max − min HU; `lung` = the lung window W1500/L−600 (both
volumes clipped to [−1350, 150] HU, data range 1500). PSNR/SSIM are over the whole volume (3-D SSIM,
skimage, 7³ window) or over the ROI cube.
"""

from __future__ import annotations

import numpy as np

LUNG_WINDOW = (-1350.0, 150.0)
ROI_MM = 32.0  # edge of the ROI cube around a site
SATURATED_HU = 1000.0  # a tampered ROI voxel this bright that was not there before is an artefact


def _psnr(a, b, data_range) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def _ssim(a, b, data_range) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, *[s if s % 2 else s - 1 for s in a.shape])
    return float(structural_similarity(a, b, data_range=data_range, win_size=max(win, 3)))


def similarity(a: np.ndarray, b: np.ndarray, with_ssim: bool = True) -> dict:
    """max |Δ|, RMSE (HU), PSNR and SSIM at full range and in the lung window."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    full = float(a.max() - a.min()) or 1.0
    la, lb = np.clip(a, *LUNG_WINDOW), np.clip(b, *LUNG_WINDOW)
    lung_range = LUNG_WINDOW[1] - LUNG_WINDOW[0]
    out = {"max_abs_hu": float(np.abs(a - b).max()), "rmse_hu": float(np.sqrt(np.mean((a - b) ** 2))),
           "psnr_full_db": _psnr(a, b, full), "psnr_lung_db": _psnr(la, lb, lung_range), "full_range_hu": full}
    if with_ssim:
        out["ssim_full"] = _ssim(a, b, full)
        out["ssim_lung"] = _ssim(la, lb, lung_range)
    return out


def roi_slices(scan, zyx, edge_mm: float = ROI_MM) -> tuple[slice, ...]:
    half = [max(1, int(round(edge_mm / 2 / s))) for s in scan.spacing]
    return tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, n)) for c, h, n in zip(zyx, half, scan.shape))


def tamper_succeeded(original, tampered, zyx, action: str, lung, radius_mm: float = 5.0) -> bool:
    """The CAD judge: an injection succeeds when the CAD finds a nodule within `radius_mm` of the site and
    the ROI holds no new saturated voxel; a removal when no nodule is found there and no artefact either."""
    from medfake.cad import detect_nodules, nodule_near

    roi = roi_slices(original, zyx)
    new = np.asarray(tampered.voxels[roi], dtype=np.float64)
    old = np.asarray(original.voxels[roi], dtype=np.float64)
    if np.any((new > SATURATED_HU) & (old <= SATURATED_HU)):
        return False
    box = tuple(slice(r.start, r.stop) for r in roi_slices(original, zyx, 3 * ROI_MM))
    crop, crop_lung = tampered.with_voxels(np.ascontiguousarray(tampered.voxels[box])), lung[box]
    local = tuple(int(c - s.start) for c, s in zip(zyx, box))
    found = nodule_near(detect_nodules(crop, crop_lung), crop, local, radius_mm=radius_mm)
    return found is not None if action == "inject" else found is None


def disruption(original, protected, attack, sites, action: str, lung) -> dict:
    """`attack(scan, zyx) -> tampered scan`, run on the original and on the protected scan at each site."""
    rows = []
    for zyx in sites:
        plain, guarded = attack(original, zyx), attack(protected, zyx)
        roi = roi_slices(original, zyx)
        outside = np.ones(original.shape, dtype=bool)
        outside[roi] = False
        collateral = np.asarray(guarded.voxels, np.float64)[outside] - np.asarray(protected.voxels, np.float64)[outside]
        row = {"site": [int(v) for v in zyx],
               "success_unprotected": tamper_succeeded(original, plain, zyx, action, lung),
               "success_protected": tamper_succeeded(protected, guarded, zyx, action, lung),
               "roi": similarity(plain.voxels[roi], guarded.voxels[roi]),
               "core_change_unprotected_hu": _core_change(original, plain, zyx),
               "core_change_protected_hu": _core_change(original, guarded, zyx),
               "collateral_rmse_hu": float(np.sqrt(np.mean(collateral ** 2))) if collateral.size else 0.0}
        rows.append(row)
    n = max(len(rows), 1)
    return {"sites": rows,
            "success_unprotected": sum(r["success_unprotected"] for r in rows) / n,
            "success_protected": sum(r["success_protected"] for r in rows) / n,
            "core_change_unprotected_hu": float(np.mean([r["core_change_unprotected_hu"] for r in rows])),
            "core_change_protected_hu": float(np.mean([r["core_change_protected_hu"] for r in rows])),
            "roi_psnr_lung_db": float(np.mean([r["roi"]["psnr_lung_db"] for r in rows])),
            "roi_ssim_lung": float(np.mean([r["roi"]["ssim_lung"] for r in rows]))}


def _core_change(original, tampered, zyx, radius_mm: float = 2.5) -> float:
    """Mean HU change of the tampered scan in the site's core (in-plane disc on the site's slice)."""
    z, y, x = (int(v) for v in zyx)
    r = max(1, int(round(radius_mm / original.spacing[1])))
    a = np.asarray(original.voxels[z, y - r:y + r + 1, x - r:x + r + 1], dtype=np.float64)
    b = np.asarray(tampered.voxels[z, y - r:y + r + 1, x - r:x + r + 1], dtype=np.float64)
    return float((b - a).mean())
