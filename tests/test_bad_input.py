"""Every kind of bad input: one line `error: <file>: <problem>`, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medfake.cli import main
from medfake.data.samples import sample_path


from clihelp import run_cli as run


def text_file(tmp_path, lung1_dicom):
    path = tmp_path / "notes.txt"
    path.write_text("not a scan\n")
    return path, "unknown format"


def text_named_dcm(tmp_path, lung1_dicom):
    path = tmp_path / "fake.dcm"
    path.write_text("not a scan either\n" * 20)
    return path, "not a DICOM file"


def empty_folder(tmp_path, lung1_dicom):
    path = tmp_path / "empty"
    path.mkdir()
    return path, "folder is empty"


def folder_without_dicom(tmp_path, lung1_dicom):
    path = tmp_path / "texts"
    path.mkdir()
    (path / "readme.txt").write_text("hello")
    return path, "no DICOM image files"


def two_series(tmp_path, lung1_dicom):
    path = tmp_path / "two"
    shutil.copytree(lung1_dicom, path / "a")
    shutil.copy(sample_path("pydicom/CT_small.dcm"), path / "b.dcm")
    return path, "2 DICOM series, choose one with --series"


def truncated_dicom(tmp_path, lung1_dicom):
    return sample_path("pydicom/MR_truncated.dcm"), "pixel data"


def truncated_header(tmp_path, lung1_dicom):
    path = tmp_path / "cut.dcm"
    path.write_bytes((lung1_dicom / "IM0001.dcm").read_bytes()[:700])
    return path, "DICOM"


def different_sizes(tmp_path, lung1_dicom):
    path = tmp_path / "sizes"
    shutil.copytree(lung1_dicom, path)
    ds = pydicom.dcmread(path / "IM0002.dcm")
    ds.PixelData = ds.pixel_array[:100, :120].copy().tobytes()
    ds.Rows, ds.Columns = 100, 120
    ds.save_as(path / "IM0002.dcm")
    return path, "slices of different sizes"


def nifti_with_nans(tmp_path, lung1_dicom):
    path = tmp_path / "nan.nii.gz"
    data = np.full((3, 4, 5), -1000.0, dtype=np.float32)
    data[0, 1, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path, "NaN"


def segmentation(tmp_path, lung1_dicom):
    return sample_path("pydicom/liver_1frame.dcm"), "not an image DICOM"


def missing_file(tmp_path, lung1_dicom):
    return tmp_path / "nowhere.nrrd", "no such file"


def empty_file(tmp_path, lung1_dicom):
    path = tmp_path / "zero.nrrd"
    path.write_bytes(b"")
    return path, "empty"


def corrupt_nrrd(tmp_path, lung1_dicom):
    path = tmp_path / "broken.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n" + b"\0" * 20)
    return path, "cannot read as nrrd"


CASES = [text_file, text_named_dcm, empty_folder, folder_without_dicom, two_series, truncated_dicom,
         truncated_header, different_sizes, nifti_with_nans, segmentation, missing_file, empty_file, corrupt_nrrd]


@pytest.mark.parametrize("make", CASES, ids=[case.__name__ for case in CASES])
@pytest.mark.parametrize("command", ["info", "convert"])
def test_bad_input_gives_one_line_and_exit_code_2(make, command, tmp_path, lung1_dicom, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source, problem = make(inputs, lung1_dicom)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["info", source] if command == "info" else ["convert", source, out_dir / "result.nrrd"]
    code, stdout, stderr = run(args, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert lines[0].startswith(f"error: {source}: "), lines[0]
    assert list(out_dir.iterdir()) == []


def test_two_series_can_be_picked_with_series(tmp_path, lung1_dicom, capsys):
    source, _ = two_series(tmp_path, lung1_dicom)
    uid = pydicom.dcmread(source / "b.dcm").SeriesInstanceUID
    code, out, _ = run(["info", source, "--series", uid, "--json"], capsys)
    assert code == 0 and '"shape": [\n  1,\n  128,\n  128\n ]' in out


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    from medfake.errors import MedfakeError

    with pytest.raises(MedfakeError):
        main(["--debug", "info", str(path)])


@pytest.mark.parametrize("args, problem", [
    (["-c", "48,0,0"], "outside the scan of shape (48, 512, 512)"),
    (["-c", "10,600,0"], "outside the scan"),
    (["-w", "0,0,0"], "outside the scan"),
    (["-c", "1,2"], "three comma-separated numbers"),
    (["--window", "soft"], "window must be"),
])
def test_view_with_a_bad_point_or_window_writes_nothing(args, problem, tmp_path, capsys):
    png = tmp_path / "view.png"
    code, _, stderr = run(["view", sample_path("lung1"), *args, "-o", png], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and problem in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_format_is_refused(tmp_path, capsys):
    code, _, stderr = run(["convert", sample_path("pydicom/CT_small.dcm"), tmp_path / "x", "--format", "png"], capsys)
    assert code == 2 and "unknown output format 'png'" in stderr
    assert list(tmp_path.iterdir()) == []
