"""The forensic detectors through the registry on the real lung1 CT: the training-free self-referenced
statistics, the learned noise residual and BTD's forensic mode each separate a blatant fake (a smoothed,
noise-free disc in flat lung) from the same genuine sites; the CLI runs every one of them end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from medfake.cli import main
from medfake.detect.config import BEST_METHOD, DetectorTrainConfig
from medfake.detect.detectors import load_detector
from medfake.detect.selfref import SelfRefConfig, flat_parenchyma
from medfake.detect.train import train_detector
from medfake.io import save_scan
from medfake.io.tables import ManifestRow, append_manifest
from medfake.stats import auc_score

NODULE = (33, 359, 218)


@pytest.fixture(scope="module")
def blatant(lung1, lung1_lungs):
    """10 sites in flat lung and lung1 with a smoothed disc (radius 12 px ≈ 7 mm, on the site's slice and its
    two neighbours) at each."""
    flat = ndimage.binary_erosion(lung1_lungs & flat_parenchyma(lung1, SelfRefConfig()), np.ones((1, 31, 31)))
    points = np.argwhere(flat[:, ::16, ::16]) * [1, 16, 16]
    sites = [tuple(int(v) for v in p) for p in points[np.random.default_rng(1).choice(len(points), 10, replace=False)]]
    hu = lung1.voxels.astype(np.float32)
    yy, xx = np.ogrid[-20:20, -20:20]
    disc = yy ** 2 + xx ** 2 < 12 ** 2
    for z, y, x in sites:
        for k in range(max(0, z - 1), min(hu.shape[0], z + 2)):
            block = hu[k, y - 20:y + 20, x - 20:x + 20]
            block[disc] = ndimage.gaussian_filter(block, 3)[disc]
    return sites, lung1.with_voxels(hu)


def separates(detector, lung1, blatant) -> float:
    sites, fake = blatant
    genuine, tampered = detector.score_sites(lung1, sites), detector.score_sites(fake, sites)
    assert np.array_equal(genuine, detector.score_sites(lung1, sites))  # deterministic
    return auc_score(np.r_[np.zeros(len(sites)), np.ones(len(sites))], np.r_[genuine, tampered])


def test_selfref_is_training_free_and_separates_a_blatant_fake(lung1, blatant):
    detector = load_detector("selfref")
    assert detector.scan_level and detector.training_free
    assert separates(detector, lung1, blatant) >= 0.9


def test_learned_noise_residual_trains_briefly_and_separates_a_blatant_fake(lung1, lung1_file, blatant, tmp_path):
    run = train_detector([lung1_file], tmp_path / "residual",
                         DetectorTrainConfig(method="residual", steps=40, batch_size=16, lr=1e-3, save_every=1000),
                         show_progress=False)
    detector = load_detector(run)
    assert detector.config.context == 1 and not detector.config.clip and detector.config.window == (-1150.0, -350.0)
    assert next(detector.net.parameters()).shape[1] == 3  # 2.5-D: three slices in
    detector.config.params["selfref"]["references"] = 24  # a faster calibration for the test
    assert separates(detector, lung1, blatant) >= 0.8


def test_forensic_btd_scores_small_t_centre_vs_ring(lung1, lung1_file, blatant, tmp_path):
    config = DetectorTrainConfig(method="btd-forensic", preset="tiny", patch_size=64, steps=15, batch_size=8,
                                 lr=2e-3, samples=0, save_every=1000)
    detector = load_detector(train_detector([lung1_file], tmp_path / "forensic", config, show_progress=False))
    assert detector.config.window == (-1150.0, -350.0) and not detector.config.clip
    patches = detector.patches(detector.unit(lung1), [NODULE])
    assert patches.max() > 1.5  # the nodule above the window keeps its value: nothing is clipped
    assert separates(detector, lung1, blatant) >= 0.8


def test_cli_end_to_end_with_the_default_method(lung1, lung1_file, blatant, tmp_path):
    main(["train", "detector", "--scans", str(lung1_file), "--steps", "3", "--samples", "0", "-o", str(tmp_path / "best")])
    saved = json.loads((tmp_path / "best/config.json").read_text())
    assert saved["method"] == BEST_METHOD == "residual" and saved["params"]["selfref"]["inside_mm"] == 10.0
    main(["train", "detector", "--scans", str(lung1_file), "--method", "selfref", "-o", str(tmp_path / "run")])
    sites, fake = blatant
    save_scan(fake, tmp_path / "fake.npz", format="npz")
    coords = [arg for z, y, x in sites[:3] for arg in ("-c", f"{z},{y},{x}")]
    main(["detect", str(tmp_path / "fake.npz"), "--model", str(tmp_path / "best"), "-c", "20,300,150", "-o",
          str(tmp_path / "det_best")])
    assert np.isfinite(float(next(csv.DictReader(open(tmp_path / "det_best/scores.csv")))["score"]))
    main(["detect", str(tmp_path / "fake.npz"), "--model", str(tmp_path / "run"), *coords, "-o", str(tmp_path / "det")])
    scores = [float(r["score"]) for r in csv.DictReader(open(tmp_path / "det/scores.csv"))]
    assert len(scores) == 3 and min(scores) > 3.0  # far outside this scan's own site-to-site variation

    main(["detect", str(tmp_path / "fake.npz"), "--model", "selfref", "--screen", "--top", "10", "-o",
          str(tmp_path / "screen")])
    findings = json.loads((tmp_path / "screen/findings.json").read_text())["findings"]
    spacing = np.asarray(lung1.spacing)
    hits = {i for i, (z, y, x) in enumerate(sites) for f in findings
            if np.linalg.norm((np.array(f["voxel_zyx"]) - (z, y, x)) * spacing) <= 15}
    assert len(findings) == 10 and len(hits) >= 2 and all(len(f["world_xyz"]) == 3 for f in findings)
    anomaly = np.load(tmp_path / "screen/anomaly_map.npz")["anomaly"].astype(np.float32)
    assert anomaly.shape == lung1.shape
    at_fakes = np.array([anomaly[z, y, x] for z, y, x in sites])
    assert np.mean(at_fakes > 2.0) >= 0.5  # most fakes stand > 2 robust σ above this scan's lung (a random lung point: rarely)

    append_manifest([ManifestRow(str(lung1_file), "fake.npz", *fake.voxel_to_world(s), *s, "remove", "smooth",
                                 "none", "{}", "now") for s in sites[:4]], tmp_path / "manifest.csv")
    main(["evaluate", "--genuine", str(lung1_file), "--tampered", str(tmp_path / "manifest.csv"), "-m", "selfref",
          "--per-scan", "6", "-o", str(tmp_path / "eval")])
    row = json.loads((tmp_path / "eval/results.json").read_text())["subsets"]["remove-smooth-ct"]["selfref"]
    assert row["n_tampered"] == 4 and row["auc"] >= 0.9


def test_cli_trains_and_detects_with_the_forensic_btd_and_the_residual_classifier(lung1, lung1_file, blatant, tmp_path):
    sites, fake = blatant
    save_scan(fake, tmp_path / "fake.npz", format="npz")
    append_manifest([ManifestRow(str(lung1_file), "fake.npz", *fake.voxel_to_world(s), *s, "inject", "smooth", "none",
                                 "{}", "") for s in sites[:4]], tmp_path / "manifest.csv")
    main(["train", "detector", "--scans", str(lung1_file), "--method", "btd-forensic", "--preset", "tiny",
          "--patch-size", "32", "--context", "1", "--steps", "2", "--samples", "0", "-o", str(tmp_path / "btdf")])
    main(["train", "detector", "--scans", str(lung1_file), "--method", "supervised-residual", "--tampered",
          str(tmp_path / "manifest.csv"), "--steps", "2", "-o", str(tmp_path / "supres")])
    assert load_detector(tmp_path / "btdf").config.context == 1  # 2.5-D: three slices in
    for method in ("btd-forensic", "supervised-residual"):
        folder = tmp_path / ("btdf" if method == "btd-forensic" else "supres")
        main(["detect", str(tmp_path / "fake.npz"), "--model", str(folder), "--method", method,
              "-c", "{},{},{}".format(*sites[0]), "-c", "{},{},{}".format(*sites[5]), "-o", str(tmp_path / f"out_{method}")])
        scores = [float(r["score"]) for r in csv.DictReader(open(tmp_path / f"out_{method}/scores.csv"))]
        assert len(scores) == 2 and all(np.isfinite(scores))


def test_training_free_and_mismatched_inputs_are_one_line_errors(lung1_file, tmp_path, capsys):
    from medfake.io import load_scan

    scan = load_scan(lung1_file)
    save_scan(scan.with_voxels(scan.voxels[:4], modality="MR"), tmp_path / "mri.npz", format="npz")
    cases = [(["detect", str(tmp_path / "mri.npz"), "--model", "selfref", "-c", "2,100,100", "-o", str(tmp_path / "x")],
              "modality mismatch"),
             (["detect", str(lung1_file), "--model", "selfref", "--method", "residual", "-c", "2,100,100", "-o",
               str(tmp_path / "x")], "this is a selfref detector"),
             (["train", "detector", "--scans", str(lung1_file), "--method", "selfref", "--modality", "mri", "-o",
               str(tmp_path / "y")], "has no MRI mode")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("error:")


def test_supervised_on_residuals_keeps_real_nodules_among_its_negatives(lung1, lung1_file, blatant, tmp_path):
    from medfake.detect.detectors import DetectorConfig
    from medfake.detect.train import nodule_patches

    sites, fake = blatant
    save_scan(fake, tmp_path / "fake.npz", format="npz")
    rows = [ManifestRow(str(lung1_file), "fake.npz", *fake.voxel_to_world(s), *s, "inject", "smooth", "none", "{}", "")
            for s in sites[:5]]
    rows.append(ManifestRow(str(lung1_file), "fake.npz", *fake.voxel_to_world(NODULE), *NODULE, "remove", "smooth",
                            "none", "{}", ""))
    append_manifest(rows, tmp_path / "manifest.csv")
    config = DetectorTrainConfig(method="supervised-residual", steps=40, batch_size=16, lr=1e-3, save_every=1000,
                                 samples=0)
    det = DetectorConfig.default("supervised-residual", "ct")
    nodules = nodule_patches([lung1_file], None, tmp_path / "manifest.csv", det)
    assert nodules.shape == (1, 1, 64, 64) and nodules[0, 0, 32, 32] > 1.0  # lung1's real nodule, unclipped
    run = train_detector([lung1_file], tmp_path / "sup", config, tampered=tmp_path / "manifest.csv", show_progress=False)
    detector = load_detector(run)
    held_out = sites[5:]
    genuine, tampered = detector.score_sites(lung1, held_out), detector.score_sites(fake, held_out)
    assert np.all((genuine > 0) & (genuine < 1))
    assert auc_score(np.r_[np.zeros(5), np.ones(5)], np.r_[genuine, tampered]) >= 0.8
