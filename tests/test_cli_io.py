"""`medfake info`, `convert`, `view` through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib import image as mpimg

from medfake.data.samples import sample_path
from medfake.io import load_scan


from clihelp import run_cli as run


def test_info_json_on_lung1_matches_simpleitk(capsys):
    path = sample_path("lung1")
    code, out, err = run(["info", path, "--json"], capsys)
    assert code == 0 and err == ""
    info = json.loads(out)
    image = sitk.ReadImage(str(path))
    assert info["shape"] == list(image.GetSize()[::-1]) == [48, 512, 512]
    assert info["spacing"] == list(image.GetSpacing()[::-1])
    assert info["origin"] == list(image.GetOrigin())
    assert np.allclose(np.ravel(info["direction"]), image.GetDirection())
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    assert (info["hu_min"], info["hu_max"]) == (stats.GetMinimum(), stats.GetMaximum())
    assert info["format"] == "nrrd" and info["modality"] == "CT" and info["slice_count"] == 48
    assert info["gaps"] == [] and info["series_uid"] is None


def test_info_table_on_a_dicom_series(lung1_dicom, capsys):
    code, out, _ = run(["info", lung1_dicom], capsys)
    uid = pydicom.dcmread(lung1_dicom / "IM0001.dcm").SeriesInstanceUID
    assert code == 0
    assert "8, 512, 512" in out and "5, 0.5703125, 0.5703125" in out and uid in out and "dicom" in out


def test_info_reports_a_missing_slice(lung1_dicom, tmp_path, capsys):
    import shutil

    folder = tmp_path / "gap"
    shutil.copytree(lung1_dicom, folder)
    (folder / "IM0005.dcm").unlink()
    code, out, _ = run(["info", folder, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["shape"] == [8, 512, 512] and info["source_images"] == 7
    assert len(info["gaps"]) == 1 and "1 missing slice" in info["gaps"][0]


def test_convert_dicom_to_nrrd_and_back(lung1_slab, lung1_dicom, tmp_path, capsys):
    nrrd = tmp_path / "lung1.nrrd"
    code, out, _ = run(["convert", lung1_dicom, nrrd], capsys)
    assert code == 0 and nrrd.exists() and "wrote" in out
    assert np.array_equal(load_scan(nrrd).voxels, lung1_slab.voxels)
    code, _, err = run(["convert", lung1_dicom, nrrd], capsys)
    assert code == 2 and "use --overwrite" in err
    code, _, _ = run(["convert", nrrd, tmp_path / "series", "--format", "dicom"], capsys)
    assert code == 0 and len(list((tmp_path / "series").iterdir())) == 8
    back = load_scan(tmp_path / "series")
    assert np.array_equal(back.voxels, lung1_slab.voxels)
    assert pydicom.dcmread(tmp_path / "series" / "IM0001.dcm").DerivationDescription == "medfake: converted"


def test_view_world_point_writes_a_png_with_the_marker(lung1, tmp_path, capsys):
    png = tmp_path / "nodule.png"
    code, _, err = run(["view", sample_path("lung1"), "-w", "-21.8586,-120.5358,-611.4964",
                        "--window", "lung", "-o", png], capsys)
    assert code == 0, err
    rgb = (mpimg.imread(png)[..., :3] * 255).round().astype(np.uint8)
    zyx = lung1.world_to_voxel((-21.8586, -120.5358, -611.4964))
    row, col = zyx[1], zyx[2]
    assert tuple(rgb[row - 8, col]) == (255, 40, 40) and tuple(rgb[row, col + 8]) == (255, 40, 40)


def test_view_defaults_to_the_centre(tmp_path, capsys):
    png = tmp_path / "centre.png"
    code, _, _ = run(["view", sample_path("pydicom/CT_small.dcm"), "--window", "400,40", "-o", png], capsys)
    rgb = (mpimg.imread(png)[..., :3] * 255).round().astype(np.uint8)
    assert code == 0 and rgb.shape == (128 + 22, 128, 3)  # one slice: the axial panel only, plus caption
    assert tuple(rgb[64 - 6, 64]) == (255, 40, 40) and tuple(rgb[64, 64 + 6]) == (255, 40, 40)  # centre (0, 64, 64)
