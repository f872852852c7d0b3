"""GPU checks (marker `gpu`, deselected by `make test`; run on a CUDA machine with `pytest -m gpu --noconftest
tests/test_gpu.py`): the shared loop, a 3-D pix2pix GAN step, a DDPM step and BTD scoring on CUDA, fp32 and bf16.

They need only torch, accelerate, numpy and rich (no scans: GPU machines here have no sample cache), and fail
rather than skip when CUDA is missing, since selecting them means a GPU was meant to be there."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def cuda():
    assert torch.cuda.is_available(), "the gpu tests were selected but CUDA is not available"
    torch.backends.cudnn.allow_tf32 = False  # fp32 comparisons below mean fp32
    torch.backends.cuda.matmul.allow_tf32 = False


def textured_patches(n: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """[0, 1] patches with CT-like structure: smooth blobs plus fine noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal((n, 1, size, size)), (0, 0, 6, 6))
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
    return np.clip(0.2 + 0.6 * smooth + 0.03 * rng.standard_normal(smooth.shape), 0, 1).astype(np.float32)


class Line:
    name, checkpoint_name = "line", "checkpoint.pt"

    def setup(self, accelerator):
        self.accelerator = accelerator
        net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.net, self.opt = accelerator.prepare(net, torch.optim.Adam(net.parameters(), lr=1e-2))

    def train_step(self, step):
        x = torch.randn(64, 1, device=self.accelerator.device)
        with self.accelerator.autocast():
            loss = F.mse_loss(self.net(x).float(), 3 * x - 1)
        self.opt.zero_grad()
        self.accelerator.backward(loss)
        self.opt.step()
        return {"mse": loss.item()}

    def state(self):
        return {"net": self.accelerator.unwrap_model(self.net).state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state):
        self.accelerator.unwrap_model(self.net).load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def snapshot(self, folder, step):
        pass


def test_loop_trains_on_cuda_in_bf16_and_resumes(tmp_path):
    from medfake.training import LoopConfig, fit, load_checkpoint

    config = dict(seed=3, mixed_precision="bf16", checkpoint_every=10, show_progress=False)
    model = Line()
    fit(model, tmp_path / "a", LoopConfig(steps=60, **config), {})
    assert next(model.net.parameters()).device.type == "cuda"
    record = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert record["device"].startswith("cuda") and record["mixed_precision"] == "bf16"
    fit(Line(), tmp_path / "b", LoopConfig(steps=30, **config), {})
    fit(Line(), tmp_path / "b", LoopConfig(steps=60, **config), {}, resume=True)
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt")["net"] for r in "ab")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    losses = [float(r.split(",")[1]) for r in (tmp_path / "a" / "losses.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pix2pix3d_gan_steps_on_cuda(dtype):
    from medfake.nn.pix2pix3d import PatchDiscriminator3D, UNetGenerator3D

    torch.manual_seed(0)
    device = torch.device("cuda")
    G = UNetGenerator3D((8, 16, 32, 64, 64), dropout=0.2).to(device)
    D = PatchDiscriminator3D((8, 16, 32, 64)).to(device)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    zz, yy, xx = torch.meshgrid(*(torch.arange(32.0, device=device) - 15.5,) * 3, indexing="ij")
    ball = (zz ** 2 + yy ** 2 + xx ** 2 < 36).float()
    real = (ball * 1.4 - 0.7 + 0.05 * torch.randn(8, 1, 32, 32, 32, device=device)).clamp(-1, 1)
    cond = real.clone()
    cond[..., 8:24, 8:24, 8:24] = 0
    l1s = []
    for _ in range(40):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            fake = G(cond)
            d_real, d_fake = D(real, cond), D(fake.detach(), cond)
            loss_d = 0.5 * (F.mse_loss(d_real.float(), torch.ones_like(d_real.float()))
                            + F.mse_loss(d_fake.float(), torch.zeros_like(d_fake.float())))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            d_fake = D(fake, cond)
            l1 = torch.mean(torch.abs(fake.float()[..., 8:24, 8:24, 8:24] - real[..., 8:24, 8:24, 8:24]))
            loss_g = F.mse_loss(d_fake.float(), torch.ones_like(d_fake.float())) + 100 * l1
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        l1s.append(l1.item())
    assert all(np.isfinite(l1s)) and np.isfinite(loss_d.item())
    assert np.mean(l1s[-5:]) < 0.7 * np.mean(l1s[:5])  # it learns to fill the hole with the ball


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddpm_training_steps_on_cuda(dtype):
    from medfake.nn.ddpm import build_diffusion

    torch.manual_seed(0)
    diffusion = build_diffusion("cpu-small", image_size=64).cuda()
    opt = torch.optim.Adam(diffusion.parameters(), lr=2e-4)
    x = torch.from_numpy(textured_patches(16, 64)).cuda()
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = diffusion(x)
        opt.zero_grad()
        loss.float().backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])


