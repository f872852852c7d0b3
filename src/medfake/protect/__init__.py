"""Protect scans against tampering: budgeted perturbations optimised through the differentiable tamperer.

Python API (what the CLI calls):
    result = protect_file(path, outdir, ["runs/injector"], ProtectConfig(budget_hu=8))   # method optimize
    protected = protect_scan(scan, [Surrogate(load_tamper_model("runs/injector"))], ProtectConfig(), lung)
    metrics = disruption(scan, protected, attack, sites, "inject", lung)                  # evaluate.py
`surrogate.py` is the only module here that imports `medfake.tamper`.
"""
