"""Detector training, scoring and the detect/evaluate CLIs on the real lung1 CT, with tiny models (32² patches)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medfake.cli import main
from medfake.detect.config import DetectorTrainConfig
from medfake.detect.detectors import load_detector
from medfake.detect.patches import patches_at, to_unit
from medfake.detect.train import train_detector
from medfake.io import save_scan
from medfake.io.tables import ManifestRow, append_manifest
from medfake.stats import auc_score, robust_sigma
from medfake.training import read_losses

NODULE = (33, 359, 218)
TINY = dict(method="btd", preset="tiny", patch_size=32, batch_size=16, lr=2e-3, samples=2, sample_steps=2)


@pytest.fixture(scope="session")
def tiny_run(lung1_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "btd"
    train_detector([lung1_file], run, DetectorTrainConfig(**TINY, steps=50, save_every=25), show_progress=False)
    return run


@pytest.fixture(scope="module")
def genuine_centres(lung1_lungs):
    mask = lung1_lungs.copy()
    mask[:, :40], mask[:, -40:], mask[:, :, :40], mask[:, :, -40:] = False, False, False, False
    points = np.argwhere(mask[:, ::8, ::8]) * [1, 8, 8]
    return points[np.random.default_rng(0).choice(len(points), 24, replace=False)]


def test_training_lowers_the_loss_and_writes_a_btd_checkpoint(tiny_run):
    # a weights-only load: the loop's own key (RNG states) and our resume state hold no pickled objects
    checkpoint = torch.load(tiny_run / "checkpoints/model-latest.pt", weights_only=True)
    assert set(checkpoint) >= {"step", "model", "opt", "ema", "scaler", "version"} and checkpoint["step"] == 50
    assert checkpoint["version"] == "1.8.3" and checkpoint["medfake_loop"]["step"] == 50
    assert len([k for k in checkpoint["model"] if not k.startswith("model.")]) == 13
    assert any(k.startswith("ema_model.model.") for k in checkpoint["ema"]) and checkpoint["ema"]["initted"]
    losses = np.asarray([float(r["loss"]) for r in read_losses(tiny_run)])
    assert len(losses) == 50 and losses[-10:].mean() < 0.6 * losses[:5].mean()
    assert {"config.json", "run.json", "losses.png", "samples.png", "losses.csv"} <= {p.name for p in tiny_run.iterdir()}
    assert json.loads((tiny_run / "config.json").read_text())["train"]["steps"] == 50


def test_resume_continues_exactly(lung1_file, tmp_path):
    config = dict(TINY, save_every=100, seed=3, in_lung=False, samples=0)
    straight = train_detector([lung1_file], tmp_path / "a", DetectorTrainConfig(**config, steps=4), show_progress=False)
    split = tmp_path / "b"
    train_detector([lung1_file], split, DetectorTrainConfig(**config, steps=2), show_progress=False)
    train_detector([lung1_file], split, DetectorTrainConfig(**config, steps=4), resume=True, show_progress=False)
    a = torch.load(straight / "checkpoints/model-latest.pt", weights_only=True)
    b = torch.load(split / "checkpoints/model-latest.pt", weights_only=True)
    assert read_losses(straight) == read_losses(split) and len(read_losses(split)) == 4
    for part in ("model", "ema"):
        for key, value in a[part].items():
            torch.testing.assert_close(value, b[part][key], rtol=0, atol=0)
    assert a["medfake"]["sampler_rng"] == b["medfake"]["sampler_rng"]
    torch.testing.assert_close(a["medfake"]["generator"], b["medfake"]["generator"], rtol=0, atol=0)


def test_scores_are_deterministic_and_separate_a_pasted_blob(tiny_run, lung1, genuine_centres):
    detector = load_detector(tiny_run)
    unit = to_unit(lung1)
    genuine = patches_at(unit, genuine_centres, 32)
    assert np.array_equal(detector.scores(genuine), detector.scores(genuine))
    # the checkpoint file alone (loop and resume keys ignored) is the same detector
    assert np.array_equal(load_detector(tiny_run / "checkpoints/model-latest.pt").scores(genuine), detector.scores(genuine))
    hu = lung1.voxels.astype(np.float32)
    rng = np.random.default_rng(5)
    for z, y, x in genuine_centres:  # a disc of noisy soft tissue pasted with a hard edge
        yy, xx = np.ogrid[-8:8, -8:8]
        disc = yy ** 2 + xx ** 2 < 64
        hu[z, y - 8:y + 8, x - 8:x + 8][disc] = 40 + rng.normal(0, 250, disc.sum())
    pasted = patches_at(to_unit(lung1.with_voxels(hu)), genuine_centres, 32)
    scores = np.r_[detector.scores(genuine), detector.scores(pasted)]
    labels = np.r_[np.zeros(len(genuine)), np.ones(len(pasted))]
    assert auc_score(labels, scores) >= 0.95


def test_btd_patch_protocol_pads_bottom_right_only():
    plane = np.arange(100 * 100, dtype=np.float32).reshape(100, 100) / 1e4
    top_left = patches_at(plane[None], [(0, 5, 5)], 32)[0, 0]
    assert np.array_equal(top_left[:21, :21], plane[:21, :21]) and (top_left[21:] == 0).all()
    bottom_right = patches_at(plane[None], [(0, 95, 95)], 32)[0, 0]
    assert np.array_equal(bottom_right[:21, :21], plane[79:, 79:]) and (bottom_right[21:] == 0).all()


def _manifest(tmp_path, lung1, lung1_file):
    from medfake.tamper.classical import copy_move_inject, inpaint_remove

    rng = np.random.default_rng(0)
    injected = copy_move_inject(lung1, (20, 300, 150), lung1, NODULE, rng)
    injected = copy_move_inject(lung1.with_voxels(injected), (30, 330, 380), lung1, NODULE, rng)
    removed = inpaint_remove(lung1, NODULE, 14.0)
    rows = []
    for name, voxels, sites, action, method in (("inj.npz", injected, [(20, 300, 150), (30, 330, 380)], "inject", "copy-move"),
                                                ("rem.npz", removed, [NODULE], "remove", "inpaint")):
        save_scan(lung1.with_voxels(voxels.astype(np.int16)), tmp_path / name, format="npz")
        for zyx in sites:
            world = lung1.voxel_to_world(zyx)
            rows.append(ManifestRow(str(lung1_file), name, *world, *zyx, action, method, "none", "{}", "now"))
    append_manifest(rows, tmp_path / "manifest.csv")
    return tmp_path / "manifest.csv"


def mann_whitney_auc(positives, negatives) -> float:
    """P(score of a positive > score of a negative), ties counting one half: the AUC by hand."""
    pos, neg = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_detect_and_evaluate_cli_end_to_end(tiny_run, lung1, lung1_lungs, lung1_file, tmp_path):
    manifest = _manifest(tmp_path, lung1, lung1_file)
    for name, scan in (("inj", tmp_path / "inj.npz"), ("genuine", lung1_file)):
        main(["detect", str(scan), "--model", str(tiny_run), "-c", "20,300,150", "-c", "25,250,250",
              "-o", str(tmp_path / f"det_{name}")])
    rows = {name: list(csv.DictReader(open(tmp_path / f"det_{name}/scores.csv"))) for name in ("inj", "genuine")}
    assert [(r["voxel_z"], r["voxel_y"], r["voxel_x"]) for r in rows["inj"]] == [("20", "300", "150"), ("25", "250", "250")]
    tampered, untouched = (np.array([float(r["score"]) for r in rows[name]]) for name in ("inj", "genuine"))
    assert tampered[0] > 1.5 * untouched[0]  # the pasted nodule scores above the same place in the genuine scan
    assert tampered[1] == pytest.approx(untouched[1], rel=1e-6)  # 5 slices away from any change: the same score
    assert (tmp_path / "det_inj/patches.png").stat().st_size > 1000

    main(["detect", str(lung1_file), "--model", str(tiny_run), "--screen", "--stride", "32", "--slice-step", "6",
          "--top", "3", "-o", str(tmp_path / "screen")])
    findings = json.loads((tmp_path / "screen/findings.json").read_text())
    anomaly = np.load(tmp_path / "screen/anomaly_map.npz")["anomaly"].astype(np.float32)
    assert anomaly.shape == lung1.shape and not anomaly[~lung1_lungs].any()  # the map covers the lungs only
    inside = anomaly[lung1_lungs]
    assert abs(float(np.median(inside))) < 0.1 and robust_sigma(inside) == pytest.approx(1.0, abs=0.1)  # robust z
    peaks = [(tuple(f["voxel_zyx"]), f["score"]) for f in findings["findings"]]
    assert len(peaks) == 3 and all(score == pytest.approx(float(anomaly[zyx]), rel=2e-3) for zyx, score in peaks)
    assert findings["scan_score"] == pytest.approx(float(anomaly.max()), rel=2e-3)  # the map's highest point
    spacing = np.asarray(lung1.spacing)
    assert all(np.linalg.norm((np.subtract(a, b)) * spacing) > 10 for (a, _), (b, _) in zip(peaks, peaks[1:]))
    assert (tmp_path / "screen/finding_1.png").exists() and (tmp_path / "screen/anomaly_mip.png").exists()

    main(["evaluate", "--genuine", str(lung1_file), "--tampered", str(manifest), "-m", str(tiny_run),
          "--per-scan", "8", "-o", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval/results.json").read_text())
    scores = list(csv.DictReader(open(tmp_path / "eval/scores.csv")))
    assert len(scores) == 3 + 3 + 8  # 3 tampered sites, each also before tampering, 8 genuine lung sites

    def by_hand(column, positive, negative) -> float:
        return mann_whitney_auc([float(r[column]) for r in scores if positive(r)],
                                [float(r[column]) for r in scores if negative(r)])

    def tampered_by(action):
        return lambda r: r["label"] == "1" and r["action"] == action

    # headline rows: tampered sites against genuine sites holding the content they claim; secondary: the same
    # sites before tampering. Every AUC in results.json is the one computed here from the written scores.
    expected = {"inject-copy-move-ct": (tampered_by("inject"), lambda r: r["label"] == "0" and r["content"] == "nodule"),
                "inject-vs-before-copy-move-ct": (tampered_by("inject"),
                                                  lambda r: r["origin"] == "before" and r["action"] == "inject"),
                "remove-inpaint-ct": (tampered_by("remove"), lambda r: r["label"] == "0" and r["content"] == "lung"
                                      and r["origin"] in ("random", "matched")),  # lung drawn for removals
                "remove-vs-before-inpaint-ct": (tampered_by("remove"),
                                                lambda r: r["origin"] == "before" and r["action"] == "remove")}
    for row, (positive, negative) in expected.items():
        assert results["subsets"][row]["btd"]["auc"] == pytest.approx(by_hand("btd", positive, negative)), row
        assert results["rows"][row]["content_baseline"]["auc"] == pytest.approx(
            by_hand("content-baseline", positive, negative)), row
        assert results["rows"][row]["n_tampered"] == sum(map(positive, scores))
        assert results["rows"][row]["n_genuine"] == sum(map(negative, scores))
    assert results["subsets"]["inject-vs-before-copy-move-ct"]["btd"]["auc"] == 1.0  # as the detect CLI found
    remove = results["rows"]["remove-inpaint-ct"]
    assert remove["kind"] == "headline" and remove["n_genuine"] == 8  # the genuine lung sites, not those before injection
    assert results["rows"]["inject-copy-move-ct"]["n_genuine"] == 1  # the one genuine nodule (before removal)
    assert (tmp_path / "eval/roc_inject-all-ct.png").exists()
    assert "| inject-copy-move-ct | headline | 2 | 1 |" in (tmp_path / "eval/results.md").read_text()
    genuine_lung = [r for r in scores if r["origin"] in ("matched", "random")]
    assert len(genuine_lung) == 8 and sum(r["origin"] == "matched" for r in genuine_lung) >= 1  # matched to the removal
    assert all(lung1_lungs[int(r["voxel_z"]), int(r["voxel_y"]), int(r["voxel_x"])] for r in genuine_lung)
    assert all(np.linalg.norm((np.array([int(r[f"voxel_{a}"]) for a in "zyx"]) - NODULE) * spacing) > 20
               for r in genuine_lung)  # no genuine lung site near the real nodule


def test_bad_checkpoints_and_modalities_are_one_line_errors(tiny_run, lung1_file, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"step": 1, "model": {"some.weight": torch.zeros(2)}}, other)
    mri_scan = tmp_path / "mri.npz"
    from medfake.io import load_scan

    scan = load_scan(lung1_file)
    save_scan(scan.with_voxels(scan.voxels[:4], modality="MR"), mri_scan, format="npz")
    cases = [([str(lung1_file), "--model", str(junk)], "not a readable PyTorch checkpoint"),
             ([str(lung1_file), "--model", str(other), "--model-modality", "ct"], "not a denoising-diffusion-pytorch"),
             ([str(lung1_file), "--model", str(tmp_path)], "not a detector run folder"),
             ([str(mri_scan), "--model", str(tiny_run)], "modality mismatch"),
             ([str(lung1_file), "--model", str(tiny_run), "--method", "dae"], "this is a btd detector")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["detect", *args, "-c", "2,100,100", "-o", str(tmp_path / "never")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("error:")
    assert not (tmp_path / "never").exists()
