"""`medfake tamper --auto 3` against a plain `medfake convert` of the same 64-slice 512² DICOM series (lung1
interpolated along z), both as CLI subprocesses: wall-clock and CPU seconds (user + sys of the child; the CPU
figure is what to compare on a loaded machine), best of REPEATS. Also the in-process parts that the automatic
sites need: lung mask, CAD candidates, site drawing; and the same comparison in process (`tamper_file` against
`load_scan` + `save_scan`, imports excluded), and whether the CLI's start-up and the classical tamper path
import torch. Target: tamper ≤ 2× convert. The machine is shared (2 cores, several agents): the load average
is recorded; CPU seconds are the figure to compare.
Prints and saves benchmarks/results/auto_sites_timing.json (+ run record)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medfake.data.samples import sample_path
from medfake.io import load_scan, save_scan
from medfake.runinfo import write_run_record

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 3
SLICES = 64
COMMANDS = {
    "convert": ["convert", "{series}", "{out}", "-f", "dicom"],
    "tamper_inject_auto3_copy_move": ["tamper", "-t", "{series}", "-d", "{out}", "-a", "inject", "--auto", "3",
                                      "--method", "copy-move", "-f", "dicom"],
    "tamper_remove_auto3_inpaint": ["tamper", "-t", "{series}", "-d", "{out}", "-a", "remove", "--auto", "3",
                                    "--method", "inpaint", "-f", "dicom"],
}


def resampled_lung1(slices: int):
    """lung1 (48 slices of 5 mm) linearly interpolated along z to `slices` slices over the same extent."""
    scan = load_scan(sample_path("lung1"))
    z = np.linspace(0, scan.shape[0] - 1, slices)
    low = np.floor(z).astype(int)
    high = np.minimum(low + 1, scan.shape[0] - 1)
    weight = (z - low)[:, None, None]
    voxels = np.rint((1 - weight) * scan.voxels[low] + weight * scan.voxels[high]).astype(np.int16)
    spacing = (scan.spacing[0] * (scan.shape[0] - 1) / (slices - 1), *scan.spacing[1:])
    return scan.with_voxels(voxels, spacing=spacing)


def run_cli(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `python -m medfake.cli ...` subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medfake.cli", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed(action) -> tuple[float, float, object]:
    """(wall, CPU) seconds of an in-process call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def parts(scan) -> dict:
    from medfake.cad import detect_nodules
    from medfake.lungmask import lung_mask
    from medfake.tamper.sites import pick_sites

    out = {}
    wall, cpu, lung = timed(lambda: lung_mask(scan))
    out["lung_mask"] = {"wall_s": wall, "cpu_s": cpu}
    wall, cpu, nodules = timed(lambda: detect_nodules(scan, lung))
    out["cad"] = {"wall_s": wall, "cpu_s": cpu, "candidates": len(nodules)}
    avoid = [n.center_zyx for n in nodules]
    wall, cpu, sites = timed(lambda: pick_sites(scan, 3, np.random.default_rng(0), lung, avoid_zyx=avoid,
                                                avoid_mm=20.0))
    out["pick_sites"] = {"wall_s": wall, "cpu_s": cpu, "sites": [list(map(int, s)) for s in sites]}
    return out


def in_process(series: Path, tmp: Path) -> dict:
    """CPU/wall seconds of reading + writing the series against the whole classical `tamper_file`, both
    after their imports (best of REPEATS)."""
    from medfake.tamper.config import TamperRequest
    from medfake.tamper.run import tamper_file

    out = {}
    for name, action in (("convert", None), ("tamper_inject_auto3_copy_move", "inject"),
                         ("tamper_remove_auto3_inpaint", "remove")):
        runs = []
        for k in range(REPEATS):
            dest = tmp / f"in-process-{name}-{k}"
            if action is None:
                work = lambda: save_scan(load_scan(series), dest, format="dicom")  # noqa: E731
            else:
                method = "copy-move" if action == "inject" else "inpaint"
                work = lambda: tamper_file(TamperRequest(target=series, outdir=dest, action=action,  # noqa: E731
                                                         auto=3, method=method, fmt="dicom"))
            wall, cpu, _ = timed(work)
            runs.append((wall, cpu))
        out[name] = {"wall_s": min(w for w, _ in runs), "cpu_s": min(c for _, c in runs)}
    for figures in out.values():
        figures["cpu_vs_convert"] = round(figures["cpu_s"] / out["convert"]["cpu_s"], 2)
        figures["wall_vs_convert"] = round(figures["wall_s"] / out["convert"]["wall_s"], 2)
    return out


def imports_torch(code: str) -> bool:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1] == "True"


def main() -> dict:
    scan = resampled_lung1(SLICES)
    out: dict = {"scan": f"lung1 interpolated to {SLICES} slices", "shape": list(scan.shape),
                 "load_average_1min_start": os.getloadavg()[0], "cpu_count": os.cpu_count(), "repeats": REPEATS,
                 "commands": {}, "parts_in_process": parts(scan)}
    with tempfile.TemporaryDirectory() as tmp:
        series = save_scan(scan, Path(tmp) / "series", format="dicom")
        for name, template in COMMANDS.items():
            runs = []
            for k in range(REPEATS):
                args = [a.format(series=series, out=Path(tmp) / f"{name}-{k}") for a in template]
                runs.append(run_cli(args))
            out["commands"][name] = {"wall_s": min(w for w, _ in runs), "cpu_s": min(c for _, c in runs),
                                     "args": " ".join(template)}
        out["in_process"] = in_process(series, Path(tmp))
    convert = out["commands"]["convert"]
    for name, figures in out["commands"].items():
        figures["wall_vs_convert"] = round(figures["wall_s"] / convert["wall_s"], 2)
        figures["cpu_vs_convert"] = round(figures["cpu_s"] / convert["cpu_s"], 2)
    out["torch_imported"] = {
        "cli_start_up": imports_torch("from medfake.cli import _register; _register()"),
        "classical_tamper_path": imports_torch("import medfake.tamper.run, medfake.lungmask, medfake.cad"),
    }
    out["load_average_1min_end"] = os.getloadavg()[0]
    out["note"] = "shared machine (2 cores, several agents at once): compare CPU seconds; wall depends on the load"
    out["target"] = "tamper --auto 3 ≤ 2× convert"
    return out


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = main()
    (RESULTS / "auto_sites_timing.json").write_text(json.dumps(result, indent=1))
    write_run_record(RESULTS, {"benchmark": "auto_sites_timing", "repeats": REPEATS}, seed=None,
                     name="auto_sites_timing.run.json")
    print(json.dumps(result, indent=1))
