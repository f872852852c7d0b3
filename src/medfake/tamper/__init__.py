"""Tamper CT scans: inject or remove lung nodules (CT-GAN done right), plus the classical baselines.

Python API (what the CLI calls):
    model = load_tamper_model("runs/remover")                       # RUN folder of `medfake train`
    tampered, rows = tamper_scan(scan, [(33, 359, 218)], "remove", model, rng=np.random.default_rng(0))
    result = tamper_file(path, outdir, "inject", auto=2, model_dir="runs/injector", fmt="dicom")
"""

from medfake.tamper.model import TamperModel, TrainConfig, load_tamper_model
from medfake.tamper.pipeline import METHODS, Site, tamper_scan
from medfake.tamper.run import TamperResult, tamper_file

__all__ = ["METHODS", "Site", "TamperModel", "TamperResult", "TrainConfig", "load_tamper_model", "tamper_file",
           "tamper_scan"]
