"""MHD/RAW, NRRD, NIfTI and NPZ: exact round trips, SimpleITK agreement, atomic and refusing writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io import detect_format, load_scan, save_scan

OBLIQUE = np.array([[0.0, -0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, 0.6]])


def test_lung1_matches_simpleitk(lung1):
    image = sitk.ReadImage(str(sample_path("lung1")))
    assert lung1.shape == (48, 512, 512) and lung1.voxels.dtype == np.int16
    assert lung1.spacing == image.GetSpacing()[::-1] and lung1.origin == image.GetOrigin()
    assert np.array_equal(lung1.direction.ravel(), image.GetDirection())
    assert lung1.modality == "CT" and lung1.meta["format"] == "nrrd"
    assert (lung1.voxels.min(), lung1.voxels.max()) == (-1024, 3071)


@pytest.mark.parametrize("name", ["s.mhd", "s.nrrd", "s.nii.gz", "s.nii", "s.npz"])
def test_round_trip_is_exact_with_an_oblique_direction(lung1_slab, tmp_path, name):
    scan = lung1_slab.with_voxels(np.ascontiguousarray(lung1_slab.voxels[:3, :64, :80]), direction=OBLIQUE,
                                  origin=(12.3456789, -98.7654321, -600.0))
    back = load_scan(save_scan(scan, tmp_path / name))
    assert np.array_equal(back.voxels, scan.voxels) and back.voxels.dtype == np.int16
    assert np.allclose(back.spacing, scan.spacing, atol=1e-6)
    assert np.allclose(back.origin, scan.origin, atol=1e-4)
    assert np.allclose(back.direction, OBLIQUE, atol=1e-6)
    assert back.modality == "CT"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name] + (["s.raw"] if name.endswith(".mhd") else []))


def test_bare_names_get_the_format_suffix_and_mismatches_are_refused(lung1_slab, tmp_path):
    small = lung1_slab.with_voxels(np.ascontiguousarray(lung1_slab.voxels[:2, :8, :8]))
    assert save_scan(small, tmp_path / "a", format="nifti").name == "a.nii.gz"
    assert save_scan(small, tmp_path / "b.nrrd").name == "b.nrrd"
    with pytest.raises(MedfakeError, match="file name says mhd"):
        save_scan(small, tmp_path / "c.mhd", format="nrrd")
    with pytest.raises(MedfakeError, match="cannot tell the output format"):
        save_scan(small, tmp_path / "d.txt")
    with pytest.raises(MedfakeError, match="unknown output format"):
        save_scan(small, tmp_path / "e", format="png")


def test_existing_destination_needs_overwrite(lung1_slab, tmp_path):
    small = lung1_slab.with_voxels(np.ascontiguousarray(lung1_slab.voxels[:2, :8, :8]))
    path = save_scan(small, tmp_path / "x.mhd")
    with pytest.raises(MedfakeError, match="exists"):
        save_scan(small.with_voxels(small.voxels + 1), path)
    assert np.array_equal(load_scan(path).voxels, small.voxels)
    save_scan(small.with_voxels(small.voxels + 1), path, overwrite=True)
    assert np.array_equal(load_scan(path).voxels, small.voxels + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mhd", "x.raw"]


def test_nifti_with_nans_is_refused(tmp_path):
    data = np.zeros((4, 5, 6), dtype=np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(MedfakeError, match="1 voxels are NaN or infinite"):
        load_scan(path)


def test_format_detection(tmp_path, lung1_dicom):
    assert detect_format(lung1_dicom) == "dicom"
    assert detect_format(lung1_dicom / "IM0001.dcm") == "dicom"
    no_suffix = tmp_path / "slice"
    no_suffix.write_bytes((lung1_dicom / "IM0001.dcm").read_bytes())
    assert detect_format(no_suffix) == "dicom"  # recognised by its DICM preamble
    assert load_scan(no_suffix).shape == (1, 512, 512)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(MedfakeError, match="unknown format"):
        load_scan(text)


def test_npz_that_is_not_ours_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(MedfakeError, match="missing voxels"):
        load_scan(path)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MedfakeError, match="not a readable NPZ"):
        load_scan(broken)
