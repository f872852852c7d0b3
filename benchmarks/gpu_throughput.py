"""GPU figures, on whatever CUDA device is present (named in the JSON): BTD scoring patches/s at the `btd` preset
(96²) — the reference per-patch fp32 loop (`p_sample(x, 0)`, as BTD's notebook) against our batched scorer in
fp32 and bf16 — and training steps/s of the 3-D pix2pix (cpu-small and paper widths) and of the DDPM (btd
preset), fp32 and bf16. Random seeded weights and synthetic inputs: speed does not depend on them, and the GPU
machines here have no sample cache. Prints and saves benchmarks/results/gpu_throughput.json (and $OUT/ when
set). CUDA timings use torch.cuda.synchronize() around each timed block, after a warm-up."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_gpu import textured_patches  # noqa: E402  (one definition of the synthetic patches)

from medfake.detect.btd import BTDScorer, ScoreOptions, reference_scores  # noqa: E402
from medfake.nn.ddpm import build_diffusion  # noqa: E402
from medfake.nn.pix2pix3d import PatchDiscriminator3D, UNetGenerator3D  # noqa: E402
from medfake.runinfo import run_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PIX2PIX = {"cpu-small": ((8, 16, 32, 64, 64), (8, 16, 32, 64), 16),
           "paper": ((100, 200, 400, 800, 800), (100, 200, 400, 800), 32)}


def timed(action, reps: int) -> float:
    action()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        action()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def btd_scoring(n_reference: int = 128, n_batched: int = 4096) -> dict:
    torch.manual_seed(0)
    diffusion = build_diffusion("btd", image_size=96).cuda().eval()
    patches = textured_patches(max(n_reference, n_batched) // 8, 96)
    patches = np.concatenate([patches] * 8)
    out = {"preset": "btd", "patch": 96, "patches_per_second": {}}
    reference_scores(diffusion, patches[:16])  # warm-up
    seconds = timed(lambda: reference_scores(diffusion, patches[:n_reference]), 1)
    out["patches_per_second"]["reference_loop_fp32"] = n_reference / seconds
    ref = reference_scores(diffusion, patches[:n_reference])
    for precision in ("fp32", "bf16"):
        for batch in (64, 256, 1024):
            scorer = BTDScorer(diffusion, ScoreOptions(precision=precision, batch_size=batch), device="cuda")
            seconds = timed(lambda: scorer.scores(patches[:n_batched]), 2)
            out["patches_per_second"][f"batched_{precision}_batch{batch}"] = n_batched / seconds
        scores = scorer.scores(patches[:n_reference])
        out[f"max_relative_difference_{precision}_vs_reference"] = float(np.max(np.abs(scores - ref) / np.abs(ref)))
    return out


def pix2pix_steps(widths, batch: int, dtype) -> float:
    g_filters, d_filters = widths
    G, D = UNetGenerator3D(g_filters, dropout=0.2).cuda(), PatchDiscriminator3D(d_filters).cuda()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    real = torch.rand(batch, 1, 32, 32, 32, device="cuda") * 2 - 1
    cond = real.clone()
    cond[..., 8:24, 8:24, 8:24] = 0
    use = dtype != torch.float32

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=use):
            fake = G(cond)
            loss_d = 0.5 * ((D(real, cond).float() - 1).square().mean() + D(fake.detach(), cond).float().square().mean())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.autocast("cuda", dtype=dtype, enabled=use):
            loss_g = (D(fake, cond).float() - 1).square().mean() + 100 * (fake.float() - real).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    return 1.0 / timed(step, 10)


def ddpm_steps(batch: int, dtype) -> float:
    diffusion = build_diffusion("btd", image_size=96).cuda()
    opt = torch.optim.Adam(diffusion.parameters(), lr=8e-6)
    x = torch.from_numpy(textured_patches(batch, 96)).cuda()

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = diffusion(x)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    return 1.0 / timed(step, 10)


def main() -> dict:
    assert torch.cuda.is_available(), "no CUDA device"
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tf32": False}
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    out["btd_scoring"] = btd_scoring()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    out["pix2pix3d_train_steps_per_second"] = {
        f"{name}_batch{batch}_{p}": pix2pix_steps(widths[:2], batch, dt)
        for name, (*widths, batch) in PIX2PIX.items() for p, dt in dtypes.items()}
    out["ddpm_btd_train_steps_per_second_batch32"] = {p: ddpm_steps(32, dt) for p, dt in dtypes.items()}
    out["run"] = run_record({"script": "gpu_throughput"}, 0)
    return out


if __name__ == "__main__":
    result = main()
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_throughput.json").write_text(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_throughput.json").write_text(text)
