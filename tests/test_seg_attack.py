"""Segmentation audit: the transform, the fields, Dice, and attacks on a U-Net briefly trained on real
TotalSegmentator CT slices (liver, spleen), through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from clihelp import assert_one_line_error, run_cli
from medfake.attack.data import SliceSet, axial_slices, labels_on_scan_grid, load_labelled, parse_classes
from medfake.attack.fields import (dice_per_class, jacobian_determinant, max_gradient, soft_dice, warp,
                                   without_folding)
from medfake.attack.fields import perceptibility as fields_perceptibility
from medfake.attack.calibrate import bisect_many, organ_weights, scale_map
from medfake.attack.config import AttackConfig, GeneratorConfig
from medfake.attack.generator import apply_generator, load_generator, train_generator
from medfake.attack.optimize import FieldParams, optimize_fields
from medfake.attack.problem import Problem, mean_drop, organ_envelope, relative_drops
from medfake.attack.segmenter import SegmenterConfig, train_segmenter
from medfake.attack.target import load_target
from medfake.data.samples import fetch
from medfake.errors import MedfakeError
from medfake.nn.seg_attack import FieldGenerator, build_unet

torch.set_num_threads(1)
TS = fetch("totalsegmentator")
CT, SEG = TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz"
DICOM, DICOM_SEG = TS / "example_ct_dicom", TS / "example_seg_dicom.nii.gz"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A small U-Net trained for 200 steps on example_ct's liver and spleen (3 mm slices, 96² crops)."""
    config = SegmenterConfig(classes="liver,spleen", channels=(16, 32, 64, 128), steps=200, batch_size=4, crop=96,
                             lr=3e-3, snapshot_every=200)
    return train_segmenter([CT], [SEG], tmp_path_factory.mktemp("seg") / "run", config, show_progress=False)


@pytest.fixture(scope="module")
def problem(segmenter):
    target = load_target(segmenter)
    scan, labels = load_labelled(CT, SEG)
    return Problem(target, axial_slices(scan, labels, target.organs, target.pixel_mm, z=list(range(87, 93))))


def test_zero_field_is_the_identity_and_a_shift_moves_by_whole_pixels():
    image = torch.rand(2, 1, 20, 24)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 20, 24)), image, atol=1e-6)
    shift = torch.zeros(2, 2, 20, 24)
    shift[:, 0] = 1.0  # x̃(p) = x(p + (1, 0)): the content moves one column left
    assert torch.allclose(warp(image, shift)[..., :-1], image[..., 1:], atol=1e-5)
    shift[:, 0], shift[:, 1] = 0.0, -2.0
    assert torch.allclose(warp(image, shift)[..., 2:, :], image[..., :-2, :], atol=1e-5)


def test_generated_fields_are_smooth_and_bounded():
    torch.manual_seed(0)
    gen = FieldGenerator(width=8, latent=4, coarse=8, max_disp=3.0, max_bias=0.5)
    for decoder in (gen.decode_u, gen.decode_b):
        torch.nn.init.normal_(decoder.out.weight, std=2.0)  # far from the identity start
    u, b, kl = gen(torch.randn(2, 1, 64, 64))
    assert u.shape == (2, 2, 64, 64) and b.shape == (2, 1, 64, 64) and float(kl.detach()) >= 0
    u, b = u.detach(), b.detach()
    assert 1.0 < float(u.abs().max()) <= 3.0 and float(b.abs().max()) <= 0.5
    # bilinear from a grid every 8 pixels: neighbours differ by at most 2·max/8
    assert max_gradient(u) <= 2 * 3.0 / 8 + 1e-5 and max_gradient(b) <= 2 * 0.5 / 8 + 1e-5
    params = FieldParams((1, 1, 64, 64), 8, 3.0, 0.5, "both")
    torch.nn.init.normal_(params.cu, std=3.0)
    u, _ = params()
    assert max_gradient(u) < 3.0 * 0.6  # bicubic over 8-pixel cells: far below a pixel-wise jump of 6


