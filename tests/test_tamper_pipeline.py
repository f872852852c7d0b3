"""Tampering end to end with a small remover trained here on lung1's healthy lung: the nodule goes away,
world and voxel coordinates hit the same voxel, DICOM in -> derived DICOM out + manifest, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch

from medfake.cli import main
from medfake.data.samples import sample_path
from medfake.tamper.trainset import build_trainset
from medfake.io import load_scan, save_scan
from medfake.io.tables import read_manifest
from medfake.tamper.config import AugmentConfig, GanTrainConfig, TrainsetConfig
from medfake.tamper.model import load_tamper_model
from medfake.errors import MedfakeError
from medfake.tamper.pipeline import Site, tamper_scan
from medfake.tamper.run import resolve_sites
from medfake.tamper.train import train

NODULE_ZYX = (33, 359, 218)
NODULE_XYZ = "-21.8586,-120.5358,-611.4964"  # lung1's LUNA16 annotation (world mm)


@pytest.fixture(scope="module")
def remover(tmp_path_factory):
    """cpu-small-shaped remover (thinner filters), 40 steps on 4 healthy lung1 locations x 11 views."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("remover")
    config = TrainsetConfig("remove", augment=AugmentConfig(rotation_step_deg=90))
    data = build_trainset("remove", [sample_path("lung1")], root / "set", auto_healthy=4, seed=3,
                          coords=sample_path("lung1").parent / "annotations.csv", config=config)
    train_config = GanTrainConfig.resolve("remove", "cpu-small", g_filters=(4, 8, 16, 32, 32), d_filters=(4, 8, 16, 32),
                                       batch_size=4, steps=40, g_lr=2e-3, d_lr=2e-4,
                                       snapshot_every=40, checkpoint_every=40)
    run = train(data, root / "run", train_config, show_progress=False)
    torch.set_num_threads(before)
    return run


@pytest.fixture(scope="module")
def lungs(lung1):
    from medfake.lungmask import lung_mask

    return lung_mask(lung1)


@pytest.fixture(scope="module")
def dicom_crop(tmp_path_factory, lung1):
    """lung1's slices 24-41 written as a DICOM series (the nodule is at slice 33 -> 9)."""
    crop = lung1.with_voxels(np.asarray(lung1.voxels[24:42]).copy(),
                             origin=tuple(lung1.voxel_to_world([24, 0, 0])))
    return save_scan(crop, tmp_path_factory.mktemp("dcm") / "lung1_crop", format="dicom")


def test_removing_lung1s_nodule_lowers_its_mean_hu(remover, lung1, lung1_label, lungs):
    model = load_tamper_model(remover, "remove")
    nodule = lung1_label.voxels > 0
    before = float(lung1.voxels[nodule].mean())
    out, rows = tamper_scan(lung1, [NODULE_ZYX], "remove", model, rng=np.random.default_rng(0), lung=lungs)
    after = float(out.voxels[nodule].mean())
    assert before > -150  # solid nodule
    assert after < before - 300 and after < -450  # now lung-like (parenchyma is ~ -850 HU)
    far = np.ones(lung1.shape, bool)
    far[18:49, 300:420, 160:280] = False
    assert np.array_equal(out.voxels[far], lung1.voxels[far])  # nothing changes far from the location
    assert out.voxels.dtype == lung1.voxels.dtype
    assert float(lung1.voxels[nodule].mean()) == before  # the input scan is not modified in place
    assert rows[0].action == "remove" and (rows[0].voxel_z, rows[0].voxel_y, rows[0].voxel_x) == NODULE_ZYX


def test_world_and_voxel_coordinates_hit_the_same_voxel(remover, lung1, lungs):
    model = load_tamper_model(remover)
    path = sample_path("lung1")
    results = []
    for text, system in (("33,359,218", "vox"), (NODULE_XYZ, "world"), ("33.3,358.6,217.8", "vox")):
        sites = resolve_sites(lung1, path, "remove", [text], system)
        results.append(tamper_scan(lung1, sites, "remove", model, rng=np.random.default_rng(5), lung=lungs))
    for out, rows in results:
        assert (rows[0].voxel_z, rows[0].voxel_y, rows[0].voxel_x) == NODULE_ZYX
        assert np.array_equal(out.voxels, results[0][0].voxels)  # the very same edit


def test_generator_views_are_flipped_back_and_the_strongest_is_kept(remover, lung1):
    """View k sees the cube through flip k: feeding the x-flipped cube, view 1 (x flip) must give back the
    x-flipped plain generation. Removal keeps the view with the least tissue in the hole's centre."""
    from medfake.tamper.cube import IsoGrid, to_iso
    from medfake.tamper.pipeline import strongest_view

    model = load_tamper_model(remover)
    cube = to_iso(lung1, IsoGrid(NODULE_ZYX, 32, 1.0))
    plain = model.inpaint_views(cube, 1)[0]
    views = model.inpaint_views(cube, 4)
    assert np.allclose(views[0], plain, atol=1e-3)
    assert np.allclose(model.inpaint_views(np.flip(cube, 2).copy(), 2)[1], np.flip(plain, 2), atol=1e-3)
    assert np.allclose(model.inpaint_views(np.flip(cube, 1).copy(), 3)[2], np.flip(plain, 1), atol=1e-3)
    centre = views[:, 14:18, 14:18, 14:18].mean(axis=(1, 2, 3))
    assert not np.allclose(centre, centre[0])  # the views differ where the generator is unsure
    assert np.array_equal(strongest_view(views, "remove", 16), views[int(np.argmin(centre))])
    assert np.array_equal(strongest_view(views, "inject", 16), views[int(np.argmax(centre))])
    with pytest.raises(MedfakeError, match="views must be 1..4"):
        model.inpaint_views(cube, 5)


