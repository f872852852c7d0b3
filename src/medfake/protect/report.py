"""`medfake evaluate protection`: every protected scan against every attacker, written as protection.json,
protection.md, panels/*.png (original / protected / |Δ|×10 / tampered-unprotected / tampered-protected) and a
self-contained report.html, with a run record.

Threat models are named from the protection record: a CT-GAN model the scan was protected against is
white-box, any other CT-GAN model grey-box, copy-move and in-paint black-box; benign processing and the
adaptive median run before the white-box attackers. Sites: injections at healthy lung places
(`pick_sites`, away from the nodules the CAD finds), removals at the nodules the CAD finds in the original.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.protect import threats
from medfake.protect.evaluate import LUNG_WINDOW, disruption, similarity
from medfake.protect.run import RECORD_SUFFIX
PANEL_MM = 60.0
DELTA_GAIN = 10.0


@dataclass
class Attacker:
    name: str
    threat: str  # white-box | grey-box | black-box | benign | adaptive
    action: str
    attack: threats.Attack


@dataclass
class Case:
    name: str
    original: object  # Scan
    protected: object  # Scan
    models: list[str]  # model ids the scan was protected against (white-box)


def record_for(path: Path) -> Path:
    """The protection record of a protected scan (or the record itself)."""
    path = Path(path)
    if path.name.endswith(RECORD_SUFFIX):
        return path
    return path.parent / (path.name.split(".")[0] + RECORD_SUFFIX)


def load_case(path: Path, original: Path | None = None) -> Case:
    """A protected scan (or its record) with the original it was made from."""
    from medfake.io import load_scan

    record_path = record_for(path)
    if not record_path.exists():
        raise MedfakeError(f"no protection record ({record_path.name}) beside it: give what `medfake protect` wrote",
                           path)
    try:
        record = json.loads(record_path.read_text())
        record = record.get("config", record)  # the run record wraps what protect wrote
        source = original or record["scan"]
        output = record["output"] if Path(path) == record_path else path
    except (ValueError, KeyError, AttributeError) as exc:
        raise MedfakeError(f"not a protection record (unreadable or missing {exc})", record_path) from None
    protected = load_scan(output)
    original = load_scan(source)
    if original.shape != protected.shape:
        raise MedfakeError(f"the original {original.shape} and the protected scan {protected.shape} differ in shape",
                           path)
    return Case(Path(str(protected.path or path)).name.split(".")[0], original, protected,
                [m for m in record.get("models", []) if not m.startswith("protector ")])


def check_threat_names(classical: list[str], transforms: list[str], path=None) -> None:
    """Unknown black-box or processing names fail before anything is loaded or optimised."""
    for method in classical:
        if method not in threats.CLASSICAL:
            raise MedfakeError(f"unknown classical attack '{method}' (choose from {', '.join(threats.CLASSICAL)})", path)
    for name in transforms:
        if name not in threats.TRANSFORMS:
            raise MedfakeError(f"unknown processing '{name}' (choose from {', '.join(threats.TRANSFORMS)})", path)


def attackers_for(models: dict, protected_against: list[str], classical: list[str],
                  transforms: list[str]) -> list[Attacker]:
    """`models`: name -> loaded TamperModel. White-box when its id is among `protected_against`."""
    out = []
    for name, model in models.items():
        threat = "white-box" if model.model_id in protected_against else "grey-box"
        out.append(Attacker(f"{threat} {model.action} ({name})", threat, model.action, threats.ctgan_attack(model)))
    check_threat_names(classical, transforms)
    for method in classical:
        action = threats.CLASSICAL[method]
        out.append(Attacker(f"black-box {action} ({method})", "black-box", action, threats.classical_attack(method)))
    white = [a for a in out if a.threat == "white-box"]
    for name in transforms:
        for attacker in white:
            kind = threats.transform_kind(name)
            out.append(Attacker(f"{kind} {name}, then {attacker.name}", kind, attacker.action,
                                threats.before(threats.TRANSFORMS[name], attacker.attack)))
    return out


def attacker_name(run: Path, taken) -> str:
    """The run folder's name (with its parent's for a folder called `run`), numbered when already taken."""
    name = run.name if run.name != "run" else f"{run.parent.name}/{run.name}"
    return name if name not in taken else f"{name} #{len(taken) + 1}"


def evaluation_sites(original, lung, actions, n: int, seed: int, inject_sites=(), nodules=None) -> dict:
    """{action: [z,y,x]}: removals at the nodules the CAD finds (at most n); injections at `inject_sites`, else
    at n healthy places away from those nodules. One CAD pass serves both actions (none when the caller gives
    `nodules`, `detect_nodules(original, lung)`)."""
    from medfake.cad import detect_nodules
    from medfake.tamper.sites import pick_sites

    out = {}
    if "inject" in actions and inject_sites:
        out["inject"] = [tuple(int(v) for v in s) for s in inject_sites]
    if set(actions) - set(out):
        found = detect_nodules(original, lung) if nodules is None else nodules
        nodules = [tuple(int(v) for v in n_.center_zyx) for n_ in found]
        if "remove" in actions:
            out["remove"] = nodules[:n]
        if "inject" in actions and "inject" not in out:
            out["inject"] = pick_sites(original, n, np.random.default_rng(seed), lung, avoid_zyx=nodules,
                                       allow_fewer=True)
    return out


def evaluate_case(case: Case, attackers: list[Attacker], n_sites: int, seed: int, detectors: dict | None = None,
                  progress=None, inject_sites=(), *, lung=None,
                  nodules=None) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """(JSON-able result, [(caption, panel)]) for one protected scan: imperceptibility, then one row per attacker.
    `lung`, `nodules`: the original's lung mask and CAD nodules when the caller already has them."""
    from medfake.lungmask import lung_mask

    lung = lung_mask(case.original) if lung is None else lung
    sites = evaluation_sites(case.original, lung, {x.action for x in attackers}, n_sites, seed, inject_sites,
                             nodules)
    result = {"scan": case.name, "shape": list(case.original.shape), "spacing_mm": list(case.original.spacing),
              "protected_against": case.models, "sites": {a: [list(s) for s in v] for a, v in sites.items()},
              "imperceptibility": imperceptibility(case.original, case.protected, lung), "attackers": {}}
    panels = []
    task = progress.add_task(f"evaluate {case.name}", total=len(attackers), status="") if progress else None
    for attacker in attackers:
        if not sites[attacker.action]:
            result["attackers"][attacker.name] = {"threat": attacker.threat, "action": attacker.action, "n_sites": 0,
                                                  "note": "no site (no nodule found for a removal)"}
        else:
            row = disruption(case.original, case.protected, attacker.attack, sites[attacker.action], attacker.action,
                             lung, detectors, keep=True)
            zyx, plain, guarded = row.pop("scans")[0]
            result["attackers"][attacker.name] = {"threat": attacker.threat, "action": attacker.action, **row}
            panels.append((f"{case.name}: {attacker.name} at z,y,x={zyx}",
                           protection_panel(case.original, case.protected, plain, guarded, zyx)))
        if task is not None:
            progress.update(task, advance=1)
    return result, panels