def test_dice_and_jacobian_against_hand_values():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    truth = np.array([[1, 1, 1], [2, 0, 0]])
    dice = dice_per_class(pred, truth, 4)
    assert dice[0] == pytest.approx(2 * 2 / 5) and dice[1] == pytest.approx(2 * 1 / 3) and np.isnan(dice[2])
    onehot = torch.nn.functional.one_hot(torch.from_numpy(truth)[None], 3).permute(0, 3, 1, 2).float()
    assert torch.allclose(soft_dice(onehot, onehot), torch.ones(2))
    assert torch.allclose(jacobian_determinant(torch.zeros(1, 2, 5, 5)), torch.ones(1, 3, 3))
    fold = torch.zeros(1, 2, 5, 5)
    fold[0, 0] = -2.0 * torch.arange(5.0)  # u_x = -2x: det = 1 - 2 = -1 everywhere
    assert torch.allclose(jacobian_determinant(fold), -torch.ones(1, 3, 3))
    assert torch.allclose(jacobian_determinant(without_folding(fold)), torch.full((1, 3, 3), 0.1), atol=1e-5)  # -0.9x


def test_labels_are_put_on_the_scan_grid_or_refused():
    from medfake.io import load_scan

    scan = load_scan(DICOM)
    labels = labels_on_scan_grid(scan, load_scan(DICOM_SEG, modality="SEG"))  # NIfTI with y flipped, z reversed
    assert labels.shape == scan.shape
    liver = scan.voxels[labels == 5]
    assert liver.size == 366708 and 70 < liver.mean() < 110  # contrast-enhanced liver, not air or fat
    with pytest.raises(MedfakeError, match="labels do not match the scan"):
        labels_on_scan_grid(scan, load_scan(SEG, modality="SEG"))
    with pytest.raises(MedfakeError, match="unknown organ 'livr'"):
        parse_classes("livr,spleen")
    assert parse_classes("kidneys,tumour=9+10")[1].ids == (9, 10)


def test_attack_drops_dice_more_with_larger_alpha(problem):
    assert np.all(problem.dice_before > 0.8)  # the target segments liver and spleen well on these slices
    weak = optimize_fields(problem, AttackConfig(alpha=0.25, steps=40))
    strong = optimize_fields(problem, AttackConfig(alpha=3.0, steps=40))
    points_lost = np.nanmean(problem.dice_before - strong.dice_after)
    assert points_lost >= 0.20
    assert mean_drop(problem, strong) > mean_drop(problem, weak) + 0.1
    assert np.abs(strong.u).max() <= 12.0 / 3.0 + 0.5 and np.abs(strong.b_hu).max() < 200


def test_drop_mode_hits_the_requested_drop_on_the_organs_with_less_perceptibility(problem):
    outcome = optimize_fields(problem, AttackConfig(drop=0.3, steps=40))
    assert mean_drop(problem, outcome) == pytest.approx(0.3, abs=0.05)
    far = organ_envelope(problem, 4)[:, 0].numpy() == 0  # beyond the dilated, blurred organ region
    assert far.mean() > 0.3 and np.abs(outcome.b_hu[far]).max() == 0 and np.abs(outcome.u).max(axis=1)[far].max() == 0
    # the same drop with neither the P term nor the organ envelope (and the old large steps): far more perceptible
    plain = optimize_fields(problem, AttackConfig(drop=0.3, steps=40, lambda_p=0.0, local=False, lr=0.05, cell=8))
    assert mean_drop(problem, plain) == pytest.approx(0.3, abs=0.05)
    perceptibility_of = lambda o: fields_perceptibility(problem.slices.images, o.adversarial_hu)
    assert perceptibility_of(outcome) < 0.5 * perceptibility_of(plain)
    unchanged = optimize_fields(problem, AttackConfig(drop=0.3, steps=0))  # zero fields: nothing moves
    assert np.abs(unchanged.adversarial_hu - problem.slices.images).max() < 0.05  # HU (float32 round trip)


def test_simultaneous_bisection_settles_every_argument_despite_cross_talk():
    fn = lambda x: np.array([x[0] ** 2 + 0.05 * x[1], 0.5 * x[1] + 0.05 * x[0], 0.1 * x[2], np.nan])
    best, calls = bisect_many(fn, 0.3, 0.0, 2.0, 12, 4, tolerance=0.002)
    values = fn(best)
    assert abs(values[0] - 0.3) < 0.004 and abs(values[1] - 0.3) < 0.004  # each value on the goal, measured jointly
    assert 1.99 < best[2] < 2.0 and best[3] == 1.0 and calls == 12  # unreachable: to the top; nothing to reach: kept
    best, calls = bisect_many(lambda x: 0.5 * x, 0.3, 0.0, 2.0, 12, 2, tolerance=0.01)
    assert np.allclose(best, 0.59375) and calls == 6  # 1, .5, .75, .625, .5625, .59375 (0.297: within 0.01), stop


