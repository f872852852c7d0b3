"""The protection axis of the benchmark matrix (config section `protection:`): protect held-out test scans
against the matrix's own tamper models (white-box), then measure every threat model on the protected scans
with `medfake.protect.report` — one cell per scan — and add a report section with the tables and the panels
original / protected / |Δ|×10 / tampered-unprotected / tampered-protected.

    protection:
      scans: [lung1]            # names of real test scans (cohort.real_test) or paths; default: the real test scans
      against: [inject]         # the matrix's tamper models protected against (white-box)
      budget_hu: 8
      focus: sites              # sites: optimise only around the evaluation sites (the attacker's place known,
                                # cheap); lungs: the whole lung
      passes: 16                # optimize passes (focus sites: 16 sign steps of budget/8)
      sites: 1                  # sites per action
      classical: [copy-move, inpaint]   # black-box rows
      before: [dicom-resave]    # benign / adaptive processing before the white-box attack
      detectors: [selfref]      # the matrix's detectors to score tampered-protected vs tampered-unprotected
"""

from __future__ import annotations

import json
from pathlib import Path

from medfake.bench.config import Cells
from medfake.errors import MedfakeError

DEFAULTS = {"against": ["inject"], "budget_hu": 8.0, "focus": "sites", "passes": 16, "sites": 1,
            "classical": [], "before": [], "detectors": []}
KEYS = set(DEFAULTS) | {"scans"}


def validate_protection(spec: dict, path=None) -> None:
    if not isinstance(spec, dict):
        raise MedfakeError("protection must be a mapping", path)
    unknown = set(spec) - KEYS
    if unknown:
        raise MedfakeError(f"unknown protection key(s): {', '.join(sorted(unknown))}", path)
    if spec.get("focus", "sites") not in ("sites", "lungs"):
        raise MedfakeError("protection.focus must be sites or lungs", path)
    wrong = [a for a in spec.get("against", DEFAULTS["against"]) if a not in ("inject", "remove")]
    if wrong:
        raise MedfakeError(f"protection.against names CT-GAN tamper models, inject or remove, not {', '.join(wrong)}",
                           path)
    from medfake.protect.report import check_threat_names

    check_threat_names(spec.get("classical", []), spec.get("before", []), path)


def protection_scans(spec: dict, test_scans: list[dict]) -> list[dict]:
    names = spec.get("scans")
    if names is None:
        return [s for s in test_scans if s["table"] is None]  # the real scans
    by_name = {s["name"]: s for s in test_scans}
    return [by_name.get(n) or {"name": Path(n).name.split(".")[0], "path": str(n)} for n in names]


def run_protection(cells: Cells, config: dict, models: dict, detectors: dict, test_scans: list[dict]) -> list[dict]:
    """One cell per scan: protect it against the chosen models, then evaluate every threat model."""
    spec = {**DEFAULTS, **config["protection"]}
    missing = [a for a in spec["against"] if a not in models]
    if missing:
        raise MedfakeError(f"protection.against names no tamper model of this matrix: {', '.join(missing)}")
    jobs = {f"protect-{scan['name']}": _cell(scan, spec, models, detectors, config.get("seed", 0))
            for scan in protection_scans(spec, test_scans)}
    return list(cells.run_all(jobs).values())


