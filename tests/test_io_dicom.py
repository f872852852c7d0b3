"""DICOM reading and writing on real data: lung1 as a series, pydicom's CT/MR files, compressed and
enhanced multi-frame objects, derived-series headers, stored-range clipping, gaps."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, CTImageStorage

from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.scan import Scan

REQUIRED_CT_TAGS = (  # type 1 and 2 attributes of the CT Image IOD modules we write
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "ImageType", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelSpacing", "ImageOrientationPatient",
    "ImagePositionPatient", "PixelData", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "InstanceNumber",
    "Manufacturer", "PositionReferenceIndicator", "SliceThickness", "KVP", "AcquisitionNumber",
)


@pytest.fixture
def strict_dicom():
    """Make pydicom raise on any value that does not fit its VR, while writing and reading."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = settings.reading_validation_mode = pydicom.config.RAISE
    yield
    settings.writing_validation_mode, settings.reading_validation_mode = saved


def read_series(folder):
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def assert_same_geometry(a: Scan, b: Scan, atol=1e-4):
    assert a.shape == b.shape
    assert np.allclose(a.spacing, b.spacing, atol=atol)
    assert np.allclose(a.origin, b.origin, atol=atol)
    assert np.allclose(a.direction, b.direction, atol=1e-6)


def check_derived_headers(datasets, derivation):
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sops)) == len(sops)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    for ds in datasets:
        for keyword in REQUIRED_CT_TAGS:
            assert keyword in ds, keyword
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid, uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.DerivationDescription == derivation
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))


# --- lung1 as a standalone series -------------------------------------------------------------------
def test_standalone_series_from_lung1_is_exact_and_valid(lung1_slab, lung1_dicom):
    scan = load_scan(lung1_dicom)
    assert scan.voxels.dtype == np.int16 and scan.modality == "CT"
    assert np.array_equal(scan.voxels, lung1_slab.voxels)
    assert_same_geometry(scan, lung1_slab, atol=1e-9)
    assert scan.meta["gaps"] == [] and scan.meta["warnings"] == []
    datasets = read_series(lung1_dicom)
    check_derived_headers(datasets, "medfake: converted")
    first = datasets[0]
    assert first.SOPClassUID == CTImageStorage and int(first.RescaleIntercept) == -1024
    assert first.PixelRepresentation == 1 and first.BitsStored == 16
    assert float(first.SliceThickness) == 5.0
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(positions), 5.0)
    assert np.allclose([float(ds.SliceLocation) for ds in datasets], positions)


def test_standalone_ct_values_fit_their_value_representations(lung1_slab, tmp_path, strict_dicom):
    small = lung1_slab.with_voxels(np.ascontiguousarray(lung1_slab.voxels[:2, :16, :16]))
    out = save_scan(small, tmp_path / "strict", format="dicom", derivation="medfake: " + "x" * 2000)
    datasets = read_series(out)
    assert len(datasets) == 2 and len(datasets[0].DerivationDescription) == 1024


def test_simpleitk_reads_our_series_identically(lung1_slab, lung1_dicom):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(lung1_dicom)))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image), lung1_slab.voxels)
    assert np.allclose(image.GetSpacing(), lung1_slab.spacing[::-1])
    assert np.allclose(image.GetOrigin(), lung1_slab.origin, atol=1e-6)


def test_dicom_to_mhd_to_dicom_keeps_every_voxel_and_the_geometry(lung1_dicom, tmp_path):
    source = load_scan(lung1_dicom)
    mhd = save_scan(source, tmp_path / "lung1.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lung1.mhd", "lung1.raw"]
    assert "ElementDataFile = lung1.raw" in mhd.read_text()
    back = load_scan(save_scan(load_scan(mhd), tmp_path / "again", format="dicom"))
    assert np.array_equal(back.voxels, source.voxels)
    assert_same_geometry(back, source)


def test_nrrd_to_dicom_to_nrrd_keeps_an_oblique_geometry(lung1_slab, tmp_path):
    rotation = np.array([[0.8, -0.6, 0.0], [0.36, 0.48, -0.8], [0.48, 0.64, 0.6]])  # exact, oblique
    oblique = lung1_slab.with_voxels(np.ascontiguousarray(lung1_slab.voxels[:, 100:300, 150:350]),
                                     direction=rotation, origin=(-12.3456789, 101.25, -598.7654321))
    nrrd = load_scan(save_scan(oblique, tmp_path / "oblique.nrrd"))
    dicom = load_scan(save_scan(nrrd, tmp_path / "dicom", format="dicom"))
    again = load_scan(save_scan(dicom, tmp_path / "again.nrrd"))
    for scan in (nrrd, dicom, again):
        assert np.array_equal(scan.voxels, oblique.voxels)
        assert_same_geometry(scan, oblique)
    first = read_series(tmp_path / "dicom")[0]
    assert np.allclose(np.asarray(first.ImageOrientationPatient, float), [0.8, 0.36, 0.48, -0.6, 0.48, 0.64])


