"""Scan geometry: world <-> voxel on oblique directions, rounding, cuboids at the borders, lung1's nodule."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io.tables import read_luna16
from medfake.scan import Scan, cut_cube, nearest_index, paste_cube

ROTATIONS = Rotation.random(6, random_state=7).as_matrix()


def oblique_scan(direction: np.ndarray) -> Scan:
    voxels = np.zeros((7, 9, 11), dtype=np.int16)
    return Scan(voxels, (2.5, 0.7, 0.9), (-120.3, 45.25, -600.125), direction)


@pytest.mark.parametrize("direction", ROTATIONS)
def test_world_voxel_round_trip_on_oblique_directions(direction):
    scan = oblique_scan(direction)
    rng = np.random.default_rng(0)
    zyx = rng.uniform(-3, 12, size=(50, 3))
    world = scan.voxel_to_world(zyx)
    assert np.allclose(scan.world_to_continuous(world), zyx, atol=1e-9)
    # the world distance between neighbouring voxels along z is the z spacing, whatever the rotation
    step = scan.voxel_to_world((1, 0, 0)) - scan.voxel_to_world((0, 0, 0))
    assert np.linalg.norm(step) == pytest.approx(2.5)
    assert np.allclose(step / 2.5, direction[:, 2])


@pytest.mark.parametrize("direction", ROTATIONS[:3])
def test_world_to_voxel_agrees_with_simpleitk(direction):
    scan = oblique_scan(direction)
    image = sitk.Image(11, 9, 7, sitk.sitkInt16)
    image.SetSpacing((0.9, 0.7, 2.5))
    image.SetOrigin(scan.origin)
    image.SetDirection(tuple(direction.ravel()))
    for world in np.random.default_rng(1).uniform(-650, 100, size=(10, 3)):
        expected_xyz = image.TransformPhysicalPointToContinuousIndex(tuple(world))
        assert np.allclose(scan.world_to_continuous(world), expected_xyz[::-1], atol=1e-7)
        back = image.TransformContinuousIndexToPhysicalPoint(expected_xyz)
        assert np.allclose(scan.voxel_to_world(np.array(expected_xyz[::-1])), back, atol=1e-7)


def test_world_to_voxel_rounds_instead_of_truncating():
    scan = oblique_scan(ROTATIONS[0])
    continuous = np.array([[3.4, 5.6, 7.7], [-0.6, 0.49, 2.51], [1.51, 2.49, -0.49]])
    world = scan.voxel_to_world(continuous)
    assert scan.world_to_voxel(world).tolist() == [[3, 6, 8], [-1, 0, 3], [2, 2, 0]]
    assert nearest_index([0.5, 1.5, 2.5]).tolist() == [1, 2, 3]  # halves go up consistently, not to even


def test_contains_and_require_inside_use_the_nearest_voxel():
    scan = oblique_scan(np.eye(3))
    assert scan.contains((6.49, 8.4, -0.5))
    assert not scan.contains((6.5, 0, 0))
    with pytest.raises(MedfakeError, match=r"outside the scan of shape \(7, 9, 11\)"):
        scan.require_inside((0, -0.51, 0))
    assert scan.require_inside((6.2, 0.3, 10.4)).tolist() == [6, 0, 10]


def test_lung1_nodule_centre_from_annotations_lands_inside_its_label(lung1, lung1_label):
    (nodule,) = read_luna16(sample_path("radiomics-annotations"))
    assert nodule.system == "world" and nodule.diameter_mm == pytest.approx(13.75, abs=0.1)
    zyx = lung1.world_to_voxel(nodule.coords)
    assert lung1_label.voxels[tuple(zyx)] > 0
    assert np.abs(zyx - np.array([33, 359, 218])).max() <= 1
    assert lung1_label.world_to_voxel(nodule.coords).tolist() == zyx.tolist()
    # the label centroid, converted to world and back, is the same voxel
    centroid = np.argwhere(lung1_label.voxels > 0).mean(axis=0)
    assert np.allclose(lung1.world_to_continuous(lung1.voxel_to_world(centroid)), centroid)


def test_cut_cube_pads_outside_the_volume_and_paste_restores_it(lung1):
    corner = lung1.cut_cube((1, 2, 510), (8, 16, 16))
    assert corner.shape == (8, 16, 16) and corner.dtype == np.int16
    # start = centre - size//2: z -3..4, y -6..9, x 502..517
    assert np.all(corner[:3] == -1000) and np.all(corner[:, :6] == -1000) and np.all(corner[:, :, 10:] == -1000)
    assert np.array_equal(corner[3:, 6:, :10], lung1.voxels[0:5, 0:10, 502:512])
    restored = paste_cube(lung1.voxels, corner, (1, 2, 510))
    assert np.array_equal(restored, lung1.voxels)
    far = cut_cube(lung1.voxels, (-50, 0, 0), (4, 4, 4), pad=-7)
    assert np.all(far == -7)


def test_paste_cube_blends_with_weight_and_clips_integers():
    volume = np.zeros((5, 5, 5), dtype=np.int16)
    cube = np.full((3, 3, 3), 40000.0)
    weight = np.zeros((3, 3, 3))
    weight[1, 1, 1] = 1.0
    weight[0, 0, 0] = 0.25
    out = paste_cube(volume, cube, (2, 2, 2), weight)
    assert out[2, 2, 2] == 32767  # clipped to int16, not wrapped
    assert out[1, 1, 1] == 10000
    assert np.count_nonzero(out) == 2 and np.count_nonzero(volume) == 0


def test_scan_rejects_broken_geometry():
    voxels = np.zeros((2, 2, 2))
    with pytest.raises(MedfakeError, match="spacing must be positive"):
        Scan(voxels, (1, 0, 1))
    with pytest.raises(MedfakeError, match="singular"):
        Scan(voxels, (1, 1, 1), direction=np.zeros((3, 3)))
    with pytest.raises(MedfakeError, match="3-D"):
        Scan(np.zeros((2, 2)), (1, 1, 1))


def test_with_voxels_copies_metadata_and_accepts_new_metadata(lung1):
    changed = lung1.with_voxels(np.zeros((2, 3, 4), np.int16))
    changed.meta["extra"] = 1
    assert "extra" not in lung1.meta and changed.spacing == lung1.spacing
    replaced = lung1.with_voxels(np.zeros((2, 3, 4), np.int16), meta={"format": "npz"})
    assert replaced.meta == {"format": "npz"}


def test_crop_carries_its_geometry_on_lung1():
    """A crop's voxels sit at the same world positions as in the scan, also past the border (SimpleITK agrees)."""
    import SimpleITK as sitk

    from medfake.data.samples import sample_path
    from medfake.io import load_scan

    scan = load_scan(sample_path("lung1"))
    image = sitk.ReadImage(str(sample_path("lung1")))
    crop = scan.crop((33, 359, 218), (16, 40, 40))
    assert crop.shape == (16, 40, 40) and crop.path == scan.path
    for zyx in [(0, 0, 0), (7, 13, 29), (15, 39, 39)]:
        inside = np.asarray(zyx) + scan.offset_of(crop)
        assert np.allclose(crop.voxel_to_world(zyx), image.TransformIndexToPhysicalPoint(tuple(int(v) for v in inside[::-1])))
        assert crop.voxels[zyx] == scan.voxels[tuple(inside)]
    edge = scan.crop((0, 0, 0), (4, 6, 6))  # half outside: padded with air, origin before the scan's
    assert np.all(edge.voxels[:2] == -1000) and np.array_equal(edge.voxels[2:, 3:, 3:], scan.voxels[:2, :3, :3])
    assert np.allclose(edge.voxel_to_world((2, 3, 3)), scan.origin)