def test_dicom_in_gives_a_derived_dicom_series_and_a_manifest(remover, dicom_crop, tmp_path, capsys):
    dest = tmp_path / "out"
    main(["tamper", "-t", str(dicom_crop), "-d", str(dest), "-a", "remove", "-c", "9,359,218",
          "--model", str(remover), "--seed", "4"])
    folder = dest / "lung1_crop_remove"
    source = [pydicom.dcmread(p) for p in sorted(dicom_crop.iterdir())]
    written = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    assert len(written) == len(source) == 18
    assert {d.SeriesInstanceUID for d in written} .isdisjoint({d.SeriesInstanceUID for d in source})
    assert {d.SOPInstanceUID for d in written}.isdisjoint({d.SOPInstanceUID for d in source})
    assert "DERIVED" in list(written[0].ImageType)
    assert "remove" in written[0].DerivationDescription and "9,359,218" in written[0].DerivationDescription
    rows = read_manifest(dest / "manifest.csv")
    assert len(rows) == 1 and rows[0].output == str(folder) and rows[0].chosen_by == "user"
    assert rows[0].method == "ctgan" and rows[0].model_id.startswith("run@40:")
    tampered = load_scan(folder)
    assert tampered.voxels[8:11, 352:366, 211:225].mean() < load_scan(dicom_crop).voxels[8:11, 352:366, 211:225].mean() - 300

    # a second run appends to the same manifest and never overwrites the first output
    main(["tamper", "-t", str(dicom_crop), "-d", str(dest), "-a", "remove", "--auto", "1",
          "--model", str(remover), "-f", "npz"])
    rows = read_manifest(dest / "manifest.csv")
    assert len(rows) == 2 and rows[1].chosen_by == "auto" and rows[1].output.endswith("lung1_crop_remove_2.npz")
    assert abs(rows[1].voxel_z - 9) <= 1 and abs(rows[1].voxel_y - 359) <= 4  # the detector found the nodule


@pytest.mark.parametrize("args, message", [
    (["-c", "33,359"], "bad coordinate '33,359'"),
    (["-c", "33,359,900"], "outside the scan"),
    (["-c", "33,359,218", "--model", "/nonexistent/run"], "no such model run folder"),
    (["-c", "33,359,218", "-s", "mm"], "coordinate system must be vox or world"),
])
def test_bad_input_is_one_line_and_exit_code_2(remover, tmp_path, capsys, args, message):
    argv = ["tamper", "-t", str(sample_path("lung1")), "-d", str(tmp_path / "o"), "-a", "remove"]
    if "--model" not in args:
        args = args + ["--model", str(remover)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_remover_cannot_inject(remover, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tamper", "-t", str(sample_path("lung1")), "-d", str(tmp_path / "o"), "-a", "inject",
              "-c", "23,358,118", "--model", str(remover)])
    assert exit_info.value.code == 2 and "trained to remove, not to inject" in capsys.readouterr().err


def test_classical_methods_get_the_same_manifest_treatment(lung1, lung1_label):
    nodule = lung1_label.voxels > 0
    removed, rows = tamper_scan(lung1, [Site(NODULE_ZYX, "table", 13.75)], "remove", method="inpaint")
    assert removed.voxels[nodule].mean() < lung1.voxels[nodule].mean() - 300
    assert rows[0].method == "inpaint" and rows[0].model_id == "none" and rows[0].chosen_by == "table"
    site = (23, 358, 118)
    injected, rows = tamper_scan(lung1, [site], "inject", method="copy-move", donor=lung1, donor_zyx=NODULE_ZYX,
                                 rng=np.random.default_rng(0))
    z, y, x = site
    assert injected.voxels[z, y - 5:y + 6, x - 5:x + 6].mean() > lung1.voxels[z, y - 5:y + 6, x - 5:x + 6].mean() + 300
    assert json.loads(rows[0].parameters)["donor_zyx"] == list(NODULE_ZYX)
    with pytest.raises(MedfakeError, match="can only inject"):
        tamper_scan(lung1, [site], "remove", method="copy-move", donor=lung1, donor_zyx=NODULE_ZYX)


def test_a_label_off_the_scans_grid_is_a_one_line_error(lung1_label, tmp_path, capsys):
    """Same shape is not enough: a label whose origin is 5 mm off would put the removals 5 mm off."""
    shifted = lung1_label.with_voxels(np.asarray(lung1_label.voxels),
                                      origin=tuple(np.add(lung1_label.origin, (0.0, 0.0, 5.0))))
    label = save_scan(shifted, tmp_path / "shifted.nrrd", format="nrrd")
    with pytest.raises(SystemExit) as exit_info:
        main(["tamper", "-t", str(sample_path("lung1")), "-d", str(tmp_path / "o"), "-a", "remove", "--auto", "1",
              "--label", str(label), "--method", "inpaint"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "shifted.nrrd" in err and "does not lie on the scan's grid" in err and "origin" in err
    assert not (tmp_path / "o").exists()
