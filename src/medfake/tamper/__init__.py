"""Tamper CT scans: inject or remove lung nodules (CT-GAN done right), plus the classical baselines.

Importing the package loads nothing (torch stays out of CLI start-up). Python API (what the CLI calls):
    from medfake.tamper.model import load_tamper_model
    from medfake.tamper.pipeline import tamper_scan
    from medfake.tamper.config import TamperRequest
    from medfake.tamper.run import tamper_file

    model = load_tamper_model("runs/remover")                       # RUN folder of `medfake train`
    tampered, rows = tamper_scan(scan, [(33, 359, 218)], "remove", model, rng=np.random.default_rng(0))
    result = tamper_file(TamperRequest(target=path, outdir=outdir, action="inject", auto=2, model_dir="runs/injector"))

Modules: config (actions, presets, GanTrainConfig), trainset (CT-GAN training sets), train (the GAN on
`medfake.training.fit`), model (networks, model folder), cube (isotropic grids), equalizer, noise, blend,
sites, pipeline (in-memory tampering), classical (copy-move, in-painting), run (files and manifest).
"""

PUBLIC = {"load_tamper_model": "model", "TamperModel": "model", "tamper_scan": "pipeline", "Site": "pipeline",
          "tamper_file": "run", "TamperResult": "run", "TamperRequest": "config", "GanTrainConfig": "config",
          "ACTIONS": "config", "METHODS": "config"}


def __getattr__(name: str):
    """`from medfake.tamper import tamper_scan` loads its module (and torch) on first use, not at import."""
    if name not in PUBLIC:
        raise AttributeError(f"module 'medfake.tamper' has no attribute '{name}'")
    from importlib import import_module

    return getattr(import_module(f"medfake.tamper.{PUBLIC[name]}"), name)
