"""I/O speed and exactness on the real lung1 CT (48 x 512 x 512): load/save in every format, DICOM series
write and read, the DICOM -> MHD -> DICOM round trip, and the orthogonal view. Prints and saves
benchmarks/results/io.json (+ run record). Timings include the machine's current load (recorded)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medfake.data.samples import sample_path
from medfake.render import render_view
from medfake.io import load_scan, save_scan
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 3


def timed(action):
    """Best of REPEATS wall-clock seconds and the last result."""
    best, result = float("inf"), None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> dict:
    lung1 = load_scan(sample_path("lung1"))
    out: dict = {"scan": "lung1", "shape": list(lung1.shape), "load_average_1min": os.getloadavg()[0],
                 "cpu_count": os.cpu_count(), "seconds": {}, "exact": {}}
    seconds = out["seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counter = iter(range(10_000))
        seconds["load_nrrd"], _ = timed(lambda: load_scan(sample_path("lung1")))
        for name in ("mhd", "nrrd", "nifti", "npz"):
            seconds[f"save_{name}"], path = timed(lambda: save_scan(lung1, tmp / f"s{next(counter)}", format=name))
            seconds[f"load_{name}"], back = timed(lambda: load_scan(path))
            out["exact"][name] = bool(np.array_equal(back.voxels, lung1.voxels))
        seconds["save_dicom_series"], series = timed(lambda: save_scan(lung1, tmp / f"d{next(counter)}", format="dicom"))
        seconds["load_dicom_series"], dicom = timed(lambda: load_scan(series))
        mhd = load_scan(save_scan(dicom, tmp / "round.mhd"))
        again = load_scan(save_scan(mhd, tmp / "round_dicom", format="dicom"))
        out["exact"]["dicom_mhd_dicom_voxels"] = bool(np.array_equal(again.voxels, lung1.voxels))
        out["max_origin_error_mm"] = float(np.max(np.abs(np.subtract(again.origin, lung1.origin))))
        out["max_spacing_error_mm"] = float(np.max(np.abs(np.subtract(again.spacing, lung1.spacing))))
        seconds["orthogonal_view"], _ = timed(lambda: render_view(lung1, (33, 359, 218), "lung"))
    out["slices_per_second_dicom_read"] = lung1.shape[0] / seconds["load_dicom_series"]
    return out


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = main()
    (RESULTS / "io.json").write_text(json.dumps(result, indent=1))
    write_run_record(RESULTS, {"benchmark": "io", "repeats": REPEATS}, seed=None, name="io.run.json")
    print(json.dumps(result, indent=1))
