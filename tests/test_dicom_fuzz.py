"""A small, deterministic replay of benchmarks/fuzz_dicom.py: every mutation kind (truncation, byte flips,
deleted geometry tags, wrong VRs, absurd values, huge lengths, series with a broken slice, duplicate
positions, mixed series) on small real files and on 8 slices of lung1 written as DICOM.

Each case must end in a sane read or a one-line MedfakeError naming the input, with no warning leaking
out; through the CLI (`info`, `convert`) in exit code 0 or in exit code 2 with one line
`error: <file>: <problem>` on stderr and nothing written.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from clihelp import run_cli
from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io import load_scan

FILES = ["pydicom/CT_small.dcm", "pydicom/MR_small_expb.dcm", "pydicom/MR_small_implicit.dcm",
         "pydicom-data/emri_small.dcm", "pydicom/JPEG2000.dcm", "pydicom/rtplan.dcm"]
PER_KIND = 3


def _load_fuzz():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_dicom.py"
    spec = importlib.util.spec_from_file_location("fuzz_dicom", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_dicom"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
import dicom_mutations as mutations  # noqa: E402  (benchmarks/, put on the path by fuzz_dicom)


@pytest.fixture(scope="module")
def cases(lung1_dicom):
    files = [sample_path(name) for name in FILES]
    return mutations.plan_cases(files, [lung1_dicom], {kind: PER_KIND for kind in mutations.PLAN})


def test_the_replay_covers_every_kind(cases):
    assert sorted({case.kind for case in cases}) == sorted(mutations.MUTATIONS)
    assert len(cases) == PER_KIND * len(mutations.MUTATIONS)


def test_every_mutation_reads_or_fails_in_one_line(cases, tmp_path):
    outcomes = {}
    for index, case in enumerate(cases):
        path = mutations.make_input(case, tmp_path / f"case{index}")
        result = fuzz.read_case(path, case.source)
        outcomes[case.label] = result["outcome"]
        assert result["outcome"] in fuzz.OK, (case.label, result)
    # the replay exercises both ends: some mutations are read, most are refused
    assert 3 <= list(outcomes.values()).count("read") < len(outcomes) - 10


@pytest.mark.parametrize("kind", list(mutations.PLAN))
def test_the_cli_gives_a_result_or_one_line_and_exit_code_2(kind, cases, tmp_path, capsys):
    case = next(c for c in cases if c.kind == kind)
    path = mutations.make_input(case, tmp_path / "in")
    for command in ("info", "convert"):
        out_dir = tmp_path / f"out_{command}"
        out_dir.mkdir()
        dest = out_dir / "result.nrrd"
        args = ["info", path] if command == "info" else ["convert", path, dest]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, stdout, stderr = run_cli(args, capsys)
        result = fuzz.judge_cli(path, command, code, stdout, stderr, out_dir, dest)
        assert result["outcome"] in fuzz.OK, (case.label, command, result)
        assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]


def _with_vr(source: Path, keyword: str, vr: bytes, out: Path) -> Path:
    """`source` with the two VR bytes of `keyword` overwritten (explicit VR little endian)."""
    elem = next(e for e in mutations.raw_elements(source) if pydicom.datadict.keyword_for_tag(e.tag) == keyword)
    data = bytearray(source.read_bytes())
    at = elem.value_tell - (8 if elem.VR in mutations.LONG_FORM else 4)
    data[at: at + 2] = vr
    out.write_bytes(bytes(data))
    return out


def test_an_unknown_vr_in_rows_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    path = _with_vr(sample_path("pydicom/CT_small.dcm"), "Rows", b"ZZ", tmp_path / "rows.dcm")
    with pytest.raises(MedfakeError) as caught:
        load_scan(path)
    assert caught.value.path == str(path) and "Rows" in caught.value.message
    code, stdout, stderr = run_cli(["info", path], capsys)
    assert code == 2 and stdout == "" and stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith(f"error: {path}: corrupt DICOM element Rows")


def test_an_unknown_vr_in_an_unused_element_is_dropped_with_a_note(tmp_path):
    source = sample_path("pydicom/CT_small.dcm")
    path = _with_vr(source, "PatientName", b"ZZ", tmp_path / "name.dcm")
    scan, clean = load_scan(path), load_scan(source)
    assert np.array_equal(scan.voxels, clean.voxels)
    assert any("PatientName" in note and "ignored" in note for note in scan.meta["warnings"])


def _with_values(source: Path, values: dict[str, bytes], out: Path) -> Path:
    """`source` with the raw value bytes of some elements overwritten in place (same lengths)."""
    data = bytearray(source.read_bytes())
    for elem in mutations.raw_elements(source):
        text = values.get(pydicom.datadict.keyword_for_tag(elem.tag))
        if text is not None:
            data[elem.value_tell: elem.value_tell + elem.length] = text.ljust(elem.length)[: elem.length]
    out.write_bytes(bytes(data))
    return out


def test_pydicom_value_warnings_become_notes_not_stderr(tmp_path):
    source = sample_path("pydicom/CT_small.dcm")
    uid = pydicom.dcmread(source).StudyInstanceUID.encode()
    path = _with_values(source, {"StudyInstanceUID": b"x" + uid[1:], "SliceThickness": b"five",
                                 "SpacingBetweenSlices": b"six"}, tmp_path / "odd.dcm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = load_scan(path)
    assert [str(w.message) for w in caught] == []
    assert any("Invalid value for VR UI" in note for note in scan.meta["warnings"])
    assert scan.spacing[0] == 1.0 and any("'six' is not a usable slice spacing" in note for note in scan.meta["warnings"])


def test_a_blank_sop_instance_uid_does_not_collapse_a_series(lung1_dicom, tmp_path):
    """Anonymised exports (TotalSegmentator's example) blank SOPInstanceUID: every slice still counts."""
    folder = tmp_path / "blank"
    folder.mkdir()
    for file in sorted(lung1_dicom.iterdir()):
        ds = pydicom.dcmread(file)
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(folder / file.name)
    assert load_scan(folder).shape == (8, 512, 512)
