"""Lung mask on the real lung1 CT (48 x 5 mm slices, 0.57 mm pixels) and via the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from clihelp import run_cli
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.lungmask import lung_labels, lung_mask, lung_parenchyma, split_lungs


@pytest.fixture(scope="module")
def lung1_labels(lung1):
    return lung_labels(lung1)


@pytest.fixture(scope="module")
def lung1_mask(lung1_labels):
    return lung1_labels > 0


def millilitres(mask, scan) -> float:
    return float(mask.sum() * np.prod(scan.spacing) / 1000.0)


def test_volume_is_that_of_two_adult_lungs_in_the_slab(lung1, lung1_mask):
    # The slab reaches from the lung bases (slice 0 still holds lung) to above the apices. Adult lungs hold
    # about 4-6 L at full inspiration and the lowest recesses are cut off, so 2-4.5 L; outside air or the
    # body would add > 10 L, losing a lung would fall below 2 L.
    volume = millilitres(lung1_mask, lung1)
    assert 2000 < volume < 4500, volume


def test_two_lungs_one_each_side_of_the_midline(lung1, lung1_mask):
    right, left = split_lungs(lung1_mask, lung1)
    _, count = ndimage.label(lung1_mask)
    assert count == 2
    midline_x = float(np.mean([lung1.voxel_to_world([0, 0, 0])[0], lung1.voxel_to_world([0, 0, 511])[0]]))
    right_x = lung1.voxel_to_world(np.array(ndimage.center_of_mass(right)))[0]
    left_x = lung1.voxel_to_world(np.array(ndimage.center_of_mass(left)))[0]
    assert right_x < midline_x - 50 and left_x > midline_x + 50  # LPS: patient right is -x
    assert millilitres(right, lung1) > 900 and millilitres(left, lung1) > 900
    columns = np.arange(lung1.shape[2])
    assert (right.sum(axis=(0, 1)) * (columns < 256)).sum() > 0.95 * right.sum()  # the right lung crosses the
    assert (left.sum(axis=(0, 1)) * (columns > 256)).sum() > 0.95 * left.sum()  # midline only at the front


def test_labels_name_the_right_and_left_lung(lung1, lung1_labels, lung1_mask):
    labels = lung1_labels
    assert set(np.unique(labels)) == {0, 1, 2}
    right, left = split_lungs(lung1_mask, lung1)
    assert np.array_equal(labels == 1, right) and np.array_equal(labels == 2, left)


def test_extent_in_z_from_bases_to_apices(lung1_mask):
    per_slice = lung1_mask.sum(axis=(1, 2))
    assert (per_slice[:41] > 0).all()  # every slice from the bases to the apices holds lung
    assert (per_slice[44:] == 0).all()  # neck: trachea and air around it, no lung
    assert per_slice[20] > 20 * per_slice[41]  # apex much smaller than the mid-chest


def test_labelled_nodule_is_inside_the_mask(lung1_mask, lung1_label):
    nodule = lung1_label.voxels > 0
    assert nodule.sum() == 837
    assert lung1_mask[nodule].all()


def test_trachea_is_excluded(lung1, lung1_mask):
    pixel_mm2 = lung1.spacing[1] * lung1.spacing[2]
    found = 0
    for z in (36, 38, 40, 42):
        labels, _ = ndimage.label(lung1.voxels[z] < -900)
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            area = (labels[box] == k).sum() * pixel_mm2
            cy, cx = (box[0].start + box[0].stop) / 2, (box[1].start + box[1].stop) / 2
            if 60 < area < 400 and abs(cx - 256) < 30 and 250 < cy < 340:  # round dark tube at the centre
                found += 1
                assert not lung1_mask[z][labels == k].any()
    assert found == 4  # the trachea is visible on each of these slices


def test_parenchyma_is_dark_lung_without_vessels(lung1, lung1_mask):
    parenchyma = lung_parenchyma(lung1, lung1_mask)
    assert not (parenchyma & ~lung1_mask).any()
    values = lung1.voxels[parenchyma]
    assert values.max() < -500
    assert -900 < np.median(values) < -800
    assert 0.6 < parenchyma.sum() / lung1_mask.sum() < 0.97


def test_cli_writes_mask_with_the_scans_geometry(lung1_slab, lung1_label, tmp_path):
    source = save_scan(lung1_slab, tmp_path / "slab.nrrd")
    assert main_exit(["lungmask", str(source), "-o", str(tmp_path / "mask.nii.gz")]) == 0
    written = load_scan(tmp_path / "mask.nii.gz")
    assert written.voxels.dtype == np.uint8 and set(np.unique(written.voxels)) == {0, 1}
    assert written.shape == lung1_slab.shape
    np.testing.assert_allclose(written.origin, lung1_slab.origin, atol=1e-4)
    np.testing.assert_allclose(written.spacing, lung1_slab.spacing, atol=1e-5)
    assert np.array_equal(written.voxels.astype(bool), lung_mask(lung1_slab))
    nodule = lung1_label.voxels[29:37] > 0
    assert written.voxels[nodule].all()
    assert main_exit(["lungmask", str(source), "-o", str(tmp_path / "mask.nii.gz")]) == 2  # exists already


def test_no_lung_is_a_one_line_error(tmp_path, capsys):
    z, y, x = np.mgrid[:8, :96, :96]
    body = (y - 48) ** 2 + (x - 48) ** 2 < 40 ** 2
    from medfake.scan import Scan

    phantom = Scan(np.where(body, 40, -1000).astype(np.int16), (2.0, 0.8, 0.8))
    with pytest.raises(MedfakeError, match="no lung"):
        lung_mask(phantom)
    path = save_scan(phantom, tmp_path / "water.nrrd")
    assert main_exit(["lungmask", str(path), "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no lung" in err[0]
    assert not (tmp_path / "m.nii.gz").exists()


def main_exit(argv) -> int:
    return run_cli(argv)[0]