def _cell(scan: dict, spec: dict, models: dict, detectors: dict, seed: int):
    def run(folder: Path) -> dict:
        from medfake.cad import detect_nodules
        from medfake.io import load_scan
        from medfake.lungmask import lung_mask
        from medfake.protect.config import OptimizeConfig, ProtectConfig
        from medfake.protect.report import evaluation_sites
        from medfake.protect.run import protect_file

        original = load_scan(scan["path"])
        lung = lung_mask(original)
        nodules = detect_nodules(original, lung)  # one CAD pass: the sites, the remover's protection, the evaluation
        sites = evaluation_sites(original, lung, ("inject", "remove"), int(spec["sites"]), seed, nodules=nodules)
        optimize = OptimizeConfig(passes=int(spec["passes"]), seed=seed)
        if spec["focus"] == "sites":  # the evaluation's places, known to the defender: jitter 0
            focus = [list(s) for a in spec["against"] for s in sites[a]]
            if not focus:
                raise MedfakeError("no site to protect (no room for an injection, or no nodule to remove)",
                                   scan["path"])
            optimize = OptimizeConfig(passes=int(spec["passes"]), sites_per_step=1, step_hu=spec["budget_hu"] / 8,
                                      focus_zyx=focus, focus_mm=0.5, jitter_mm=0.0, seed=seed)
        against = [models[a] for a in spec["against"]]
        result = protect_file(scan["path"], folder / "protected", against,
                              ProtectConfig(float(spec["budget_hu"]), optimize=optimize), fmt="nrrd",
                              show_progress=False, lung=lung, nodules=nodules)
        from medfake.protect.report import evaluate_protection

        ctgan_runs = [models[a] for a in ("inject", "remove") if a in models]  # the CycleGAN is no protect target
        evaluate_protection([result.output], ctgan_runs, folder / "evaluation", spec["classical"],
                            spec["before"], [detectors.get(d, d) for d in spec["detectors"]], int(spec["sites"]),
                            seed, original=scan["path"], inject_sites=sites["inject"], lung=lung, nodules=nodules)
        return {"scan": scan["name"], "protected": str(result.output), "record": str(result.record),
                "seconds_protect": round(result.seconds, 1), "evaluation": str(folder / "evaluation")}

    return run


def protection_summary(matrix: dict) -> list[dict]:
    """Per scan and attacker: success rates by both judges, ROI PSNR, imperceptibility (for results.json)."""
    rows = []
    for item in matrix.get("protection") or []:
        results = json.loads((Path(item["evaluation"]) / "protection.json").read_text())
        for case in results["cases"]:
            imp = case["imperceptibility"]["whole_scan"]
            for name, row in case["attackers"].items():
                rows.append({"scan": item["scan"], "attacker": name, "threat": row["threat"],
                             "n_sites": row.get("n_sites", 0),
                             "cad_success": [row.get("success_unprotected"), row.get("success_protected")],
                             "core_shell_success": [row.get("core_shell_unprotected"), row.get("core_shell_protected")],
                             "roi_psnr_lung_db": row.get("roi_psnr_lung_db"), "max_abs_hu": imp["max_abs_hu"],
                             "psnr_full_db": imp["psnr_full_db"]})
    return rows


HEADER = ["scan", "attacker", "threat", "sites", "CAD success unprotected", "CAD success protected",
          "core/shell unprotected", "core/shell protected", "ROI PSNR T(x) vs T(x_p), lung (dB)",
          "max |Δ| (HU)", "PSNR x vs x_p, full range (dB)"]


def protection_section(matrix: dict):
    """The report section (None without a protection axis)."""
    from medfake.report import Section

    if not matrix.get("protection"):
        return None
    section = Section("protection", "Protection against tampering")
    section.text("Each scan was protected against the matrix's own tamper models (white-box) within an L-inf "
                 "budget on the stored voxels, then attacked under every threat model. Success = the judge sees "
                 "the tampering work and no new saturated voxel. Panels: original / protected / |delta| x10 / "
                 "tampered (unprotected) / tampered (protected).", "note")
    section.table(HEADER, [[r["scan"], r["attacker"], r["threat"], r["n_sites"], *r["cad_success"],
                            *r["core_shell_success"], r["roi_psnr_lung_db"], r["max_abs_hu"], r["psnr_full_db"]]
                           for r in protection_summary(matrix)])
    for item in matrix["protection"]:
        captions = json.loads((Path(item["evaluation"]) / "protection.json").read_text()).get("panels", {})
        for png in sorted((Path(item["evaluation"]) / "panels").glob("*.png")):
            section.image(png, captions.get(png.name, f"{item['scan']}: panel {png.stem}"))
    return section
