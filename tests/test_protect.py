"""Protection against tampering with a tiny injector trained here on lung1 (16³ cubes, 60 steps): the torch
surrogate reproduces the numpy tamper step, the budget holds on every stored voxel, the white-box injector
paints less tissue into a protected scan, a tiny remover leaves more of the nodule in one, DICOM in -> derived
DICOM out + record, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch

from clihelp import assert_one_line_error
from medfake.cli import main
from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.protect.config import OptimizeConfig, ProtectConfig
from medfake.protect.run import protect_scan
from medfake.protect.surrogate import (Surrogate, TamperSite, ctgan_site, load_tamper_model, noise_free_context,
                                       tamper_scan)

SITE = (30, 300, 150)  # healthy lung parenchyma of lung1 (about -890 HU)
NODULE = (33, 359, 218)  # lung1's nodule (about +30 HU in its core)


@pytest.fixture(scope="module")
def injector(tiny_injector):
    """A tiny injector trained on lung1's nodule (16³ cubes, 60 steps; shared, see tests/tiny.py)."""
    return tiny_injector


@pytest.fixture(scope="module")
def remover(tiny_remover):
    """A tiny remover trained on two healthy lung spots of lung1 (16³ cubes, 60 steps; shared)."""
    return tiny_remover


@pytest.fixture(scope="module")
def lungs(lung1):
    from medfake.lungmask import lung_mask

    return lung_mask(lung1)


def test_surrogate_matches_the_numpy_tamper_step(injector, lung1):
    model = load_tamper_model(injector)
    surrogate = Surrogate(model)
    volume = torch.from_numpy(np.asarray(lung1.voxels, dtype=np.float32))
    for zyx in (SITE, (20, 330, 380)):
        geo = surrogate.geometry(lung1, zyx)
        sigma = surrogate.site_sigma(lung1, geo, 20.0)
        block, _ = surrogate.tamper_block(volume, lung1, geo, views=4, sigma=sigma)
        ours = surrogate.paste(volume, block, geo).numpy()
        context = noise_free_context(20.0, np.random.default_rng(0), surrogate.blend_mm, 4)
        reference = ctgan_site(lung1, TamperSite(zyx), "inject", model, context)
        assert np.abs(reference - lung1.voxels).max() > 200  # the injector paints something
        assert np.abs(ours - reference).max() < 1.0  # HU, everywhere (the blend region included)


def core_mean(scan, zyx) -> float:
    z, y, x = zyx
    return float(np.asarray(scan.voxels[z, y - 3:y + 4, x - 3:x + 4], dtype=np.float64).mean())


def test_white_box_injector_paints_less_into_a_protected_scan(injector, lung1, lungs):
    model = load_tamper_model(injector)
    config = ProtectConfig(8.0, optimize=OptimizeConfig(passes=16, sites_per_step=1, step_hu=1.0,
                                                        focus_zyx=[SITE], focus_mm=0.5, jitter_mm=0.0))
    protected = protect_scan(lung1, [Surrogate(model)], config, lungs)
    change = protected.voxels.astype(np.int32) - lung1.voxels
    assert protected.voxels.dtype == lung1.voxels.dtype and np.abs(change).max() == 8
    assert not change[~lungs].any()  # region lungs
    plain, _ = tamper_scan(lung1, [SITE], "inject", model, rng=np.random.default_rng(0), lung=lungs)
    guarded, _ = tamper_scan(protected, [SITE], "inject", model, rng=np.random.default_rng(0), lung=lungs)
    before = core_mean(lung1, SITE)
    injected, injected_protected = core_mean(plain, SITE) - before, core_mean(guarded, SITE) - before
    assert injected > 250  # unprotected: a ~ -550 HU blob in -890 HU lung
    assert injected_protected < injected - 30  # the protection takes at least 30 HU off the injected tissue