def test_paste_puts_a_crop_back_where_it_lies():
    scan = Scan(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), (2.0, 0.7, 0.7), origin=(-3.0, 5.0, 11.0))
    crop = scan.crop((3, 3, 4), (3, 3, 3))
    changed = scan.paste(crop.with_voxels(np.zeros((3, 3, 3), np.int16)))
    assert np.count_nonzero(changed.voxels != scan.voxels) == 27 and np.all(changed.voxels[2:5, 2:5, 3:6] == 0)
    half = scan.paste(crop.with_voxels(np.zeros((3, 3, 3), np.int16)), weight=np.full((3, 3, 3), 0.5))
    assert np.array_equal(half.voxels[2:5, 2:5, 3:6], np.rint(scan.voxels[2:5, 2:5, 3:6] * 0.5).astype(np.int16))
    outside = scan.crop((0, 0, 0), (3, 3, 3))  # partly outside: only the shared part is written
    assert np.count_nonzero(scan.paste(outside.with_voxels(np.full((3, 3, 3), -5, np.int16))).voxels == -5) == 8


def test_label_grid_is_checked_on_full_geometry():
    scan = Scan(np.zeros((4, 5, 6)), (1.0, 1.0, 1.0))
    assert scan.same_grid(scan.with_voxels(np.ones((4, 5, 6), np.uint8)))
    with pytest.raises(MedfakeError, match="origin"):
        scan.require_same_grid(scan.with_voxels(np.ones((4, 5, 6)), origin=(0.0, 0.0, 3.0)))
    with pytest.raises(MedfakeError, match="spacing"):
        scan.require_same_grid(scan.with_voxels(np.ones((4, 5, 6)), spacing=(1.0, 1.0, 1.1)))
