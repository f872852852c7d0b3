"""Baseline detectors behind the same interface: noise statistics, denoising autoencoder, supervised CNN."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from medfake.cli import main
from medfake.detect.config import METHODS, DetectorTrainConfig, ScoreOptions
from medfake.detect.detectors import DETECTORS, NetDetector, load_detector
from medfake.detect.patches import patches_at, to_unit
from medfake.detect.train import train_detector
from medfake.io import load_scan, save_scan
from medfake.io.tables import ManifestRow, append_manifest
from medfake.stats import auc_score


def test_noise_statistics_flag_smoothed_regions(lung1, lung1_file, tmp_path):
    run = train_detector([lung1_file], tmp_path / "noise", DetectorTrainConfig(method="noise", noise_patches=150),
                         show_progress=False)
    detector = load_detector(run)
    assert detector.method == "noise" and detector.config.window == (-1200.0, 800.0)
    rng = np.random.default_rng(1)
    centres = [(z, y, x) for z, y, x in zip(rng.integers(10, 40, 16), rng.integers(220, 300, 16), rng.integers(120, 400, 16))]
    hu = lung1.voxels.astype(np.float32)
    for z, y, x in centres:  # a smoothed (noise-free) disc: what in-painting and GANs tend to leave
        block = hu[z, y - 20:y + 20, x - 20:x + 20]
        yy, xx = np.ogrid[-20:20, -20:20]
        disc = yy ** 2 + xx ** 2 < 16 ** 2
        block[disc] = ndimage.gaussian_filter(block, 3)[disc]
    genuine = patches_at(to_unit(lung1, detector.config.window), centres, 96)
    smoothed = patches_at(to_unit(lung1.with_voxels(hu), detector.config.window), centres, 96)
    detector.options = ScoreOptions(region="centre", centre=32)  # the tamper location is the patch centre
    scores = np.r_[detector.scores(genuine), detector.scores(smoothed)]
    assert auc_score(np.r_[np.zeros(16), np.ones(16)], scores) >= 0.95


SITES = [(20, 300, 150), (30, 330, 380), (25, 382, 118), (10, 326, 154), (15, 390, 122), (20, 350, 380)]


def test_dae_and_supervised_train_and_detect_through_the_cli(lung1, lung1_file, tmp_path):
    """A blatant fake (a 300 HU square pasted into lung at SITES[0]) scored on the fake and on the genuine lung1."""
    main(["train", "detector", "--scans", str(lung1_file), "--method", "dae", "--patch-size", "32", "--steps", "3",
          "--batch-size", "8", "--samples", "2", "-o", str(tmp_path / "dae")])
    hu = lung1.voxels.copy()
    hu[20, 290:310, 140:160] = 300
    save_scan(lung1.with_voxels(hu), tmp_path / "fake.npz", format="npz")
    append_manifest([ManifestRow(str(lung1_file), "fake.npz", *lung1.voxel_to_world((20, 300, 150)), 20, 300, 150,
                                 "inject", "test", "none", "{}", "now")], tmp_path / "manifest.csv")
    main(["train", "detector", "--scans", str(lung1_file), "--method", "supervised", "--tampered",
          str(tmp_path / "manifest.csv"), "--steps", "3", "--batch-size", "8", "-o", str(tmp_path / "supervised")])
    where = [a for zyx in SITES for a in ("-c", ",".join(map(str, zyx)))]
    scores = {}
    for method in ("dae", "supervised"):
        main(["detect", str(tmp_path / "fake.npz"), "--model", str(tmp_path / method), "--method", method, *where,
              "-o", str(tmp_path / f"out_{method}")])
        rows = list(csv.DictReader(open(tmp_path / f"out_{method}/scores.csv")))
        assert [tuple(int(r[f"voxel_{a}"]) for a in "zyx") for r in rows] == SITES
        detector = load_detector(tmp_path / method)
        fake = np.array([float(r["score"]) for r in rows])
        again = detector.scores(detector.patches(detector.unit(load_scan(tmp_path / "fake.npz")), SITES))
        genuine = detector.scores(detector.patches(detector.unit(lung1), SITES))
        np.testing.assert_allclose(again, fake, rtol=1e-5)  # deterministic (the CSV holds 6 digits)
        np.testing.assert_allclose(genuine[1:], fake[1:], rtol=1e-5)  # other slices or far away: untouched
        scores[method, "fake"], scores[method, "genuine"] = fake, genuine
    # three steps on the one labelled fake are enough for the classifier: the fake outranks the same place in the
    # genuine scan and every genuine site
    supervised = scores["supervised", "fake"]
    assert supervised[0] > max(scores["supervised", "genuine"][0], *supervised[1:]) + 0.2
    # a 3-step autoencoder has not learned to reconstruct lung (30 steps do not either: measured fake 0.43 vs
    # genuine 0.53), so it cannot rank the fake; what it must do is see the change where it is
    assert abs(scores["dae", "fake"][0] - scores["dae", "genuine"][0]) > 0.05
    assert load_detector(tmp_path / "dae").config.patch_size == 32


def test_registry_names_every_method_once():
    # config.METHODS (torch-free, for the CLI) must list exactly the registry's detectors
    assert tuple(DETECTORS) == METHODS
    assert [m for m, kind in DETECTORS.items() if kind.trains_on_tampered] == ["supervised", "supervised-residual"]
    assert [m for m, kind in DETECTORS.items() if not issubclass(kind, NetDetector)] == ["noise", "selfref"]
    assert [m for m, kind in DETECTORS.items() if kind.scan_level] == ["selfref", "residual"]


def test_robust_sigma_is_the_normal_sigma_and_ignores_outliers():
    from medfake.stats import robust_sigma

    values = np.random.default_rng(2).normal(5.0, 3.0, 20_000)
    assert abs(robust_sigma(values) - 3.0) < 0.1
    values[:2000] = 1e6  # 10% wild outliers move the MAD only a little
    assert abs(robust_sigma(values) - 3.0) < 0.5 and np.std(values) > 1e5