def test_remover_leaves_more_nodule_tissue_in_a_protected_scan(remover, lung1, lungs):
    """At every attacker seed (its fresh noise), the remover keeps more of lung1's nodule in the protected
    scan; random ±budget noise in the lungs (the trivial baseline) does not."""
    model = load_tamper_model(remover)
    config = ProtectConfig(16.0, optimize=OptimizeConfig(passes=16, sites_per_step=1, step_hu=2.0,
                                                         focus_zyx=[NODULE], focus_mm=0.5, jitter_mm=0.0))
    protected = protect_scan(lung1, [Surrogate(model)], config, lungs)
    assert np.abs(protected.voxels.astype(np.int32) - lung1.voxels).max() == 16
    signs = np.random.default_rng(1).choice([-16, 16], lung1.shape) * lungs
    noisy = lung1.with_voxels((lung1.voxels.astype(np.int32) + signs).astype(lung1.voxels.dtype))

    def kept(scan, seed):
        removed, _ = tamper_scan(scan, [NODULE], "remove", model, rng=np.random.default_rng(seed), lung=lungs)
        return core_mean(removed, NODULE)

    plain = [kept(lung1, seed) for seed in range(3)]
    assert max(plain) < core_mean(lung1, NODULE) - 800  # unprotected: the ~+30 HU nodule becomes lung
    gain = [kept(protected, seed) - p for seed, p in enumerate(plain)]
    baseline = [kept(noisy, seed) - p for seed, p in enumerate(plain)]
    assert min(gain) > 4.0  # HU of nodule tissue kept, every time
    assert min(baseline) < 4.0


def test_expectation_over_blur_and_dropout_still_protects(injector, lung1, lungs):
    """The EOT options: the generator samples its dropout inside `Surrogate.dropout` only (eval mode after), and
    a protection averaged over a σ ≤ 0.8 mm blur and two dropout samples still takes tissue off the white-box
    injection, within the budget."""
    from medfake.protect.optimize import local_crop, site_loss

    surrogate = Surrogate(load_tamper_model(injector))
    box, crop, zyx = local_crop(lung1, surrogate, SITE)
    geo = surrogate.geometry(crop, zyx)
    volume = torch.from_numpy(np.asarray(crop.voxels, dtype=np.float32))
    plain = [float(site_loss(surrogate, volume, crop, geo, 20.0, 20.0)) for _ in range(2)]
    with surrogate.dropout():
        sampled = [float(site_loss(surrogate, volume, crop, geo, 20.0, 20.0)) for _ in range(2)]
    assert plain[0] == plain[1] and sampled[0] != sampled[1]
    assert not any(m.training for m in surrogate.generator.modules())
    config = ProtectConfig(8.0, optimize=OptimizeConfig(passes=16, sites_per_step=1, step_hu=1.0, focus_zyx=[SITE],
                                                        focus_mm=0.5, jitter_mm=0.0, eot_blur_mm=0.8, ghosts=2))
    protected = protect_scan(lung1, [surrogate], config, lungs)
    assert np.abs(protected.voxels.astype(np.int32) - lung1.voxels).max() == 8
    model = surrogate.model
    plain_scan, _ = tamper_scan(lung1, [SITE], "inject", model, rng=np.random.default_rng(0), lung=lungs)
    guarded, _ = tamper_scan(protected, [SITE], "inject", model, rng=np.random.default_rng(0), lung=lungs)
    before = core_mean(lung1, SITE)
    assert core_mean(guarded, SITE) - before < core_mean(plain_scan, SITE) - before - 30


