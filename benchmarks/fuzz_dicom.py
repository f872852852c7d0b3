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

`tests/test_dicom_fuzz.py` replays a small deterministic set of these mutations.
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
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 10.0
FALLBACK = "unexpected problem reading"  # load_scan's last-resort message
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                 "BitsAllocated")
OTHER_TAGS = ("BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
              "PixelData", "SOPClassUID", "SeriesInstanceUID", "Modality", "NumberOfFrames", "RescaleSlope")
ABSURD = [
    ("PixelSpacing", ["0", "0"]), ("PixelSpacing", ["-0.7", "-0.7"]), ("PixelSpacing", ["nan", "nan"]),
    ("PixelSpacing", ["1e308", "1e308"]), ("PixelSpacing", ["0.5"]), ("Rows", 0), ("Columns", 0),
    ("Rows", 65535), ("Columns", 1), ("BitsAllocated", 7), ("BitsAllocated", 0), ("BitsAllocated", 64),
    ("BitsStored", 0), ("BitsStored", 17), ("HighBit", 40), ("PixelRepresentation", 2), ("SamplesPerPixel", 0),
    ("SamplesPerPixel", 3), ("NumberOfFrames", "0"), ("NumberOfFrames", "-3"), ("NumberOfFrames", "100000"),
    ("SliceThickness", "0"), ("SliceThickness", "-5"), ("SpacingBetweenSlices", "-1"), ("RescaleSlope", "0"),
    ("RescaleSlope", "1e300"), ("RescaleSlope", "nan"), ("RescaleIntercept", "inf"),
    ("ImageOrientationPatient", ["0"] * 6), ("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]),
    ("ImageOrientationPatient", ["1e308", "0", "0", "0", "1", "0"]), ("ImagePositionPatient", ["nan", "0", "0"]),
    ("ImagePositionPatient", ["1e308", "1e308", "1e308"]), ("ImagePositionPatient", ["1", "2"]),
    ("PhotometricInterpretation", "PALETTE COLOR"), ("PhotometricInterpretation", "YBR_FULL"),
    ("WindowWidth", "0"), ("InstanceNumber", "-2147483648"), ("Modality", "SEG"),
]
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")
BAD_VRS = ("ZZ", "  ", "\0\0", "ds", "U?", "XQ")
LONG_FORM = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
HUGE_LENGTHS = (0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFF, 0x00FFFFFF, 0xFFFF)


@dataclass(frozen=True)
class Case:
    kind: str
    source: str  # a file, or a series folder for the series kinds
    seed: int

    @property
    def label(self) -> str:
        return f"{self.kind}:{Path(self.source).name}:{self.seed}"


# --- sources ----------------------------------------------------------------------------------------
def file_sources(max_bytes: int = 1_500_000) -> list[Path]:
    """The pydicom and pydicom-data test files (skipping very large ones to keep the run short)."""
    from medfake.data.samples import sample_path

    folders = {sample_path("pydicom/CT_small.dcm").parent, sample_path("pydicom-data/liver.dcm").parent}
    return sorted(p for folder in folders for p in folder.glob("*.dcm") if p.stat().st_size <= max_bytes)


def series_sources(workdir: Path) -> list[Path]:
    """TotalSegmentator's example CT series and 8 slices of lung1 written as a DICOM series."""
    from medfake.data.samples import fetch, sample_path
    from medfake.io import load_scan, save_scan

    lung1_series = workdir / "lung1_8"
    if not lung1_series.exists():
        lung1 = load_scan(sample_path("lung1"))
        slab = lung1.with_voxels(np.ascontiguousarray(lung1.voxels[29:37]),
                                 origin=tuple(lung1.voxel_to_world((29, 0, 0))), meta={"format": "nrrd", "path": None})
        save_scan(slab, lung1_series, format="dicom")
    return [fetch("totalsegmentator") / "example_ct_dicom", lung1_series]


# --- helpers to edit files ---------------------------------------------------------------------------
def read_any(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def write_any(ds: Dataset, path: Path) -> None:
    """Write `ds` as it was encoded, whatever its values (validation off while writing)."""
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path, enforce_file_format=False)
    finally:
        pydicom_config.settings.writing_validation_mode = old


def pixel_data_offset(data: bytes) -> int:
    """Where the pixel data element starts (the header ends), else the end of the file."""
    found = [i for i in (data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10")) if i > 0]
    return min(found) if found else len(data)


def raw_elements(path: Path) -> list:
    """The top-level raw elements of the main data set, with where their values start in the file
    (none for a deflated data set, whose offsets are in the inflated stream)."""
    ds = read_any(path)
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return []
    return [elem for elem in ds._dict.values() if getattr(elem, "value_tell", None) and elem.tag.group != 0x7FE0]


def suits(kind: str, path: Path) -> bool:
    """Raw-byte mutations need elements with known offsets (and explicit VRs for wrong_vr)."""
    if kind not in ("wrong_vr", "huge_length"):
        return True
    elements = raw_elements(path)
    return bool(elements) and (kind == "huge_length" or not elements[0].is_implicit_VR)


def _nested_items(ds: Dataset):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield item
                yield from _nested_items(item)


def delete_everywhere(ds: Dataset, keyword: str) -> None:
    for item in [ds, *_nested_items(ds)]:
        if keyword in item:
            del item[keyword]


def set_everywhere(ds: Dataset, keyword: str, value) -> None:
    """Set `keyword` at the top level and wherever a nested item (functional group) also holds it."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    items = [item for item in _nested_items(ds) if keyword in item]
    for item in [ds, *items]:
        if keyword in item:
            item[keyword].value = value
        else:
            item.add_new(tag, dictionary_VR(tag), value)


def set_native_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Store `pixels` uncompressed (the source may be JPEG 2000)."""
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def _copy_series(source: Path, out: Path) -> list[Path]:
    shutil.copytree(source, out)
    return sorted(p for p in out.iterdir() if p.is_file())


# --- single-file mutations ---------------------------------------------------------------------------
def truncate(source: Path, rng, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: int(rng.integers(0, len(data)))])
    return out


def flip(source: Path, rng, out: Path) -> Path:
    data = bytearray(source.read_bytes())
    end = pixel_data_offset(bytes(data))
    for _ in range(int(rng.integers(1, 5))):
        position = int(rng.integers(0, end))
        data[position] ^= int(rng.integers(1, 256))
    out.write_bytes(bytes(data))
    return out


def delete_tag(source: Path, rng, out: Path) -> Path:
    ds = read_any(source)
    present = [k for k in GEOMETRY_TAGS if k in ds or any(k in i for i in _nested_items(ds))]
    choices = present if present and rng.random() < 0.8 else [k for k in OTHER_TAGS if k in ds] or list(GEOMETRY_TAGS)
    delete_everywhere(ds, str(rng.choice(choices)))
    write_any(ds, out)
    return out


def wrong_vr(source: Path, rng, out: Path) -> Path:
    """Overwrite the two VR bytes of one element (an explicit VR source): another VR or no VR at all."""
    elements = raw_elements(source)
    interesting = [e for e in elements if pydicom.datadict.keyword_for_tag(e.tag) in GEOMETRY_TAGS + OTHER_TAGS]
    pool = interesting if interesting and rng.random() < 0.6 else elements
    elem = pool[int(rng.integers(0, len(pool)))]
    new_vr = str(rng.choice(BAD_VRS if rng.random() < 0.3 else VRS))
    data = bytearray(source.read_bytes())
    vr_at = elem.value_tell - (8 if elem.VR in LONG_FORM else 4)
    data[vr_at: vr_at + 2] = new_vr.encode("latin-1")
    out.write_bytes(bytes(data))
    return out


def absurd(source: Path, rng, out: Path) -> Path:
    ds = read_any(source)
    keyword, value = ABSURD[int(rng.integers(0, len(ABSURD)))]
    set_everywhere(ds, keyword, value)
    write_any(ds, out)
    return out


def huge_length(source: Path, rng, out: Path) -> Path:
    elem = (elements := raw_elements(source))[int(rng.integers(0, len(elements)))]
    data = bytearray(source.read_bytes())
    order = "<" if elem.is_little_endian else ">"
    length = HUGE_LENGTHS[int(rng.integers(0, len(HUGE_LENGTHS)))]
    if not elem.is_implicit_VR and elem.VR not in LONG_FORM:
        data[elem.value_tell - 2: elem.value_tell] = np.array(min(length, 0xFFFF), dtype=f"{order}u2").tobytes()
    else:
        data[elem.value_tell - 4: elem.value_tell] = np.array(length, dtype=f"{order}u4").tobytes()
    out.write_bytes(bytes(data))
    return out


# --- series mutations (the source is a folder) ------------------------------------------------------
def _one_or_all(files: list[Path], rng) -> list[Path]:
    return files if rng.random() < 0.4 else [files[int(rng.integers(0, len(files)))]]


def series_truncate(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    truncate(victim, rng, victim)
    return out


def series_flip(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    flip(victim, rng, victim)
    return out


def series_delete_tag(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    keyword = str(rng.choice(GEOMETRY_TAGS))
    for path in _one_or_all(files, rng):
        ds = read_any(path)
        delete_everywhere(ds, keyword)
        write_any(ds, path)
    return out


def series_absurd(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    keyword, value = ABSURD[int(rng.integers(0, len(ABSURD)))]
    for path in _one_or_all(files, rng):
        ds = read_any(path)
        set_everywhere(ds, keyword, value)
        write_any(ds, path)
    return out


def duplicate_position(source: Path, rng, out: Path) -> Path:
    """A slice moved onto another's position, or an extra copy of a slice (same or new SOPInstanceUID)."""
    files = _copy_series(source, out)
    i, j = (int(v) for v in rng.choice(len(files), size=2, replace=False))
    variant = int(rng.integers(0, 3))
    if variant == 0:
        target = read_any(files[j])
        target.ImagePositionPatient = read_any(files[i]).ImagePositionPatient
        write_any(target, files[j])
    else:
        copy = read_any(files[i])
        if variant == 2:
            copy.SOPInstanceUID = generate_uid()
        write_any(copy, out / f"copy_{files[i].name}")
    return out


def mixed_series(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    variant = int(rng.integers(0, 8))
    if variant == 0:  # a foreign image dropped into the folder
        others = file_sources()
        shutil.copy(others[int(rng.integers(0, len(others)))], out / "foreign.dcm")
        return out
    if variant == 1:  # a second series (same images, new UIDs) in a subfolder
        series_uid = generate_uid()
        for path in _copy_series(source, out / "sub"):
            ds = read_any(path)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            write_any(ds, path)
        return out
    if variant == 2:  # junk that is not DICOM at all
        (out / "notes.txt").write_bytes(rng.bytes(int(rng.integers(0, 4000))))
        return out
    ds = read_any(victim)
    if variant == 3:
        ds.SeriesInstanceUID = generate_uid()
    elif variant == 4:  # one slice cropped to another size
        pixels = ds.pixel_array[: ds.Rows // 2, : ds.Columns // 3].copy()
        ds.Rows, ds.Columns = pixels.shape
        set_native_pixels(ds, pixels)
    elif variant == 5:  # one slice in another orientation (a localizer?)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    elif variant == 6:  # one slice stored as 8 bits
        pixels = (ds.pixel_array // 256).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        set_native_pixels(ds, pixels)
    else:  # another modality and rescale
        ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "MR", "2.5", "-7"
    write_any(ds, victim)
    return out


FILE_KINDS = {"truncate": truncate, "flip": flip, "delete_tag": delete_tag, "wrong_vr": wrong_vr,
              "absurd": absurd, "huge_length": huge_length}
SERIES_KINDS = {"series_truncate": series_truncate, "series_flip": series_flip,
                "series_delete_tag": series_delete_tag, "series_absurd": series_absurd,
                "duplicate_position": duplicate_position, "mixed_series": mixed_series}
MUTATIONS = {**FILE_KINDS, **SERIES_KINDS}
PLAN = {"truncate": 200, "flip": 260, "delete_tag": 140, "wrong_vr": 160, "absurd": 160, "huge_length": 80,
        "series_truncate": 25, "series_flip": 30, "series_delete_tag": 40, "series_absurd": 40,
        "duplicate_position": 30, "mixed_series": 45}


def plan_cases(files: list[Path], series: list[Path], plan: dict[str, int]) -> list[Case]:
    """Deterministic cases: sources taken in turn, one seed per (kind, index)."""
    cases = []
    for kind, count in plan.items():
        sources = series if kind in SERIES_KINDS else [p for p in files if suits(kind, p)]
        for index in range(count):
            cases.append(Case(kind, str(sources[index % len(sources)]), zlib.crc32(kind.encode()) % 10_000 * 1000 + index))
    return cases


def make_input(case: Case, folder: Path) -> Path:
    """Write the mutated file or series of `case` under `folder`."""
    rng = np.random.default_rng(case.seed)
    source = Path(case.source)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (source.name if case.kind in SERIES_KINDS else f"{source.stem}_{case.kind}.dcm")
    return MUTATIONS[case.kind](source, rng, out)


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
    try:
        done = subprocess.run([sys.executable, "-m", "medfake.cli", *args], capture_output=True, text=True,
                              timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "message": f"no exit in {TIMEOUT_S:g} s"}
    return judge_cli(path, command, done.returncode, done.stdout, done.stderr, out_dir, dest)


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