def test_derived_series_keeps_patient_and_study_but_is_a_new_series(tmp_path, strict_dicom):
    source_file = sample_path("pydicom/CT_small.dcm")
    source = load_scan(source_file)
    tampered = source.with_voxels(source.voxels.copy())
    tampered.voxels[0, 60:70, 60:70] = 40
    out = save_scan(tampered, tmp_path / "derived", format="dicom", derivation="medfake test: 10x10 patch set to 40 HU")
    (written,) = read_series(out)
    original = pydicom.dcmread(source_file)
    check_derived_headers([written], "medfake test: 10x10 patch set to 40 HU")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                    "FrameOfReferenceUID", "Manufacturer", "KVP"):
        assert written[keyword].value == original[keyword].value, keyword
    assert written.SeriesInstanceUID != original.SeriesInstanceUID
    assert written.SOPInstanceUID != original.SOPInstanceUID
    assert written.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    # stored through the source's slope/intercept and bit depth
    assert (written.RescaleIntercept, written.BitsStored) == (original.RescaleIntercept, original.BitsStored)
    stored = written.pixel_array.astype(int)
    assert np.array_equal(stored + int(original.RescaleIntercept), tampered.voxels[0])
    assert np.array_equal(load_scan(out).voxels, tampered.voxels)


def test_values_are_rounded_and_clipped_to_the_source_stored_range(lung1_dicom, tmp_path):
    folder = tmp_path / "twelve_bit"
    shutil.copytree(lung1_dicom, folder)
    for path in sorted(folder.iterdir()):  # re-encode as unsigned 12-bit (lung1 spans -1024..3071)
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.PixelData = stored.astype("<u2").tobytes()
        ds.save_as(path)
    source = load_scan(folder)
    values = source.voxels.astype(np.float32)
    values[0, 0, :4] = [5000.0, -3000.0, 100.6, -100.5]
    out = load_scan(save_scan(source.with_voxels(values), tmp_path / "out", format="dicom"))
    assert out.voxels[0, 0, :4].tolist() == [3071, -1024, 101, -100]  # clipped to 0..4095 stored, rounded
    assert np.array_equal(out.voxels[1:], source.voxels[1:])
    assert read_series(tmp_path / "out")[0].BitsStored == 12


# --- pydicom sample files ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"])
def test_compressed_and_other_syntaxes_decode_to_the_same_pixels(variant):
    reference = load_scan(sample_path("pydicom/MR_small.dcm"))
    scan = load_scan(sample_path(f"pydicom/{variant}"))
    assert scan.shape == (1, 64, 64) and scan.modality == "MR"
    assert np.array_equal(scan.voxels, reference.voxels)
    assert_same_geometry(scan, reference)


def test_single_ct_file_matches_simpleitk():
    path = sample_path("pydicom/CT_small.dcm")
    scan = load_scan(path)
    image = sitk.ReadImage(str(path))
    assert scan.shape == (1, 128, 128) and scan.voxels.dtype == np.int16
    assert np.array_equal(scan.voxels, sitk.GetArrayFromImage(image))
    assert scan.voxels.min() == -896 and scan.voxels.max() == 1167  # HU, intercept -1024 applied
    assert np.allclose(scan.spacing[1:], image.GetSpacing()[1::-1])
    assert scan.spacing[0] == 5.0  # SliceThickness of a lone slice
    assert np.allclose(scan.origin, image.GetOrigin())