def test_cli_end_to_end_dicom_budget_tags_and_record(injector, lung1_dicom, tmp_path):
    out = tmp_path / "prot"
    main(["protect", str(lung1_dicom), "-o", str(out), "--against", str(injector), "--budget-hu", "5.5",
          "--passes", "16", "--focus", "1,300,150", "--focus-mm", "6", "--ghosts", "1", "--eot-blur-mm", "0.5"])
    written = out / "series_protected"
    original, protected = load_scan(lung1_dicom), load_scan(written)
    change = protected.voxels.astype(np.int32) - original.voxels.astype(np.int32)
    assert np.abs(change).max() == 5  # the integer part of the budget, reached, never passed (every voxel)
    assert np.count_nonzero(change) > 1000
    files = sorted(written.iterdir())
    ds, src = pydicom.dcmread(files[0]), pydicom.dcmread(sorted(lung1_dicom.iterdir())[0])
    assert "DERIVED" in ds.ImageType and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert "protect" in ds.DerivationDescription and "5.5 HU" in ds.DerivationDescription
    record = json.loads((out / "series_protected.protection.json").read_text())["config"]
    assert record["method"] == "optimize" and record["budget_hu"] == 5.5 and record["max_abs_change_hu"] == 5
    assert record["models"][0].startswith("run@60") and record["seconds"] > 0
    assert record["optimize"]["ghosts"] == 1 and record["optimize"]["eot_blur_mm"] == 0.5
    assert load_scan(lung1_dicom).voxels.tolist() == original.voxels.tolist()  # input untouched


def test_evaluate_protection_cli_rows_judges_panels_and_report(injector, remover, lung1_dicom, tmp_path):
    """protect (white-box: the injector) then `medfake evaluate protection` under a white-box, a grey-box remover
    (never protected against), black-box in-painting and a DICOM re-save: one row each, with both judges,
    ROI metrics, collateral change, detector AUCs, a 5-panel PNG per row and a self-contained report."""
    main(["protect", str(lung1_dicom), "-o", str(tmp_path / "prot"), "--against", str(injector), "--passes", "32",
          "--focus", "1,300,150", "--focus-mm", "0.5"])  # 4 sites a step: 8 sign steps of 2 HU
    out = tmp_path / "eval"
    main(["evaluate", "protection", str(tmp_path / "prot" / "series_protected"), "-o", str(out), "--attacker",
          str(injector), "--attacker", str(remover), "--classical", "inpaint", "--before", "dicom-resave",
          "--detector", "selfref", "--site", "1,300,150", "--sites", "1"])
    case = json.loads((out / "protection.json").read_text())["cases"][0]
    imp = case["imperceptibility"]["whole_scan"]
    assert imp["max_abs_hu"] == 8 and 0 < imp["rmse_hu"] < 1 and imp["psnr_lung_db"] > 60
    rows = case["attackers"]
    assert sorted(r["threat"] for r in rows.values()) == ["benign", "black-box", "grey-box", "white-box"]
    white = next(r for r in rows.values() if r["threat"] == "white-box")
    assert white["sites"][0]["site"] == [1, 300, 150] and white["action"] == "inject"
    assert white["core_change_protected_hu"] < white["core_change_unprotected_hu"] - 2  # the protection bites
    assert white["roi_psnr_lung_db"] < 80  # T(x) and T(x_p) differ in the ROI
    nodule_in_slab = np.asarray(NODULE) - (29, 0, 0)
    for row in (r for r in rows.values() if r["action"] == "remove"):
        assert np.abs(np.asarray(row["sites"][0]["site"]) - nodule_in_slab).max() <= 3  # the CAD's nodule
    inpaint = next(r for r in rows.values() if r["threat"] == "black-box")
    assert inpaint["success_unprotected"] == 1.0 and inpaint["core_shell_unprotected"] == 1.0  # both judges
    assert inpaint["core_change_unprotected_hu"] < -500 and inpaint["collateral_rmse_hu"] < 1.0
    aucs = white["detectors"]["selfref"]
    (protected_score,), (plain_score,) = aucs["scores"]["tampered_protected"], aucs["scores"]["tampered"]
    expected = 1.0 if protected_score > plain_score else 0.0 if protected_score < plain_score else 0.5
    assert aucs["auc_tampered_protected_vs_tampered"] == expected  # one pair: the AUC is which of the two is higher
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 4
    image = plt_imread(panels[0])
    assert image.shape[1] > 4 * image.shape[0] // 2  # five panels side by side
    html = (out / "report.html").read_text()
    assert html.count("data:image/png") == 4 and "white-box" in html and "src='http" not in html
    assert "| white-box inject" in (out / "protection.md").read_text()


