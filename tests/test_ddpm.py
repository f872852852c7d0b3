"""Our DDPM equals denoising-diffusion-pytorch 1.8.3: reference vectors and checkpoint produced by that package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfake.detect.detectors import load_detector, unet_arguments_from_state
from medfake.nn.ddpm import GaussianDiffusion, Unet, build_diffusion

# Fixtures written by denoising-diffusion-pytorch 1.8.3 (see tests/data/ddpm183/README.md); kept in the repository
# so that a clone with nothing beside it passes.
REFERENCE = Path(__file__).parent / "data" / "ddpm183"


@pytest.fixture(scope="module")
def reference():
    config = json.loads((REFERENCE / "small_config.json").read_text())
    checkpoint = torch.load(REFERENCE / "small_ckpt.pt", map_location="cpu", weights_only=True)
    vectors = torch.load(REFERENCE / "small_vectors.pt", map_location="cpu", weights_only=True)
    unet = Unet(dim=config["unet"]["dim"], dim_mults=tuple(config["unet"]["dim_mults"]), channels=1)
    diffusion = GaussianDiffusion(unet, image_size=config["diffusion"]["image_size"])
    diffusion.load_state_dict(checkpoint["model"], strict=True)
    return diffusion.eval(), checkpoint, vectors


def test_state_dict_keys_order_and_buffers_equal_183(reference):
    diffusion, checkpoint, _ = reference
    fresh = GaussianDiffusion(Unet(dim=8, channels=1), image_size=32).state_dict()
    assert list(fresh) == list(checkpoint["model"])
    assert len(fresh) == 287
    for name in ("betas", "alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "loss_weight"):
        torch.testing.assert_close(fresh[name], checkpoint["model"][name], rtol=0, atol=0)
    assert fresh["betas"][0].item() == pytest.approx(3.0028e-4, rel=1e-4)
    assert fresh["alphas_cumprod"][499].item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("t", [0, 10, 500])
def test_noise_prediction_matches_183(reference, t):
    diffusion, _, vectors = reference
    with torch.inference_mode():
        eps = diffusion.model(vectors["x"], torch.full((2,), t, dtype=torch.long))
    assert (eps - vectors[f"eps_t{t}"]).abs().max().item() <= 1e-5


def test_reverse_step_at_t0_matches_183(reference):
    diffusion, _, vectors = reference
    x = diffusion.normalize(vectors["x01"])
    torch.testing.assert_close(x, vectors["x"], rtol=0, atol=1e-7)
    x_prev, x_start = diffusion.p_sample(x, 0)
    assert (x_prev - vectors["p_sample_t0_x_prev"]).abs().max().item() <= 1e-5
    assert (x_start - vectors["p_sample_t0_x_start"]).abs().max().item() <= 1e-5
    mse = ((x - x_prev) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(mse, vectors["mse_x_vs_x_prev"], rtol=1e-5, atol=1e-9)


def test_btd_scorer_equals_reference_loop(reference):
    from medfake.detect.btd import BTDScorer, ScoreOptions, reference_scores

    diffusion, _, vectors = reference
    patches = vectors["x01"].numpy()
    batched = BTDScorer(diffusion, ScoreOptions(batch_size=2)).scores(patches)
    assert batched == pytest.approx(vectors["mse_x_vs_x_prev"].numpy(), rel=1e-5)
    assert reference_scores(diffusion, patches) == pytest.approx(batched, rel=1e-5)
    unclamped = BTDScorer(diffusion, ScoreOptions(clamp=False)).scores(patches)
    assert (unclamped >= batched).all() and not (unclamped == batched).all()


def test_btd_preset_has_the_published_layout():
    layout = json.loads((REFERENCE / "btd_state_dict_layout.json").read_text())
    diffusion = build_diffusion("btd", image_size=96)
    state = diffusion.state_dict()
    assert [entry["key"] for entry in layout] == list(state)
    assert all(list(state[e["key"]].shape) == e["shape"] and e["dtype"] == "float32" for e in layout)
    assert sum(p.numel() for p in diffusion.model.parameters()) == 9_190_977


def test_foreign_checkpoint_architecture_is_read_from_its_keys(reference, tmp_path):
    _, checkpoint, vectors = reference
    args = unet_arguments_from_state(checkpoint["model"], "small_ckpt.pt")
    assert args["dim"] == 8 and args["dim_mults"] == [1, 2, 4, 8] and args["full_attn"] == [False, False, False, True]
    detector = load_detector(REFERENCE / "small_ckpt.pt", modality="ct")
    scores = detector.scores(vectors["x01"].numpy())
    assert scores == pytest.approx(vectors["mse_x_vs_x_prev"].numpy(), rel=1e-5)
