"""DICOM fuzzing: mutate real DICOM files and series and check that the reader stands up to them.

Sources: the pydicom and pydicom-data test files (single images, multi-frame, compressed, big endian,
implicit VR, non-image objects) and two real CT series (TotalSegmentator's example_ct_dicom and 8 slices
of lung1 written as DICOM). Mutations: truncation at a random offset, random byte flips in the header,
deleted geometry tags, wrong VRs, absurd values, huge element lengths, duplicate positions and mixed
series. Every case goes through `medfake.io.load_scan` in a worker process with a 10 s limit, and a sample
through the CLI (`medfake info` and `medfake convert`). A case passes when it ends in a sane read or in a
one-line MedfakeError naming the input (CLI: `error: <file>: <problem>` on stderr, exit code 2, nothing
written); anything else (traceback, hang, crash, warning leaking out, partial output) is a finding.

    python benchmarks/fuzz_dicom.py            # ~1,200 cases + 60 CLI cases; benchmarks/results/fuzz_dicom.json
    python benchmarks/fuzz_dicom.py --smoke    # a few cases of each kind; fuzz_dicom_smoke.json

The mutations live in `dicom_mutations.py`; `tests/test_dicom_fuzz.py` replays a small deterministic set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by the tests rather than run
    sys.path.append(str(Path(__file__).resolve().parent))
from dicom_mutations import (PLAN, SERIES_KINDS, Case, file_sources, make_input, plan_cases,  # noqa: E402
                             series_sources)

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 10.0
FALLBACK = "unexpected problem reading"  # load_scan's last-resort message
# --- judging one read ----------------------------------------------------------------------------------
def sane(scan) -> str | None:
    """Why a returned Scan is not a correct read, or None."""
    if scan.voxels.ndim != 3 or min(scan.voxels.shape) < 1:
        return f"shape {scan.voxels.shape}"
    if not all(np.isfinite(s) and s > 0 for s in scan.spacing):
        return f"spacing {scan.spacing}"
    if not np.all(np.isfinite(scan.origin)) or not np.allclose(scan.direction.T @ scan.direction, np.eye(3), atol=1e-3):
        return "origin or direction not finite/orthonormal"
    if np.issubdtype(scan.voxels.dtype, np.floating) and not np.all(np.isfinite(scan.voxels)):
        return "non-finite voxels"
    return None


_REFERENCES: dict[str, tuple | None] = {}


def geometry(scan) -> tuple:
    return scan.voxels.shape, np.round(scan.spacing, 4), np.round(scan.origin, 3), np.round(scan.direction, 4)


def reference(source: str) -> tuple | None:
    """The clean source's geometry and how many notes its read carries (None when it does not read)."""
    from medfake.io import load_scan

    if source not in _REFERENCES:
        try:
            scan = load_scan(source)
            _REFERENCES[source] = (geometry(scan), notes_of(scan))
        except Exception:
            _REFERENCES[source] = None
    return _REFERENCES[source]


def notes_of(scan) -> int:
    return len(scan.meta.get("warnings", [])) + len(scan.meta.get("gaps", []))


def silent_change(scan, source: str) -> str | None:
    """A read whose geometry differs from the clean source's must say why (a warning or a gap note)."""
    clean = reference(source)
    if clean is None:
        return None
    (shape, spacing, origin, direction), notes = clean
    same = scan.voxels.shape == shape and all(np.allclose(a, b, atol=1e-3) for a, b in
                                              zip(geometry(scan)[1:], (spacing, origin, direction)))
    if same or notes_of(scan) > notes:
        return None
    return f"geometry changed without a note: shape {scan.voxels.shape} spacing {tuple(np.round(scan.spacing, 3))}"