def plt_imread(path):
    from matplotlib import image

    return image.imread(path)


def test_one_line_errors(injector, lung1, tmp_path, capsys):
    scan = str(sample_path("lung1"))
    base = ["protect", scan, "-o", str(tmp_path / "o")]
    assert_one_line_error(base + ["--against", str(injector), "--budget-hu", "0"], capsys, "budget must be a positive")
    with pytest.raises(MedfakeError, match="must not be negative"):
        ProtectConfig(optimize=OptimizeConfig(ghosts=-1)).validate()
    assert_one_line_error(base + ["--against", str(injector), "--action", "remove"], capsys,
                          "trained to inject, not to remove")
    not_model = tmp_path / "detector_run"
    not_model.mkdir()
    (not_model / "weights.pt").write_bytes(b"not a model")
    assert_one_line_error(base + ["--against", str(not_model)], capsys, "not a medfake tamper model")
    bad = tmp_path / "bad_model" / "model"
    bad.mkdir(parents=True)
    (bad / "model.json").write_text((injector / "model" / "model.json").read_text())
    (bad / "generator.pt").write_bytes(b"garbage")
    assert_one_line_error(base + ["--against", str(bad.parent)], capsys, "cannot load generator weights")
    body = np.full((6, 96, 96), -1000, dtype=np.int16)  # air around a soft-tissue body: a CT without lungs
    body[:, 8:88, 8:88] = 40
    soft = lung1.with_voxels(body, spacing=(2.0, 1.0, 1.0))
    phantom = save_scan(soft, tmp_path / "phantom.nrrd")
    assert_one_line_error(["protect", str(phantom), "-o", str(tmp_path / "o2"), "--against", str(injector)],
                          capsys, "no lung")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    evaluate = ["evaluate", "protection", str(phantom), "-o", str(tmp_path / "e")]
    assert_one_line_error(evaluate + ["--attacker", str(injector)], capsys, "no protection record")
    assert_one_line_error(evaluate, capsys, "give at least one attacker")
    assert_one_line_error(evaluate + ["--classical", "splice"], capsys, "unknown classical attack")
    assert_one_line_error(evaluate + ["--attacker", str(not_model)], capsys, "not a medfake tamper model")
    (tmp_path / "phantom.protection.json").write_text("{not json")
    assert_one_line_error(evaluate + ["--attacker", str(injector)], capsys, "not a protection record")
    assert not (tmp_path / "e").exists()


def test_network_protector_trains_on_the_loop_and_protects_within_budget(injector, lung1_dicom, tmp_path):
    run = tmp_path / "protector"
    main(["train", "protector", "--scans", str(lung1_dicom), "--against", str(injector), "-o", str(run),
          "--steps", "6", "--budget-hu", "6"])
    losses = (run / "losses.csv").read_text().strip().splitlines()
    assert len(losses) == 7 and (run / "model" / "protector.pt").exists() and (run / "run.json").exists()
    out = tmp_path / "net"
    main(["protect", str(lung1_dicom), "-o", str(out), "--against", str(injector), "--method", "network",
          "--protector", str(run), "--budget-hu", "6"])
    original, protected = load_scan(lung1_dicom), load_scan(out / "series_protected")
    change = protected.voxels.astype(np.int32) - original.voxels.astype(np.int32)
    assert 0 < np.abs(change).max() <= 6 and np.count_nonzero(change) > 10_000
    record = json.loads((out / "series_protected.protection.json").read_text())["config"]
    assert record["method"] == "network" and record["models"][-1].startswith("protector protector@6")
    with pytest.raises(SystemExit):  # a tamper model is not a protector
        main(["protect", str(lung1_dicom), "-o", str(tmp_path / "x"), "--against", str(injector), "--method",
              "network", "--protector", str(injector)])