def imperceptibility(original, protected, lung) -> dict:
    """d(x, x_p) over the whole scan and inside the lungs (no SSIM there: not a box)."""
    whole = similarity(original.voxels, protected.voxels)
    a = np.asarray(original.voxels, np.float64)[lung]
    b = np.asarray(protected.voxels, np.float64)[lung]
    inside = {"rmse_hu": float(np.sqrt(np.mean((a - b) ** 2))) if a.size else 0.0,
              "changed_fraction": float(np.mean(a != b)) if a.size else 0.0}
    return {"whole_scan": whole, "lungs": inside,
            "data_range": {"full": "the original's max - min HU", "lung": f"window {LUNG_WINDOW}, range 1500 HU"}}


def protection_panel(original, protected, plain, guarded, zyx) -> np.ndarray:
    """Axial crops at the site: original / protected / |Δ|×10 / tampered-unprotected / tampered-protected."""
    from medfake.render import add_caption, hstack, square_pixels, to_rgb, window

    z, y, x = zyx
    half = [max(4, int(round(PANEL_MM / 2 / s))) for s in original.spacing[1:]]
    box = (z, slice(max(y - half[0], 0), y + half[0] + 1), slice(max(x - half[1], 0), x + half[1] + 1))
    lung_window, delta_window = window("lung"), window("100,50")  # |Δ|×10: 0 black, 10 HU white
    pixel = min(original.spacing[1:])
    delta = DELTA_GAIN * np.abs(protected.voxels[box].astype(np.float32) - original.voxels[box].astype(np.float32))
    images = [(original.voxels[box], lung_window, "original"), (protected.voxels[box], lung_window, "protected"),
              (delta, delta_window, f"|delta| x{DELTA_GAIN:g}"), (plain.voxels[box], lung_window, "tampered"),
              (guarded.voxels[box], lung_window, "tampered (prot.)")]
    panels = []
    for image, win, caption in images:
        grey = square_pixels(win.apply(image), original.spacing[1], original.spacing[2], pixel)
        panels.append(add_caption(to_rgb(grey), caption))
    return hstack(panels)