def test_btd_scores_on_cuda_match_the_cpu():
    from medfake.detect.btd import BTDScorer, ScoreOptions
    from medfake.nn.ddpm import build_diffusion

    torch.manual_seed(0)
    patches = textured_patches(24)
    cpu = BTDScorer(build_diffusion("cpu-small"), ScoreOptions(batch_size=8), device="cpu").scores(patches)
    torch.manual_seed(0)
    diffusion = build_diffusion("cpu-small")
    gpu32 = BTDScorer(diffusion, ScoreOptions(batch_size=24), device="cuda").scores(patches)
    gpu16 = BTDScorer(diffusion, ScoreOptions(batch_size=24, precision="bf16"), device="cuda").scores(patches)
    assert np.max(np.abs(gpu32 - cpu) / np.abs(cpu)) < 1e-3
    assert np.max(np.abs(gpu16 - cpu) / np.abs(cpu)) < 5e-2
    assert np.corrcoef(gpu16, cpu)[0, 1] > 0.99


# --- the project's own models through the one loop, on CUDA ------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_chest(tmp_path_factory):
    """A small synthetic chest CT with nodules, saved as NPZ (GPU machines have no sample cache)."""
    from medfake.data.synth import synthesize
    from medfake.io import save_scan

    reads = {"diameter_mm": np.array([8.0, 12.0]), "texture": np.array([5.0, 5.0]), "lobulation": np.ones(2),
             "spiculation": np.ones(2), "malignancy": np.full(2, 3.0), "slice_thickness": np.ones(2),
             "pixel_spacing": np.full(2, 0.7)}  # the LIDC table is not fetched there
    result = synthesize(5, n_xy=192, max_slices=24, slice_mm=2.5, reads=reads)
    return save_scan(result.scan, tmp_path_factory.mktemp("gpu_chest") / "chest.npz", format="npz")


def test_inpainting_gan_trains_and_resumes_on_cuda(synthetic_chest, tmp_path):
    from medfake.tamper.config import AugmentConfig, GanTrainConfig, TrainsetConfig
    from medfake.tamper.train import train
    from medfake.tamper.trainset import build_trainset
    from medfake.training import load_checkpoint, read_losses

    data = build_trainset("remove", [synthetic_chest], tmp_path / "set", auto_healthy=6, seed=0,
                          config=TrainsetConfig("remove", cube=16, augment=AugmentConfig(rotation_step_deg=90)))
    config = GanTrainConfig.resolve("remove", "cpu-small", g_filters=(8, 16, 32, 32), d_filters=(8, 16, 32, 32),
                                    batch_size=8, hole=8, steps=30, snapshot_every=10, checkpoint_every=10)
    run = train(data, tmp_path / "run", config, steps=30, show_progress=False)
    record = json.loads((run / "run.json").read_text())["config"]
    assert record["device"].startswith("cuda") and record["mixed_precision"] == "bf16"
    losses = read_losses(run)
    assert len(losses) == 30 and all(np.isfinite(float(r["g_l1"])) for r in losses)
    assert np.mean([float(r["g_l1"]) for r in losses[-5:]]) < np.mean([float(r["g_l1"]) for r in losses[:5]])
    train(data, run, config, resume=True, steps=40, show_progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["medfake_loop"]["step"] == 40


def test_btd_detector_trains_on_cuda_and_scores(synthetic_chest, tmp_path):
    from medfake.detect.config import DetectorTrainConfig
    from medfake.detect.detectors import load_detector
    from medfake.detect.train import train_detector
    from medfake.training import read_losses

    config = DetectorTrainConfig(method="btd", preset="cpu-small", steps=20, batch_size=16, save_every=10,
                                 samples=2, sample_steps=5, in_lung=False)
    run = train_detector([synthetic_chest], tmp_path / "btd", config, show_progress=False)
    record = json.loads((run / "run.json").read_text())["config"]
    assert record["device"].startswith("cuda") and record["mixed_precision"] == "bf16"
    assert all(np.isfinite(float(r["loss"])) for r in read_losses(run))
    detector = load_detector(run)
    scores = detector.scores(textured_patches(8))
    assert scores.shape == (8,) and np.all(np.isfinite(scores)) and np.all(scores > 0)
