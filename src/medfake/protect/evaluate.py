"""How well a protection works, measured three ways with stated directions (protection_and_attacks.md A.6):
imperceptibility d(x, x_p), disruption d(T(x), T(x_p)) inside the ROI plus two judges' verdicts on each
tampered scan (the CAD and the independent core/shell HU rule) and the detectors' scores, and collateral
change outside the ROI.

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


def new_artefact(original, tampered, zyx) -> bool:
    """A saturated ROI voxel that was not there before: the tampering left an obvious artefact."""
    roi = roi_slices(original, zyx)
    new = np.asarray(tampered.voxels[roi], dtype=np.float64)
    old = np.asarray(original.voxels[roi], dtype=np.float64)
    return bool(np.any((new > SATURATED_HU) & (old <= SATURATED_HU)))


def tamper_succeeded(original, tampered, zyx, action: str, lung, radius_mm: float = 5.0) -> bool:
    """The CAD judge: an injection succeeds when the CAD finds a nodule within `radius_mm` of the site and
    the ROI holds no new saturated voxel; a removal when no nodule is found there and no artefact either."""
    from medfake.cad import detect_nodules, nodule_near

    if new_artefact(original, tampered, zyx):
        return False
    box = tuple(slice(r.start, r.stop) for r in roi_slices(original, zyx, 3 * ROI_MM))
    crop, crop_lung = tampered.with_voxels(np.ascontiguousarray(tampered.voxels[box])), lung[box]
    local = tuple(int(c - s.start) for c, s in zip(zyx, box))
    found = nodule_near(detect_nodules(crop, crop_lung), crop, local, radius_mm=radius_mm)
    return found is not None if action == "inject" else found is None


def core_shell_succeeded(original, tampered, zyx, action: str) -> bool:
    """The independent HU judge (`medfake.judges.core_shell`, no code shared with the CAD or the tamperer):
    an injection succeeds when it sees a compact dense nodule at the site, a removal when it no longer
    does; a new saturated voxel is a failure for both."""
    from medfake.judges import core_shell

    if new_artefact(original, tampered, zyx):
        return False
    present = core_shell(tampered, zyx).present
    return present if action == "inject" else not present


def attack_pairs(original, protected, attack, sites):
    """(site, T(x), T(x_p)) for every site: the same attack on the original and on the protected scan."""
    for zyx in sites:
        yield tuple(int(v) for v in zyx), attack(original, zyx), attack(protected, zyx)


def site_row(original, protected, zyx, plain, guarded, action: str, lung) -> dict:
    roi = roi_slices(original, zyx)
    outside = np.ones(original.shape, dtype=bool)
    outside[roi] = False
    collateral = np.asarray(guarded.voxels, np.float64)[outside] - np.asarray(protected.voxels, np.float64)[outside]
    return {"site": [int(v) for v in zyx],
            "success_unprotected": tamper_succeeded(original, plain, zyx, action, lung),
            "success_protected": tamper_succeeded(protected, guarded, zyx, action, lung),
            "core_shell_unprotected": core_shell_succeeded(original, plain, zyx, action),
            "core_shell_protected": core_shell_succeeded(protected, guarded, zyx, action),
            "roi": similarity(plain.voxels[roi], guarded.voxels[roi]),
            "core_change_unprotected_hu": _core_change(original, plain, zyx),
            "core_change_protected_hu": _core_change(original, guarded, zyx),
            "collateral_rmse_hu": float(np.sqrt(np.mean(collateral ** 2))) if collateral.size else 0.0,
            "collateral_max_abs_hu": float(np.abs(collateral).max()) if collateral.size else 0.0}


def disruption(original, protected, attack, sites, action: str, lung, detectors: dict | None = None,
               keep: bool = False) -> dict:
    """`attack(scan, zyx) -> tampered scan`, run on the original and on the protected scan at each site:
    both judges' verdicts, the ROI similarity of T(x) and T(x_p), collateral change outside the ROI, and
    (with `detectors`, name -> object with `score_sites(scan, sites)`) every detector's scores and AUCs.
    With `keep`, `result["scans"]` holds [(site, T(x), T(x_p))] (not JSON)."""
    rows, scans, scores = [], [], {name: {k: [] for k in SCORE_KINDS} for name in detectors or {}}
    for zyx, plain, guarded in attack_pairs(original, protected, attack, sites):
        rows.append(site_row(original, protected, zyx, plain, guarded, action, lung))
        for name, detector in (detectors or {}).items():
            scores[name]["tampered"].append(float(detector.score_sites(plain, [zyx])[0]))
            scores[name]["tampered_protected"].append(float(detector.score_sites(guarded, [zyx])[0]))
        if keep:
            scans.append((zyx, plain, guarded))
    for name, detector in (detectors or {}).items():
        scores[name]["genuine"] = [float(v) for v in detector.score_sites(original, list(sites))]
        scores[name]["genuine_protected"] = [float(v) for v in detector.score_sites(protected, list(sites))]
    result = summarise(rows)
    if detectors:
        result["detectors"] = {name: detector_aucs(s) for name, s in scores.items()}
    if keep:
        result["scans"] = scans
    return result


SCORE_KINDS = ("genuine", "genuine_protected", "tampered", "tampered_protected")


def detector_aucs(scores: dict) -> dict:
    """AUCs with stated positives: tampered-protected vs tampered-unprotected (> 0.5: the protection makes the
    tampering *more* detectable), and tampered vs genuine on each side (did the detector still see it?)."""
    from medfake.stats import auc_score

    def auc(positive, negative):
        if not positive or not negative:
            return None
        labels = [1] * len(positive) + [0] * len(negative)
        return float(auc_score(labels, list(positive) + list(negative)))

    return {"scores": scores,
            "auc_tampered_protected_vs_tampered": auc(scores["tampered_protected"], scores["tampered"]),
            "auc_tampered_vs_genuine": auc(scores["tampered"], scores["genuine"]),
            "auc_tampered_protected_vs_genuine_protected": auc(scores["tampered_protected"],
                                                               scores["genuine_protected"])}


def summarise(rows: list[dict]) -> dict:
    n = max(len(rows), 1)

    def mean(key):
        return float(np.mean([r[key] for r in rows])) if rows else None

    out = {"sites": rows, "n_sites": len(rows)}
    for key in ("success_unprotected", "success_protected", "core_shell_unprotected", "core_shell_protected"):
        out[key] = sum(r[key] for r in rows) / n if rows else None
    for key in ("core_change_unprotected_hu", "core_change_protected_hu", "collateral_rmse_hu"):
        out[key] = mean(key)
    out["roi_psnr_lung_db"] = float(np.mean([r["roi"]["psnr_lung_db"] for r in rows])) if rows else None
    out["roi_ssim_lung"] = float(np.mean([r["roi"]["ssim_lung"] for r in rows])) if rows else None
    out["roi_rmse_hu"] = float(np.mean([r["roi"]["rmse_hu"] for r in rows])) if rows else None
    return out


def _core_change(original, tampered, zyx, radius_mm: float = 2.5) -> float:
    """Mean HU change of the tampered scan in the site's core (in-plane disc on the site's slice)."""
    z, y, x = (int(v) for v in zyx)
    r = max(1, int(round(radius_mm / original.spacing[1])))
    a = np.asarray(original.voxels[z, y - r:y + r + 1, x - r:x + r + 1], dtype=np.float64)
    b = np.asarray(tampered.voxels[z, y - r:y + r + 1, x - r:x + r + 1], dtype=np.float64)
    return float((b - a).mean())
