"""Peak memory of tampering and of its parts on a 512² × 300 CT series (lung1 interpolated along z), against
the volume's own int16 size. Target: ≤ 4× that size.

Each case runs in a fresh subprocess (`--case NAME`), which reports
  tracemalloc_peak_mb  the largest Python/numpy heap during the case (torch's allocator is not traced)
  rss_extra_mb         peak resident memory during the case (VmHWM, reset at its start) minus the resident
                       memory at its start (after the imports, and the input volume where the case gets one)
Cases: reading the DICOM series alone; the CLI's `tamper_file` on the DICOM series (classical inpaint
removal at lung1's nodule; copy-move injection at 3 automatic sites, which adds the lung mask and the CAD);
`medfake detect --screen`'s `detect_screen` with the training-free selfref detector (read, lung mask,
3-D map, findings and overlays written) and, given `--residual RUN`, with the learned noise residual; and the
lung mask and CAD alone on the volume in memory. `--screening` runs only the read and the screening cases
(memory_screening.json); `--watermark` only the read, `protect --method watermark` (DICOM out) and
`verify-watermark` on that output (memory_watermark.json).
Prints and saves benchmarks/results/memory.json (+ run record), with the load average: the machine is
shared, which moves the timings but not the memory figures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(os.environ.get("MEDFAKE_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
SLICES = 300
WATERMARK_KEY = "memory benchmark key"
NODULE_48 = (33, 359, 218)  # lung1's nodule, voxel z,y,x in the original 48 slices


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(l for l in fh if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def resampled_lung1(slices: int):
    from medfake.data.samples import sample_path
    from medfake.io import load_scan

    scan = load_scan(sample_path("lung1"))
    z = np.linspace(0, scan.shape[0] - 1, slices)
    low = np.floor(z).astype(int)
    high = np.minimum(low + 1, scan.shape[0] - 1)
    voxels = np.empty((slices, *scan.shape[1:]), np.int16)
    for k, (a, b, w) in enumerate(zip(low, high, z - low)):  # slice by slice: no float copy of the volume
        voxels[k] = np.rint((1 - w) * scan.voxels[a] + w * scan.voxels[b])
    spacing = (scan.spacing[0] * (scan.shape[0] - 1) / (slices - 1), *scan.spacing[1:])
    return scan.with_voxels(voxels, spacing=spacing)


def nodule_voxel(slices: int) -> str:
    z, y, x = NODULE_48
    return f"{round(z * (slices - 1) / 47)},{y},{x}"


def run_case(case: str, series: Path, out: Path) -> dict:
    """In this (fresh) process: import, measure the baseline, run the case under tracemalloc."""
    from medfake.cad import detect_nodules
    from medfake.io import load_scan
    from medfake.lungmask import lung_mask
    from medfake.protect.config import ProtectConfig
    from medfake.protect.run import protect_file
    from medfake.protect.watermark_files import verify_file
    from medfake.tamper.config import TamperRequest
    from medfake.tamper.run import tamper_file

    scan = load_scan(series) if case in ("lung_mask", "cad") else None
    lung = np.load(out.parent / "lung.npy") if case == "cad" else None  # saved by the lung_mask case
    detector = None
    if case.startswith("screen_"):
        from medfake.detect.detectors import load_detector
        from medfake.detect.report import detect_screen

        detector = load_detector(os.environ.get("MEDFAKE_BENCH_RESIDUAL", "") if case == "screen_residual" else "selfref")
    baseline = rss_mb()
    reset_peak_rss()
    tracemalloc.start()
    if case == "load_dicom":
        load_scan(series)
    elif case.startswith("screen_"):
        detect_screen(load_scan(series), detector, out)
    elif case == "tamper_remove_inpaint":
        tamper_file(TamperRequest(target=series, outdir=out, action="remove", coords=[nodule_voxel(SLICES)],
                                  method="inpaint", fmt="dicom"))
    elif case == "tamper_inject_auto3_copy_move":
        tamper_file(TamperRequest(target=series, outdir=out, action="inject", auto=3, method="copy-move",
                                  fmt="dicom"))
    elif case == "protect_watermark":
        protect_file(series, out.parent / "marked", [], ProtectConfig(8.0, method="watermark", key=WATERMARK_KEY),
                     fmt="dicom", show_progress=False)
    elif case == "verify_watermark":  # the series the protect_watermark case wrote
        verify_file(next((out.parent / "marked").glob("*/")), out, WATERMARK_KEY)
    elif case == "lung_mask":
        lung = lung_mask(scan)
    elif case == "cad":
        detect_nodules(scan, lung)
    else:
        raise SystemExit(f"unknown case {case}")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if case == "lung_mask":
        np.save(out.parent / "lung.npy", lung)
    return {"tracemalloc_peak_mb": peak / 2**20, "rss_baseline_mb": baseline, "rss_peak_mb": peak_rss_mb(),
            "rss_extra_mb": peak_rss_mb() - baseline, "volume_loaded_before": scan is not None}


CASES = ("load_dicom", "tamper_remove_inpaint", "tamper_inject_auto3_copy_move", "screen_selfref", "lung_mask", "cad")


def main(cases=CASES) -> dict:
    from medfake.io import save_scan

    scan = resampled_lung1(SLICES)
    volume_mb = scan.voxels.nbytes / 2**20
    out: dict = {"scan": f"lung1 interpolated to {SLICES} slices, DICOM series", "shape": list(scan.shape),
                 "volume_int16_mb": volume_mb, "target_mb": 4 * volume_mb, "cpu_count": os.cpu_count(),
                 "load_average_1min_start": os.getloadavg()[0], "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        series = save_scan(scan, Path(tmp) / "series", format="dicom")
        del scan
        for case in cases:
            done = subprocess.run([sys.executable, __file__, "--case", case, "--series", str(series), "--out",
                                   str(Path(tmp) / case)], capture_output=True, text=True)
            if done.returncode != 0:
                out["cases"][case] = {"error": done.stderr.strip().splitlines()[-1:]}
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures["tracemalloc_vs_volume"] = round(figures["tracemalloc_peak_mb"] / volume_mb, 2)
            figures["rss_extra_vs_volume"] = round(figures["rss_extra_mb"] / volume_mb, 2)
            out["cases"][case] = figures
    out["load_average_1min_end"] = os.getloadavg()[0]
    out["note"] = ("shared machine (2 cores, several agents): the load average is recorded; memory figures do "
                   "not depend on it")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--series", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screening", action="store_true",
                        help="only the screening cases (and the DICOM read), saved as memory_screening.json")
    parser.add_argument("--watermark", action="store_true",
                        help="only the keyed watermark: protect --method watermark and verify-watermark (memory_watermark.json)")
    parser.add_argument("--residual", default="", help="a `residual` detector run: adds the screen_residual case")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.series, args.out)))
    else:
        from medfake.runinfo import write_run_record

        RESULTS.mkdir(parents=True, exist_ok=True)
        cases = ("load_dicom", "screen_selfref") if args.screening else CASES
        if args.watermark:
            cases = ("load_dicom", "protect_watermark", "verify_watermark")
        if args.residual:
            os.environ["MEDFAKE_BENCH_RESIDUAL"] = str(Path(args.residual).resolve())  # the case subprocesses read it
            cases = (*cases, "screen_residual")
        result = main(cases)
        name = "memory_watermark" if args.watermark else "memory_screening" if args.screening else "memory"
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
        write_run_record(RESULTS, {"benchmark": "memory", "slices": SLICES, "cases": list(cases),
                                   "residual": args.residual}, seed=None, name=f"{name}.run.json")
        print(json.dumps(result, indent=1))