def test_organ_weights_are_a_smooth_partition_and_unit_scales_change_nothing(problem):
    weights = organ_weights(problem, margin=4, sigma=3.0)
    total = weights.sum(dim=1)
    assert weights.shape == (6, 2, *problem.x.shape[-2:]) and float(total.max()) <= 1.0 + 1e-5
    liver, spleen = (problem.slices.classes == 1), (problem.slices.classes == 2)
    assert float(weights[:, 0].numpy()[liver].mean()) > 0.95 and float(weights[:, 1].numpy()[liver].mean()) < 0.02
    assert float(weights[:, 1].numpy()[spleen].mean()) > 0.9
    assert torch.equal(scale_map(weights, [1.0, 1.0]), torch.ones_like(total[:, None]))
    factor = scale_map(weights, [0.0, 2.0]).numpy()[:, 0]
    assert factor[liver].mean() < 0.05 and factor[spleen].mean() > 1.9


def test_generator_proposals_calibrated_per_organ_hit_the_requested_drop(segmenter, problem, tmp_path):
    """A briefly trained generator on other slices; its fields on the test slices, calibrated per organ with
    forward passes only, drop every organ's Dice by the requested 30 % (± 5 points), only near the organs."""
    target = load_target(segmenter)
    scan, labels = load_labelled(CT, SEG)
    train = Problem(target, axial_slices(scan, labels, target.organs, target.pixel_mm,
                                         z=list(range(78, 86)) + list(range(94, 102))))
    attack = AttackConfig(drop=0.3, steps=20)  # also the teacher's (optimize mode on the training slices) iterations
    run = train_generator(train, tmp_path / "gen", GeneratorConfig(steps=30, batch_size=4, n_critic=1, width=8,
                                                                   snapshot_every=30), attack, show_progress=False)
    gen, info = load_generator(run)
    assert gen.in_channels == 1 + problem.classes  # conditioned on S(x)'s probabilities
    outcome = apply_generator(problem, gen, attack, rescale_bias=info["std_hu"] / problem.std)
    drops = relative_drops(problem.dice_before, outcome.dice_after)
    assert np.all(np.abs(drops - 0.3) <= 0.05), drops
    assert outcome.calibration["passes"] <= 9 and all(abs(s) <= 4 for s in outcome.calibration["scales"])
    far = organ_envelope(problem, 4)[:, 0].numpy() == 0
    assert np.abs(outcome.b_hu[far]).max() == 0 and np.abs(outcome.u).max(axis=1)[far].max() == 0
    assert float((jacobian_determinant(torch.from_numpy(outcome.u)) <= 0).sum()) == 0


