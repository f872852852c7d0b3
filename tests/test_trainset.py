"""Training sets: isotropic cubes at exact size, augmentation that is exactly a flip/rotation of the grid,
float16 memory-mapped store + index, invertible equalizer, healthy sites away from the nodule."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.data.samples import sample_path
from medfake.tamper.config import AugmentConfig, TrainsetConfig
from medfake.tamper.trainset import TrainingSet, build_trainset
from medfake.errors import MedfakeError

NODULE_ZYX = np.array([33, 359, 218])


@pytest.fixture(scope="module")
def inject_set(tmp_path_factory):
    annotations = sample_path("lung1").parent / "annotations.csv"
    return build_trainset("inject", [sample_path("lung1")], tmp_path_factory.mktemp("ts") / "inj",
                          coords=annotations)


def test_one_region_per_location_gives_the_reference_67_views(inject_set, lung1):
    data = TrainingSet(inject_set)
    assert AugmentConfig().views().__len__() == 67
    assert len(data.locations) == 1 and len(data) == 67
    location = data.locations[0]
    assert location["voxel_zyx"] == [33, 359, 218]  # LUNA16 world centre -> lung1's nodule voxel
    # the region is lung1's own int16 voxels around the nodule, with room for every rotation and shift
    region = data.region(0)
    assert region.dtype == np.int16 and isinstance(data.store, np.memmap)
    assert (inject_set / "regions.bin").stat().st_size == region.nbytes < 67 * 32 ** 3 * 2 / 4
    assert region[tuple(np.array(region.shape) // 2)] == lung1.voxels[33, 359, 218]  # centred on the voxel
    assert (inject_set / "samples.png").stat().st_size > 1000 and (inject_set / "run.json").exists()
    cubes = data.cubes(np.arange(4))
    assert cubes.shape == (4, 32, 32, 32) and cubes.dtype == np.float32
    assert cubes[0][12:20, 12:20, 12:20].mean() > -300  # the nodule (~ -60 HU) fills the middle, not lung air
    # flips are exact re-samplings of the same grid: y-flip == the cube mirrored along y
    assert data.views[1] == (0.0, True, False, (0, 0))
    np.testing.assert_allclose(cubes[1], cubes[0][:, ::-1, :], atol=0.5)
    np.testing.assert_allclose(cubes[3], cubes[0][:, ::-1, ::-1], atol=0.5)


def test_drawn_views_are_the_cubes_sampled_straight_from_the_scan(inject_set, lung1):
    """Each view drawn from the stored region is the very cube one resampling of the whole scan gives."""
    from medfake.tamper.cube import IsoGrid, ViewSource, view_region

    data = TrainingSet(inject_set)
    grid = IsoGrid((33, 359, 218), 32, 1.0)
    whole = ViewSource.of(view_region(lung1, grid, data.views), lung1.spacing)
    for index in (0, 5, 9, 40):  # plain, a shift, a rotation by 6°, one by 186°
        expected = whole.sample(grid, data.views[index]).astype(np.float16).astype(np.float32)
        assert np.array_equal(data.cubes([index])[0], expected)


def test_equalizer_is_invertible_and_spans_minus_one_to_one(inject_set):
    eq = TrainingSet(inject_set).equalizer
    lo, hi = float(eq.edges[0]), float(eq.edges[-1])
    hu = np.linspace(lo, hi, 5001).astype(np.float32)
    net = eq.to_net(hu)
    assert net.min() == pytest.approx(-1.0, abs=1e-6) and net.max() == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(net) > 0)  # strictly increasing: no two HU values collapse
    np.testing.assert_allclose(eq.to_hu(net), hu, atol=0.05)
    assert eq.to_net(np.float32(hi + 500)) == pytest.approx(1.0)  # clipped outside the fitted range


def test_remover_set_samples_healthy_lung_away_from_the_nodule(tmp_path):
    config = TrainsetConfig("remove", augment=AugmentConfig(flips=False, shift=0, rotation_step_deg=0))
    folder = build_trainset("remove", [sample_path("lung1")], tmp_path / "rem", auto_healthy=3, seed=1,
                            coords=sample_path("lung1").parent / "annotations.csv", config=config)
    data = TrainingSet(folder)
    sites = np.array([e["voxel_zyx"] for e in data.locations])
    assert len(sites) == 3 and all(e["source"] == "auto" for e in data.locations)  # the LUNA16 nodule is avoided
    distance = np.linalg.norm((sites - NODULE_ZYX) * np.array([5.0, 0.5703, 0.5703]), axis=1)
    assert distance.min() >= 30.0
    centres = data.cubes(np.arange(len(data)))[:, 14:18, 14:18, 14:18].mean(axis=(1, 2, 3))
    assert np.all(centres < -600)  # lung parenchyma, not vessel or wall


def test_injector_without_locations_is_an_error(tmp_path):
    with pytest.raises(MedfakeError, match="--coords"):
        build_trainset("inject", [sample_path("lung1")], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_trainset_command_builds_a_set_and_bad_tables_are_one_line_errors(tmp_path, capsys):
    from medfake.cli import main

    table = tmp_path / "nodules.csv"
    table.write_text("filename,x,y,z\nlung1,218,359,33\n")  # CT-GAN voxel table: x=column, y=row, z=slice
    main(["trainset", "inject", "--scans", str(sample_path("lung1")), "--coords", str(table), "--system", "vox",
          "--rotation-step", "0", "--cube", "16", "-o", str(tmp_path / "set")])
    data = TrainingSet(tmp_path / "set")
    assert len(data) == 8 and data.locations[0]["voxel_zyx"] == [33, 359, 218]  # 1 + 3 flips + 4 shifts
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,x,y,z\nlung1,218,abc,33\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["trainset", "inject", "--scans", str(sample_path("lung1")), "--coords", str(bad), "-o", str(tmp_path / "s2")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "column y is not a" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s2").exists()
