"""`medfake protect` as a function: load the scan and the tamperers, find the lungs, compute the budgeted
perturbation, store it in the input's dtype and format (a derived image), write the protection record.

Outputs: `OUTDIR/<scan>_protected[_n]` (DICOM series folder or file, through `save_scan`: atomic; DICOM gets
new UIDs and DERIVED with a DerivationDescription naming the protection and its budget) and
`OUTDIR/<same name>.protection.json` (method, budget, models, seconds, the measured max |Δ|, run record).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io.atomic import unused_name
from medfake.protect.config import OptimizeConfig, ProtectConfig
from medfake.protect.optimize import optimize_perturbation, project_stored
from medfake.protect.surrogate import Surrogate, estimate_noise, load_tamper_model, model_folder
from medfake.scan import Scan

RECORD_SUFFIX = ".protection.json"


@dataclass
class ProtectResult:
    output: Path
    record: Path
    scan: Scan
    seconds: float


def load_attackers(runs, action: str | None) -> list[Surrogate]:
    """Surrogates of the tamper models in `runs`; a folder that is not a tamper model is refused."""
    if not runs:
        raise MedfakeError("protect needs at least one tamper model to protect against (--against RUN)")
    surrogates = []
    for run in runs:
        model_folder(run)  # 'not a medfake tamper model' for anything else
        model = load_tamper_model(run)
        if action is not None and model.action != action:
            raise MedfakeError(f"this model was trained to {model.action}, not to {action}", run)
        surrogates.append(Surrogate(model))
    return surrogates


def require_lungs(scan: Scan, lung: np.ndarray) -> None:
    if not np.any(lung):
        raise MedfakeError("no lungs found in this scan: protection is for chest CT", scan.path)


def protect_scan(scan: Scan, surrogates: list[Surrogate], config: ProtectConfig, lung: np.ndarray | None = None,
                 progress=None, protector=None, *, nodules=None) -> Scan:
    """The protected copy of `scan` (same dtype; |stored − original| ≤ budget at every voxel). `nodules`:
    `detect_nodules(scan, lung)` when the caller already ran it (a remover's sites are the CAD's nodules)."""
    from medfake.lungmask import lung_mask, lung_parenchyma

    config.validate()
    lung = lung_mask(scan) if lung is None else lung
    require_lungs(scan, lung)
    allowed = lung if config.region == "lungs" else np.ones(scan.shape, dtype=bool)
    if config.method == "watermark":
        from medfake.protect.watermark import embed

        return embed(scan, config.key, config.budget_hu, allowed)
    if config.method == "network":
        if protector is None:
            raise MedfakeError("method network needs a trained protector (--protector RUN)")
        delta = protector.perturbation(scan, allowed, config.budget_hu)
    else:
        centres = []
        if any(s.action == "remove" for s in surrogates):
            from medfake.cad import detect_nodules

            centres = [n.center_zyx for n in (detect_nodules(scan, lung) if nodules is None else nodules)]
        sigma = estimate_noise(scan, lung_parenchyma(scan, lung), (8, 8, 8), np.random.default_rng(0)).sigma
        delta = optimize_perturbation(scan, surrogates, config.budget_hu, allowed, lung, centres, config.optimize,
                                      sigma, progress)
    voxels = project_stored(scan.voxels, delta, config.budget_hu)
    return scan.with_voxels(voxels)


def derivation_text(config: ProtectConfig, model_ids: list[str]) -> str:
    if config.method == "watermark":
        from medfake.protect.watermark import key_fingerprint

        return (f"medfake protect: keyed fragile watermark, L-inf budget {config.budget_hu:g} HU, region "
                f"{config.region}, key fingerprint {key_fingerprint(config.key)}")
    text = (f"medfake protect: {config.method} perturbation, L-inf budget {config.budget_hu:g} HU, region "
            f"{config.region}, against {', '.join(model_ids)}")
    return text[:1000]


def output_name(outdir: Path, target: Path) -> Path:
    from medfake.data.cohort import scan_key

    return unused_name(outdir, f"{scan_key(target)}_protected")


def change_summary(before: np.ndarray, after: np.ndarray, slices: int = 16) -> tuple[float, int]:
    """max |after − before| and the number of changed voxels, a few slices at a time (no float copy of a CT)."""
    largest, changed = 0.0, 0
    for z in range(0, len(before), slices):
        change = np.abs(after[z: z + slices].astype(np.float64) - before[z: z + slices])
        largest, changed = max(largest, float(change.max())), changed + int(np.count_nonzero(change))
    return largest, changed


def protect_file(target: str | Path, outdir: str | Path, against, config: ProtectConfig | None = None,
                 fmt: str = "same", series: str | None = None, protector_dir: str | Path | None = None,
                 show_progress: bool = True, *, lung: np.ndarray | None = None, nodules=None) -> ProtectResult:
    """Everything `medfake protect` does. `lung` (`lung_mask`) and `nodules` (`detect_nodules(scan, lung)`) of
    the target when the caller already computed them."""
    from medfake.io import load_scan, save_scan
    from medfake.lungmask import lung_mask
    from medfake.runinfo import write_run_record
    from medfake.training import progress_bar

    config = config or ProtectConfig()
    config.validate()
    start = time.monotonic()
    surrogates = [] if config.method == "watermark" else load_attackers(list(against), config.action)
    protector = None
    if config.method == "network":
        from medfake.protect.network import load_protector

        if protector_dir is None:
            raise MedfakeError("method network needs a trained protector (--protector RUN)")
        protector = load_protector(protector_dir)
    target, outdir = Path(target), Path(outdir)
    scan = load_scan(target, series=series)
    lung = lung_mask(scan) if lung is None else lung
    require_lungs(scan, lung)
    with progress_bar(disable=not show_progress) as bar:
        protected = protect_scan(scan, surrogates, config, lung, bar, protector, nodules=nodules)
    change, changed = change_summary(scan.voxels, protected.voxels)
    if change > config.budget_hu:  # the promise of the command: never store a voxel past the budget
        raise MedfakeError(f"internal error: a voxel moved {change:g} HU past the budget", target)
    outdir.mkdir(parents=True, exist_ok=True)
    ids = [s.model_id for s in surrogates] + ([f"protector {protector.model_id}"] if protector else [])
    written = save_scan(protected, output_name(outdir, target), format=fmt, derivation=derivation_text(config, ids))
    seconds = time.monotonic() - start
    record = {"scan": str(target), "output": str(written), "method": config.method, "budget_hu": config.budget_hu,
              "region": config.region, "models": ids, "actions": [s.action for s in surrogates],
              "seconds": round(seconds, 2), "max_abs_change_hu": change,
              "changed_voxels": changed, "optimize": asdict(config.optimize),
              "protector": str(protector_dir) if protector_dir else None}
    if config.method == "watermark":  # the key itself is never written
        from medfake.protect.watermark import Grid, key_fingerprint

        record.update(optimize=None, models=[], actions=[], key_fingerprint=key_fingerprint(config.key),
                      grid=Grid.of(protected).as_dict())  # verify-watermark --record: checks resampled copies
    name = written.name.split(".")[0] + RECORD_SUFFIX
    path = write_run_record(outdir, record, config.optimize.seed, name=name)
    return ProtectResult(written, path, protected, seconds)