def test_cli_audit_end_to_end(segmenter, tmp_path, capsys):
    out = tmp_path / "audit"
    code, stdout, err = run_cli(["attack", "segmentation", "--target", segmenter, "--scan", CT, "--labels", SEG,
                                 "--drop", "0.3", "--steps", "20", "--slices", "88:91", "-o", out], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["requested_drop"] == 0.3 and results["method"] == "optimize" and results["slices"] == [88, 89, 90]
    for organ in ("liver", "spleen"):
        assert set(results["organs"][organ]) >= {"dice_before", "dice_after", "dice_after_unwarped", "success_30"}
    assert 0 < results["perceptibility"] < 1 and 0 < results["ssim"] <= 1
    assert results["folding_fraction"] == 0.0 and results["u_max_mm"] <= 13.0
    methods = [c["method"] for c in results["comparison"]]
    assert methods == ["optimize", "deformation-only", "bias-only", "PGD", "FGSM"]
    assert results["comparison"][0]["iterations"] <= 20 and results["perceptibility_bias"] > 0
    pgd = results["comparison"][3]
    assert pgd["u_max_mm"] == 0 and pgd["note"].startswith("L∞")
    assert (out / "attack.png").stat().st_size > 10_000 and "data:image/png" in (out / "report.html").read_text()
    assert "| optimize" in (out / "results.md").read_text() and (out / "run.json").exists()


def test_cli_train_segmenter_writes_a_loadable_target(tmp_path, capsys):
    run = tmp_path / "seg"
    code, _, err = run_cli(["train", "segmenter", "--scans", CT, "--labels", SEG, "--classes", "liver,kidneys",
                            "--steps", "2", "--crop", "32", "--batch-size", "2", "-o", run], capsys)
    assert code == 0, err
    target = load_target(run)
    assert [o.name for o in target.organs] == ["liver", "kidneys"] and target.organs[1].ids == (2, 3)
    assert (run / "losses.csv").exists() and (run / "checkpoints/segmenter.pt").exists()


def test_bad_input_gives_one_line_errors(segmenter, tmp_path, capsys):
    assert_one_line_error(["attack", "segmentation", "--target", segmenter, "--scan", CT, "--labels", DICOM_SEG,
                    "-o", tmp_path / "a"], capsys, "labels do not match the scan")
    assert_one_line_error(["train", "segmenter", "--scans", CT, "--labels", SEG, "--classes", "liver,heartt",
                    "-o", tmp_path / "b"], capsys, "unknown organ 'heartt'")
    net = build_unet(3, channels=(4, 8), in_channels=3).eval()
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(tmp_path / "rgb.ts"))
    (tmp_path / "rgb.yaml").write_text(yaml.safe_dump({"classes": "liver,spleen", "torchscript": "rgb.ts"}))
    assert_one_line_error(["attack", "segmentation", "--target", tmp_path / "rgb.yaml", "--scan", CT, "--labels", SEG,
                    "-o", tmp_path / "c"], capsys, "model rejects a 1-channel")
    (tmp_path / "four.yaml").write_text(yaml.safe_dump({"classes": "liver,spleen,kidneys,stomach",
                                                        "monai": {"name": "UNet", "args": {
                                                            "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                                                            "channels": [4, 8], "strides": [2]}}}))
    assert_one_line_error(["attack", "segmentation", "--target", tmp_path / "four.yaml", "--scan", CT, "--labels", SEG,
                    "-o", tmp_path / "d"], capsys, "model outputs shape (1, 3, 64, 64)")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_bench_matrix_audit_stage_trains_attacks_reports_and_resumes(tmp_path):
    from medfake.bench.audit import segmentation_audit
    from medfake.bench.config import Cells, load_config
    from medfake.bench.report import segmentation_audit_markdown, segmentation_audit_section

    spec = {"classes": "liver,spleen", "train_steps": 40, "channels": [8, 16, 32], "crop": 64, "max_slices": 2,
            "steps": 10}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"segmentation_audit": {**spec, "stepz": 3}}))
    with pytest.raises(MedfakeError, match="unknown segmentation_audit key"):
        load_config(tmp_path / "bad.yaml")
    logged = []
    cells = Cells(tmp_path / "cells", log=logged.append)
    audit = segmentation_audit(cells, {"seed": 0, "segmentation_audit": spec})
    assert (tmp_path / "cells/segaudit-target/run/model.pt").exists()
    assert all((z // 4) % 4 == 0 for z in audit["slices"]) and len(audit["slices"]) == 2  # held-out blocks only
    assert [m["method"] for m in audit["methods"]] == ["optimize", "deformation-only", "bias-only", "PGD", "FGSM"]
    results = json.loads((tmp_path / "cells/segaudit-attack/results.json").read_text())
    liver = results["organs"]["liver"]
    assert audit["methods"][0]["dice"]["liver"] == [liver["dice_before"], liver["dice_after"]]
    assert 0 < liver["dice_before"] <= 1 and audit["methods"][0]["folding_fraction"] == 0.0
    again = segmentation_audit(Cells(tmp_path / "cells", log=logged.append), {"seed": 0, "segmentation_audit": spec})
    assert again == audit and sum("cached" in line for line in logged) == 2
    text = "\n".join(segmentation_audit_markdown(audit))
    assert "## Segmentation robustness audit" in text and "| PGD" in text and "→" in text
    assert segmentation_audit_section(audit).title == "Segmentation robustness audit"
