"""Tampering end to end with a small remover trained here on lung1's healthy lung: the nodule goes away,
world and voxel coordinates hit the same voxel, DICOM in -> derived DICOM out + manifest, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from medfake.cli import main
from medfake.data.samples import sample_path
from medfake.io import load_scan, save_scan
from medfake.io.tables import read_manifest
from medfake.tamper.config import GanTrainConfig
from medfake.tamper.model import TamperModel, load_tamper_model
from medfake.errors import MedfakeError
from medfake.tamper.pipeline import Site, tamper_scan
from medfake.tamper.run import resolve_sites

NODULE_ZYX = (33, 359, 218)
NODULE_XYZ = "-21.8586,-120.5358,-611.4964"  # lung1's LUNA16 annotation (world mm)


@pytest.fixture(scope="module")
def remover(tmp_path_factory):
    """cpu-small-shaped remover (thinner filters, 32³ cubes, 20³ hole: room for lung1's 14 mm nodule), 40 steps
    on 4 healthy lung1 locations x 11 views (the session's 16³ tiny remover has too small a hole for this)."""
    from tiny import tiny_tamper_run

    return tiny_tamper_run(tmp_path_factory.mktemp("remover"), "remove", cube=32, hole=20, steps=40,
                           filters=((4, 8, 16, 32, 32), (4, 8, 16, 32)), auto_healthy=4, seed=3)


@pytest.fixture(scope="module")
def lungs(lung1_lungs):
    return lung1_lungs


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


def test_generator_views_are_flipped_back(remover, lung1):
    """View k sees the cube through flip k: feeding the x-flipped cube, view 1 (x flip) must give back the
    x-flipped plain generation."""
    from medfake.tamper.cube import IsoGrid, to_iso

    model = load_tamper_model(remover)
    cube = to_iso(lung1, IsoGrid(NODULE_ZYX, 32, 1.0))
    plain = model.inpaint_views(cube, 1)[0]
    views = model.inpaint_views(cube, 4)
    assert np.allclose(views[0], plain, atol=1e-3)
    assert np.allclose(model.inpaint_views(np.flip(cube, 2).copy(), 2)[1], np.flip(plain, 2), atol=1e-3)
    assert np.allclose(model.inpaint_views(np.flip(cube, 1).copy(), 3)[2], np.flip(plain, 1), atol=1e-3)
    assert not np.allclose(views[1:], views[0], atol=1.0)  # the views differ where the generator is unsure
    with pytest.raises(MedfakeError, match="views must be 1..4"):
        model.inpaint_views(cube, 5)


class BallPerView(TamperModel):
    """A 'generator' whose view k fills a 5 mm-radius ball at the hole's centre with LEVELS[k] HU and hands the
    rest of the cube back unchanged: views that differ only in how dense their fill is."""

    levels: tuple = ()

    def inpaint_views(self, cube_hu, n_views):
        centre = (np.asarray(cube_hu.shape) - 1) / 2
        ball = np.linalg.norm(np.indices(cube_hu.shape) - centre[:, None, None, None], axis=0) <= 5.0
        views = np.stack([cube_hu] * n_views).astype(np.float32)
        for view, level in zip(views, self.levels):
            view[ball] = level
        return views


def core_hu(scan, zyx) -> float:
    z, y, x = zyx
    return float(np.asarray(scan.voxels[z, y - 4:y + 5, x - 4:x + 5], dtype=np.float64).mean())


@pytest.mark.parametrize("action, site, levels, views, kept", [
    ("inject", (23, 358, 118), (-700.0, -150.0, 40.0, -400.0), 4, 2),  # the densest fill of four
    ("inject", (23, 358, 118), (-700.0, -150.0, 40.0, -400.0), 2, 1),  # ... of the first two only
    ("inject", (23, 358, 118), (40.0, -700.0, -150.0, -400.0), 1, 0),  # one view: no choice
    ("remove", NODULE_ZYX, (-300.0, -600.0, -860.0, -20.0), 4, 2),  # removal keeps the emptiest
])
def test_the_kept_view_is_what_lands_in_the_scan(lung1, lungs, action, site, levels, views, kept):
    """Through the whole pipeline (resampling, blend, noise matching), the scan's core ends at the level of the
    view that should be kept, not at any other view's level."""
    model = BallPerView(GanTrainConfig(action=action), None, None, "balls")
    model.levels = levels
    out, _ = tamper_scan(lung1, [site], action, model, rng=np.random.default_rng(0), lung=lungs, views=views)
    core = core_hu(out, site)
    distances = np.abs(np.asarray(levels[:views]) - core)
    assert int(np.argmin(distances)) == kept and distances[kept] < 60.0, (core, levels)


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
