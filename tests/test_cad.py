"""The classical nodule detector (LoG + Hessian in the lung mask) finds lung1's labelled nodule and stops
finding it once the nodule is painted over with lung tissue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medfake.cli import main
from medfake.io import save_scan
from medfake.cad import detect_nodules, nodule_near

LABELLED = np.array([33, 359, 218])


@pytest.fixture(scope="module")
def lungs(lung1_lungs):
    return lung1_lungs


def test_finds_lung1s_labelled_nodule(lung1, lungs):
    found = detect_nodules(lung1, lungs)
    hit = nodule_near(found, lung1, LABELLED, radius_mm=5.0)
    assert hit is not None
    assert 9.0 <= hit.diameter_mm <= 20.0  # labelled equivalent diameter 13.8 mm
    assert found.index(hit) < 3  # among the strongest candidates
    np.testing.assert_allclose(hit.center_xyz, lung1.voxel_to_world(hit.center_zyx))


def test_a_painted_over_nodule_is_not_found(lung1, lung1_label, lungs):
    nodule = ndimage.binary_dilation(lung1_label.voxels > 0, iterations=2)
    rng = np.random.default_rng(0)
    voxels = np.asarray(lung1.voxels).copy()
    voxels[nodule] = (-850 + 30 * rng.standard_normal(int(nodule.sum()))).astype(voxels.dtype)
    found = detect_nodules(lung1.with_voxels(voxels), lungs)
    assert nodule_near(found, lung1, LABELLED, radius_mm=10.0) is None


def test_cad_command_reports_the_location_as_json(lung1, tmp_path, capsys):
    crop = lung1.with_voxels(np.asarray(lung1.voxels[24:42]).copy(), origin=tuple(lung1.voxel_to_world([24, 0, 0])))
    path = save_scan(crop, tmp_path / "crop.mhd")
    main(["cad", str(path), "-c", "9,359,218", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["locations"][0]["found"] is True
    assert report["locations"][0]["nodule"]["diameter_mm"] > 9.0