def read_case(path: Path, source: str | None = None) -> dict:
    """Read `path` with load_scan: the outcome and, for a failure, what went wrong."""
    from medfake.errors import MedfakeError
    from medfake.io import load_scan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scan = load_scan(path)
        except MedfakeError as exc:
            text = exc.one_line()
            named = exc.path is not None and exc.path.startswith(str(path))
            outcome = "error" if named and "\n" not in text else "bad_error"
            if outcome == "error" and FALLBACK in text:  # one line, but a path the reader did not foresee
                outcome = "fallback_error"
            result = {"outcome": outcome, "message": text[:300]}
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            result = {"outcome": "exception", "message": f"{type(exc).__name__}: {str(exc)[:200]} at {where}"}
        else:
            problem = sane(scan)
            if problem is None and source is not None and silent_change(scan, source):
                result = {"outcome": "silent_change", "message": silent_change(scan, source)}
            else:
                result = {"outcome": "read" if problem is None else "bad_read", "message": problem or ""}
    if caught:
        result["warning"] = f"{caught[0].category.__name__}: {str(caught[0].message)[:200]}"
        if result["outcome"] in ("read", "error"):
            result["outcome"] = "warning_leaked"
    return result


def run_case(case: Case, workdir: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="case", dir=workdir))
    try:
        try:
            path = make_input(case, folder)
        except Exception as exc:  # a bug of the fuzzer, not of the reader: counted apart
            return {"outcome": "mutation_failed", "message": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return read_case(path, case.source)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- worker processes with a hard time limit ---------------------------------------------------------
def _serve(conn, workdir: str, series: list[str]) -> None:
    for source in series:  # read the clean series once, before any case is timed
        reference(source)
    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(run_case(Case(**case), Path(workdir)))


class Worker:
    """One reader process; killed and replaced when a case hangs or crashes it."""

    def __init__(self, workdir: Path, series: list[str]):
        self.workdir, self.series = workdir, series
        self.start()

    def start(self) -> None:
        self.conn, child = mp.get_context("fork").Pipe()
        self.proc = mp.get_context("fork").Process(target=_serve, args=(child, str(self.workdir), self.series),
                                                   daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")

    def run(self, case: Case) -> dict:
        """The case's result; a case that times out is run once more in a fresh worker, so that a burst of
        load on a shared machine is not mistaken for a hang."""
        result = self._run_once(case)
        if result["outcome"] == "hang":
            result = {**self._run_once(case), "retried": True}
        return result

    def _run_once(self, case: Case) -> dict:
        started = time.perf_counter()
        self.conn.send(asdict(case))
        try:
            if self.conn.poll(TIMEOUT_S):
                result = self.conn.recv()
                result["seconds"] = round(time.perf_counter() - started, 3)
                return result
            outcome = {"outcome": "hang", "message": f"no answer in {TIMEOUT_S:g} s"}
        except EOFError:
            outcome = {"outcome": "crash", "message": "worker died"}
        self.proc.kill()
        self.proc.join()
        if outcome["outcome"] == "crash":
            outcome["message"] = f"worker died with exit code {self.proc.exitcode}"
        self.start()
        return outcome

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def run_all(cases: list[Case], workdir: Path, processes: int) -> list[dict]:
    series = sorted({case.source for case in cases if case.kind in SERIES_KINDS})
    results: list[dict | None] = [None] * len(cases)
    lock, next_index = threading.Lock(), [0]

    def drain() -> None:
        worker = Worker(workdir, series)
        try:
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(cases):
                    return
                results[index] = {"case": cases[index].label, "kind": cases[index].kind, **worker.run(cases[index])}
        finally:
            worker.stop()

    threads = [threading.Thread(target=drain) for _ in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# --- the CLI ------------------------------------------------------------------------------------------
def cli_check(path: Path, command: str, out_dir: Path) -> dict:
    """Run `medfake info|convert` on `path` in a fresh interpreter; judge exit code, stderr and outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / ("result.nrrd" if command == "convert" else "unused")
    args = ["info", str(path)] if command == "info" else ["convert", str(path), str(dest)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    for attempt in range(2):  # a time-out is tried once more (load bursts on a shared machine)
        try:
            done = subprocess.run([sys.executable, "-m", "medfake.cli", *args], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            shutil.rmtree(out_dir)
            out_dir.mkdir()
            continue
        result = judge_cli(path, command, done.returncode, done.stdout, done.stderr, out_dir, dest)
        return {**result, "retried": True} if attempt else result
    return {"outcome": "hang", "message": f"no exit in {TIMEOUT_S:g} s, twice", "retried": True}


def judge_cli(path: Path, command: str, code: int, stdout: str, stderr: str, out_dir: Path, dest: Path) -> dict:
    lines = stderr.strip().splitlines()
    left = sorted(p.name for p in out_dir.iterdir())
    if code == 2:
        one_line = len(lines) == 1 and lines[0].startswith(f"error: {path}")
        if not one_line:
            return {"outcome": "bad_error", "message": " | ".join(lines)[:300]}
        if left or stdout.strip():
            return {"outcome": "partial_output", "message": f"left {left}, stdout {stdout[:80]!r}"}
        return {"outcome": "fallback_error" if FALLBACK in lines[0] else "error", "message": lines[0][:300]}
    if code == 0:
        if stderr.strip():
            return {"outcome": "warning_leaked", "message": " | ".join(lines)[:300]}
        if command == "convert":
            from medfake.io import load_scan

            if left != [dest.name]:
                return {"outcome": "partial_output", "message": f"left {left}"}
            problem = sane(load_scan(dest))
            if problem:
                return {"outcome": "bad_read", "message": problem}
        elif not stdout.strip():
            return {"outcome": "bad_read", "message": "no output"}
        return {"outcome": "read", "message": ""}
    crashed = code < 0 or "Traceback" in stderr
    return {"outcome": "crash" if code < 0 else "exception" if crashed else "bad_exit",
            "message": f"exit {code}: {' | '.join(lines)[-300:]}"}


def cli_sample(cases: list[Case], per_kind: int) -> list[Case]:
    by_kind = defaultdict(list)
    for case in cases:
        by_kind[case.kind].append(case)
    return [case for kind_cases in by_kind.values() for case in kind_cases[:: max(1, len(kind_cases) // per_kind)][:per_kind]]


def run_cli_sample(cases: list[Case], workdir: Path) -> list[dict]:
    results = []
    for index, case in enumerate(cases):
        folder = workdir / f"cli{index}"
        try:
            path = make_input(case, folder / "in")
        except Exception:  # counted in the reader's part as mutation_failed
            continue
        for command in ("info", "convert"):
            result = cli_check(path, command, folder / f"out_{command}")
            results.append({"case": case.label, "kind": case.kind, "command": command, **result})
        shutil.rmtree(folder, ignore_errors=True)
    return results


# --- summary --------------------------------------------------------------------------------------------
OK = {"read", "error"}


def summarise(results: list[dict]) -> dict:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        by_kind[result["kind"]][result["outcome"]] += 1
    totals = Counter(result["outcome"] for result in results)
    findings = [r for r in results if r["outcome"] not in OK | {"mutation_failed"}]
    return {"cases": len(results), "outcomes": dict(totals), "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "timed_out_once_then_retried": sum(1 for r in results if r.get("retried")),
            "findings": len(findings), "finding_examples": findings[:200]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few cases per kind; writes fuzz_dicom_smoke.json")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cli-per-kind", type=int, default=5, help="CLI cases per mutation kind (0: none)")
    args = parser.parse_args(argv)
    from medfake.runinfo import write_run_record

    plan = {kind: 3 for kind in PLAN} if args.smoke else PLAN
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_dicom.") as tmp:
        workdir = Path(tmp)
        files, series = file_sources(), series_sources(workdir / "sources")
        cases = plan_cases(files, series, plan)
        reader = run_all(cases, workdir, args.processes)
        reader_seconds = time.perf_counter() - started
        per_kind = 1 if args.smoke else args.cli_per_kind
        cli = run_cli_sample(cli_sample(cases, per_kind), workdir) if per_kind else []
    result = {
        "timeout_s": TIMEOUT_S, "file_sources": len(files), "series_sources": [p.name for p in series],
        "reader": summarise(reader), "cli": summarise(cli),
        "cli_cases": len({r["case"] for r in cli}),
        "seconds": {"reader": round(reader_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "processes": args.processes, "load_average_1min": os.getloadavg()[0], "pydicom": pydicom.__version__,
    }
    name = "fuzz_dicom_smoke" if args.smoke else "fuzz_dicom"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    write_run_record(RESULTS, {"benchmark": name, "plan": plan, "timeout_s": TIMEOUT_S}, seed=None, name=f"{name}.run.json")
    print(json.dumps({k: v for k, v in result.items() if k not in ("reader", "cli")}, indent=1))
    for part in ("reader", "cli"):
        print(part, json.dumps({k: v for k, v in result[part].items() if k != "finding_examples"}, indent=1))
    return result


if __name__ == "__main__":
    main()