def test_oblique_mr_loads_with_its_direction():
    path = sample_path("pydicom-data/MR2_UNCI.dcm")
    scan = load_scan(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.asarray(header.ImageOrientationPatient, dtype=float)
    assert scan.shape == (1, 1024, 1024) and scan.modality == "MR"
    assert np.allclose(scan.direction[:, 0], iop[:3] / np.linalg.norm(iop[:3]), atol=1e-6)
    assert np.allclose(scan.direction[:, 1], iop[3:] / np.linalg.norm(iop[3:]), atol=1e-6)
    assert np.allclose(scan.direction.T @ scan.direction, np.eye(3), atol=1e-12)
    image = sitk.ReadImage(str(path))
    assert np.allclose(scan.direction.ravel(), image.GetDirection(), atol=1e-5)
    assert np.allclose(scan.origin, image.GetOrigin(), atol=1e-4)
    assert np.allclose(scan.spacing[::-1], image.GetSpacing(), atol=1e-6)
    # rescale slope 3.77 is applied: float values, equal to SimpleITK's
    assert scan.voxels.dtype == np.float32
    assert np.allclose(scan.voxels, sitk.GetArrayFromImage(image), atol=2e-3)


def test_enhanced_mr_loads_all_frames_and_compressed_copies_match():
    scan = load_scan(sample_path("pydicom-data/emri_small.dcm"))
    assert scan.shape == (10, 64, 64) and scan.modality == "MR" and scan.meta["multiframe"]
    assert scan.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices; this copy has no plane geometry
    assert any("placeholder" in w for w in scan.meta["warnings"])
    for variant in ("emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        assert np.array_equal(load_scan(sample_path(f"pydicom-data/{variant}")).voxels, scan.voxels), variant


def test_enhanced_ct_takes_geometry_and_rescale_from_functional_groups(tmp_path, strict_dicom):
    path = sample_path("pydicom-data/eCT_Supplemental.dcm")
    scan = load_scan(path)
    ds = pydicom.dcmread(path)
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    assert scan.shape == (2, 512, 512) and scan.spacing == (10.0, 0.388672, 0.388672)
    assert np.allclose(scan.direction[:, 0], [-1, 0, 0]) and np.allclose(scan.direction[:, 1], [0, 1, 0])
    # sorted along the normal (0,0,-1): the frame at z=-149 comes first
    assert np.allclose(scan.voxel_to_world((0, 0, 0)), positions[1])
    assert np.allclose(scan.voxel_to_world((1, 0, 0)), positions[0])
    stored = ds.pixel_array.astype(int)
    assert np.array_equal(scan.voxels[0], stored[1] - 1024) and np.array_equal(scan.voxels[1], stored[0] - 1024)
    # written back as a classic CT series, same values and geometry, patient/study kept
    out = save_scan(scan, tmp_path / "classic", format="dicom")
    datasets = read_series(out)
    assert len(datasets) == 2 and all(d.SOPClassUID == CTImageStorage for d in datasets)
    assert all("PerFrameFunctionalGroupsSequence" not in d for d in datasets)
    assert datasets[0].StudyInstanceUID == ds.StudyInstanceUID
    back = load_scan(out)
    assert np.array_equal(back.voxels, scan.voxels)
    assert_same_geometry(back, scan)


# --- irregular series ----------------------------------------------------------------------------------
def test_missing_slice_is_filled_with_air_and_reported(lung1_slab, lung1_dicom, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(lung1_dicom, folder)
    (folder / "IM0004.dcm").unlink()
    scan = load_scan(folder)
    assert scan.shape == lung1_slab.shape
    assert np.all(scan.voxels[3] == -1000)
    kept = [0, 1, 2, 4, 5, 6, 7]
    assert np.array_equal(scan.voxels[kept], lung1_slab.voxels[kept])
    assert_same_geometry(scan, lung1_slab)
    assert len(scan.meta["gaps"]) == 1 and "1 missing slice" in scan.meta["gaps"][0]
    assert scan.meta["dicom_slots"] == [0, 1, 2, None, 3, 4, 5, 6]


def test_uneven_spacing_is_reported(lung1_dicom, tmp_path):
    folder = tmp_path / "uneven"
    shutil.copytree(lung1_dicom, folder)
    path = folder / "IM0005.dcm"
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.5
    ds.save_as(path)
    scan = load_scan(folder)
    assert scan.shape[0] == 8 and scan.spacing[0] == 5.0
    assert any("uneven slice spacing" in g and "1.500 mm" in g for g in scan.meta["gaps"])


def test_series_is_chosen_by_uid_when_a_folder_holds_two(lung1_dicom, tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(lung1_dicom, folder / "a")
    shutil.copy(sample_path("pydicom/CT_small.dcm"), folder / "ct_small.dcm")
    uids = [pydicom.dcmread(folder / "a" / "IM0001.dcm").SeriesInstanceUID,
            pydicom.dcmread(folder / "ct_small.dcm").SeriesInstanceUID]
    with pytest.raises(MedfakeError) as error:
        load_scan(folder)
    message = error.value.one_line()
    assert "2 DICOM series" in message and all(uid in message for uid in uids) and "8 files" in message
    assert "\n" not in message
    assert load_scan(folder, series=uids[0]).shape == (8, 512, 512)
    assert load_scan(folder, series=uids[1]).shape == (1, 128, 128)
    with pytest.raises(MedfakeError, match="not found"):
        load_scan(folder, series="1.2.3.4")


def test_slices_of_different_sizes_are_refused(lung1_dicom, tmp_path):
    folder = tmp_path / "sizes"
    shutil.copytree(lung1_dicom, folder)
    path = folder / "IM0003.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array[:256, :256].copy().tobytes()
    ds.Rows = ds.Columns = 256
    ds.save_as(path)
    with pytest.raises(MedfakeError, match=r"different sizes in one series \(512x512 in 7, 256x256 in 1\), e.g. IM0003.dcm"):
        load_scan(folder)


def test_two_volumes_at_the_same_positions_are_refused(lung1_dicom, tmp_path):
    folder = tmp_path / "echoes"
    shutil.copytree(lung1_dicom, folder)
    ds = pydicom.dcmread(folder / "IM0002.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "IM0002b.dcm")
    with pytest.raises(MedfakeError, match="share a position"):
        load_scan(folder)


def test_duplicate_copies_of_an_instance_are_ignored(lung1_dicom, tmp_path):
    folder = tmp_path / "dup"
    shutil.copytree(lung1_dicom, folder)
    shutil.copy(folder / "IM0002.dcm", folder / "copy_of_IM0002.dcm")
    scan = load_scan(folder)
    assert scan.shape[0] == 8 and any("duplicate" in w for w in scan.meta["warnings"])


def test_truncated_file_in_a_series_names_the_file(lung1_dicom, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(lung1_dicom, folder)
    path = folder / "IM0006.dcm"
    path.write_bytes(path.read_bytes()[:300_000])
    with pytest.raises(MedfakeError) as error:
        load_scan(folder)
    assert error.value.path == str(path) and "pixel data" in error.value.message


def test_non_image_dicom_gets_a_clear_error():
    with pytest.raises(MedfakeError, match=r"not an image DICOM \(SEG: Segmentation Storage\)"):
        load_scan(sample_path("pydicom/liver_1frame.dcm"))
    with pytest.raises(MedfakeError, match="not an image DICOM"):
        load_scan(sample_path("pydicom/rtplan.dcm"))


def test_writing_never_touches_the_input(lung1_dicom, tmp_path):
    folder = tmp_path / "input"
    shutil.copytree(lung1_dicom, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    scan = load_scan(folder)
    for target in (folder, folder / "inside", tmp_path):
        with pytest.raises(MedfakeError, match="refusing to write"):
            save_scan(scan, target, format="dicom", overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(MedfakeError, match="not empty"):
        save_scan(scan, occupied, format="dicom")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    save_scan(scan, occupied, format="dicom", overwrite=True)
    assert len(list(occupied.iterdir())) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_left_handed_mr_comes_back_right_handed_with_the_same_world_positions(tmp_path, strict_dicom):
    """brain1 (real MR) has direction diag(1,-1,1); DICOM has no slice axis of its own, so the series
    reloads as the equivalent right-handed volume: z reversed, every voxel at the same world position."""
    brain = load_scan(sample_path("brain1"))
    assert np.linalg.det(brain.direction) == pytest.approx(-1.0)
    out = save_scan(brain, tmp_path / "brain", format="dicom")
    back = load_scan(out)
    assert np.linalg.det(back.direction) == pytest.approx(1.0)
    assert back.modality == "MR" and back.voxels.dtype == np.int16
    assert np.array_equal(back.voxels, brain.voxels[::-1])
    last = brain.shape[0] - 1
    for z, y, x in [(0, 0, 0), (7, 100, 200), (last, 255, 3)]:
        assert np.allclose(back.voxel_to_world((last - z, y, x)), brain.voxel_to_world((z, y, x)), atol=1e-4)
    first = read_series(out)[0]
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "EchoTime",
                    "EchoTrainLength", "PixelSpacing", "ImagePositionPatient", "FrameOfReferenceUID"):
        assert keyword in first, keyword


def test_unstorable_scans_are_refused(lung1_slab, tmp_path):
    nan = lung1_slab.with_voxels(np.full((2, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(MedfakeError, match="NaN"):
        save_scan(nan, tmp_path / "nan", format="dicom")
    sheared = lung1_slab.with_voxels(np.zeros((2, 4, 4), np.int16), direction=[[1, 0.3, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(MedfakeError, match="not orthonormal"):
        save_scan(sheared, tmp_path / "sheared", format="dicom")
    assert list(tmp_path.iterdir()) == []


def test_series_of_files_without_preamble_or_suffix(lung1_slab, lung1_dicom, tmp_path):
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    folder = tmp_path / "old_export"
    folder.mkdir()
    for index, path in enumerate(sorted(lung1_dicom.iterdir())):
        with open(folder / f"IM{index:06d}", "wb") as fh:  # bare implicit-VR data set, as older exports write
            stream = DicomFileLike(fh)
            stream.is_little_endian, stream.is_implicit_VR = True, True
            write_dataset(stream, pydicom.dcmread(path))
    (folder / "notes.txt").write_text("exported by an old workstation")
    scan = load_scan(folder)
    assert np.array_equal(scan.voxels, lung1_slab.voxels)
    assert_same_geometry(scan, lung1_slab)
    assert load_scan(folder / "IM000003").shape == (1, 512, 512)
