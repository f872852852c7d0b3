"""BTD scoring speed against the real `denoising_diffusion_pytorch==1.8.3`, not a re-creation of it.

The package drags in torchvision and pytorch-fid, whose installs pull a multi-GB CUDA torch, so it never enters
the project's environment. This script builds a throwaway virtual environment (default /tmp/medfake-ddpm183):
the CPU `torch==2.13.0` first, then `denoising-diffusion-pytorch==1.8.3`, `ema-pytorch` and `einops` without
their dependencies, the light ones (accelerate, pillow, tqdm) normally, and two empty stand-in modules for
`torchvision` and `pytorch_fid`, which 1.8.3 imports only for its Trainer and FID evaluation (never on the
scoring path). In that environment the reference loop runs as BTD's notebook does: one patch at a time, fp32,
`p_sample(x, t=0)`, mean((x − x₋₁)²), after a warm-up, on ≥ 64 real lung1 patches, at the `btd` preset
(dim 32, dim_mults 1,2,4,8, 96², seeded random weights). Its weights are then loaded strictly into our
`build_diffusion("btd")` and our batched scorer is timed in fp32 and bf16 on the same patches; the scores are
compared. Prints and saves benchmarks/results/btd_reference_timing.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
STUB_TORCHVISION = {"torchvision/__init__.py": "from . import transforms, utils\n",
                    "torchvision/transforms.py": "", "torchvision/utils.py": ""}
STUB_FID = {"pytorch_fid/__init__.py": "", "pytorch_fid/inception.py": "class InceptionV3:\n    pass\n",
            "pytorch_fid/fid_score.py": "def calculate_frechet_distance(*a, **k):\n    raise NotImplementedError\n"}

REFERENCE_LOOP = r'''
import json, sys, time
import numpy as np, torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
import denoising_diffusion_pytorch.version as v
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
unet = Unet(dim=32, dim_mults=(1, 2, 4, 8), channels=1)
diffusion = GaussianDiffusion(unet, image_size=96, timesteps=1000, sampling_timesteps=250,
                              objective="pred_noise", beta_schedule="sigmoid").eval()
patches = np.load(sys.argv[1])
def score(patch):
    x = diffusion.normalize(torch.from_numpy(patch[None]))
    with torch.no_grad():
        x_prev, _ = diffusion.p_sample(x, 0)
    return float(((x - x_prev) ** 2).mean())
for p in patches[:8]:
    score(p)
start = time.perf_counter()
scores = [score(p) for p in patches]
seconds = time.perf_counter() - start
torch.save(diffusion.state_dict(), sys.argv[2])
print(json.dumps({"version": v.__version__, "patches": len(patches), "seconds": seconds, "scores": scores}))
'''


def make_environment(folder: Path) -> Path:
    python = folder / "bin" / "python"
    if (folder / ".ready").exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["--no-deps", "denoising-diffusion-pytorch==1.8.3", "ema-pytorch", "einops"], check=True)
    subprocess.run(pip + ["accelerate", "pillow", "tqdm", "packaging"], check=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name, text in {**STUB_TORCHVISION, **STUB_FID}.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    (folder / ".ready").write_text("")
    return python


def lung_patches(n: int) -> np.ndarray:
    from medfake.data.samples import sample_path
    from medfake.detect.patches import lung_mask_or_none, patches_at, to_unit
    from medfake.io import load_scan

    scan = load_scan(sample_path("lung1"))
    mask = lung_mask_or_none(scan)
    points = np.argwhere(mask[:, 48:-48:4, 48:-48:4]) * [1, 4, 4] + [0, 48, 48]
    pick = points[np.random.default_rng(0).choice(len(points), n, replace=False)]
    return patches_at(to_unit(scan), pick, 96)


def ours(weights: Path, patches: np.ndarray, reference: np.ndarray, threads: int) -> dict:
    from medfake.detect.btd import BTDScorer, ScoreOptions
    from medfake.nn.ddpm import build_diffusion

    torch.set_num_threads(threads)
    diffusion = build_diffusion("btd", image_size=96).eval()
    diffusion.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    out = {}
    for precision in ("fp32", "bf16"):
        scorer = BTDScorer(diffusion, ScoreOptions(precision=precision, batch_size=8), device="cpu")
        scorer.scores(patches[:8])
        start = time.perf_counter()
        scores = scorer.scores(patches)
        seconds = time.perf_counter() - start
        rel = np.abs(scores - reference) / np.abs(reference)
        out[precision] = {"patches_per_second": len(patches) / seconds, "max_relative_difference": float(rel.max()),
                          "mean_relative_difference": float(rel.mean())}
    return out


def main(n: int, threads: int, venv: Path) -> dict:
    from medfake.runinfo import run_record

    python = make_environment(venv)
    patches = lung_patches(n)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "patches.npy", patches)
        (Path(tmp) / "loop.py").write_text(REFERENCE_LOOP)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run([str(python), str(Path(tmp) / "loop.py"), str(Path(tmp) / "patches.npy"),
                              str(Path(tmp) / "weights.pt"), str(threads)], check=True, capture_output=True,
                             text=True, env=env)
        reference = json.loads(run.stdout.strip().splitlines()[-1])
        result = ours(Path(tmp) / "weights.pt", patches, np.asarray(reference["scores"]), threads)
    return {"reference_package": f"denoising-diffusion-pytorch {reference['version']} (throwaway venv, stubs for "
                                 "torchvision and pytorch_fid, which the scoring path never calls)",
            "preset": "btd", "patch": 96, "threads": threads, "patches": n, "warm_up_patches": 8,
            "load_average_1min": os.getloadavg()[0],
            "reference_loop_fp32_patches_per_second": n / reference["seconds"],
            "ours": result,
            "speedup_fp32": result["fp32"]["patches_per_second"] * reference["seconds"] / n,
            "speedup_bf16": result["bf16"]["patches_per_second"] * reference["seconds"] / n,
            "run": run_record({"n": n, "threads": threads}, 0)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "medfake-ddpm183")
    args = parser.parse_args()
    result = main(args.patches, args.threads, args.venv)
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "btd_reference_timing.json").write_text(text)