def markdown(results: dict) -> str:
    lines = [f"# Protection evaluation ({len(results['cases'])} scan(s))", "",
             "Success = the judge sees the tampering work (inject: a nodule at the site; remove: none left) and no "
             "new saturated voxel. ROI metrics compare T(x) with T(x_p) in the lung window (range 1500 HU); "
             "collateral = RMSE of T(x_p) - x_p outside the ROI. AUC p>u: a detector's AUC with tampered-protected "
             "as positives and tampered-unprotected as negatives (0.5: protection does not change detectability).",
             ""]
    for case in results["cases"]:
        imp = case["imperceptibility"]["whole_scan"]
        lines += [f"## {case['scan']}", "",
                  f"Imperceptibility: max |Δ| {imp['max_abs_hu']:g} HU, RMSE {imp['rmse_hu']:.3f} HU, PSNR "
                  f"{imp['psnr_full_db']:.1f} dB (full range {imp['full_range_hu']:g} HU) / {imp['psnr_lung_db']:.1f} dB "
                  f"(lung window), SSIM {imp.get('ssim_full', float('nan')):.5f} / {imp.get('ssim_lung', float('nan')):.5f}",
                  "", "| attacker | threat | sites | CAD success u → p | core/shell success u → p | core HU u → p | "
                  "ROI PSNR lung (dB) | ROI SSIM lung | collateral RMSE (HU) | detector AUC p>u |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in case["attackers"].items():
            if not row.get("n_sites"):
                lines.append(f"| {name} | {row['threat']} | 0 | – | – | – | – | – | – | – |")
                continue
            aucs = ", ".join(f"{d} {_num(v['auc_tampered_protected_vs_tampered'])}"
                             for d, v in row.get("detectors", {}).items()) or "–"
            lines.append(f"| {name} | {row['threat']} | {row['n_sites']} | {row['success_unprotected']:.2f} → "
                         f"{row['success_protected']:.2f} | {row['core_shell_unprotected']:.2f} → "
                         f"{row['core_shell_protected']:.2f} | {row['core_change_unprotected_hu']:+.0f} → "
                         f"{row['core_change_protected_hu']:+.0f} | {row['roi_psnr_lung_db']:.1f} | "
                         f"{row['roi_ssim_lung']:.4f} | {row['collateral_rmse_hu']:.3f} | {aucs} |")
        lines.append("")
    return "\n".join(lines)


def _num(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_outputs(out: Path, results: dict, panels: list[tuple[str, np.ndarray]], overwrite: bool = False) -> Path:
    """protection.json, protection.md, panels/NN.png, report.html and run.json under `out` (built in a
    temporary sibling and renamed into place)."""
    from medfake.io.atomic import atomic_dir
    from medfake.render import save_png
    from medfake.report import Section, write_report
    from medfake.runinfo import write_run_record

    results["panels"] = {f"{k:02d}.png": caption for k, (caption, _) in enumerate(panels)}
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "protection.json").write_text(json.dumps(results, indent=2, default=float))
        text = markdown(results)
        (tmp / "protection.md").write_text(text)
        (tmp / "panels").mkdir()
        section = Section("panels", "Panels per scan and attacker (first site)")
        for k, (caption, image) in enumerate(panels):
            save_png(image, tmp / "panels" / f"{k:02d}.png")
            section.image(image, caption)
        tables = Section("tables", "Tables")
        tables.code(text)
        write_report(tmp / "report.html", "medfake protection evaluation",
                     [tables, section, Section("config", "Configuration").code(results["config"])])
        write_run_record(tmp, results["config"], results["config"].get("seed", 0))
    return out


def evaluate_protection(paths: list[Path], runs: list[Path], out: Path, classical=(), transforms=(),
                        detectors=(), n_sites: int = 3, seed: int = 0, original: Path | None = None,
                        overwrite: bool = False, progress=None, inject_sites=(), *, lung=None, nodules=None) -> dict:
    """Everything `medfake evaluate protection` does; returns the results (also written under `out`). `lung`
    (`lung_mask`) and `nodules` (`detect_nodules(original, lung)`) of the original of the one protected scan,
    when the caller already computed them."""
    from medfake.detect.detectors import load_detector
    from medfake.io.atomic import check_destination
    from medfake.protect.surrogate import load_tamper_model, model_folder

    out = Path(out)
    check_destination(out, overwrite)
    if n_sites < 1:
        raise MedfakeError(f"--sites must be at least 1, not {n_sites}")
    if not runs and not classical:
        raise MedfakeError("give at least one attacker (--attacker RUN or --classical copy-move|inpaint)")
    check_threat_names(classical, transforms)
    if original is not None and len(paths) != 1:
        raise MedfakeError("--original names the source of one protected scan; give one")
    if (lung is not None or nodules is not None) and len(paths) != 1:
        raise MedfakeError("a lung mask and CAD nodules describe the original of one protected scan; give one")
    models = {}
    for run in runs:
        model_folder(run)  # 'not a medfake tamper model' for anything else
        models[attacker_name(Path(run), models)] = load_tamper_model(run)
    loaded = {str(d): load_detector(d) for d in detectors}
    config = {"protected": [str(p) for p in paths], "attackers": [str(r) for r in runs], "classical": list(classical),
              "transforms": list(transforms), "detectors": list(loaded), "sites": n_sites, "seed": seed,
              "inject_sites": [list(map(int, s)) for s in inject_sites]}
    results, panels = {"config": config, "cases": []}, []
    for path in paths:
        case = load_case(Path(path), original)
        attackers = attackers_for(models, case.models, list(classical), list(transforms))
        result, case_panels = evaluate_case(case, attackers, n_sites, seed, loaded, progress, inject_sites,
                                            lung=lung, nodules=nodules)
        results["cases"].append(result)
        panels += case_panels
    write_outputs(out, results, panels, overwrite)
    return results
