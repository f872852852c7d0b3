"""The detectors' settings, with their defaults in one place (the CLI reads its defaults from here).

This module imports neither torch nor monai, so `medfake --help` and the CLI's option defaults stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from medfake.errors import MedfakeError

# the registry's names (detectors.DETECTORS)
METHODS = ("btd", "btd-forensic", "dae", "noise", "supervised", "supervised-residual", "selfref", "residual")
# `medfake train detector` without --method: the best detector on benchmarks/detect_quality.py (README)
BEST_METHOD = "residual"
MODALITIES = ("ct", "mri")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DetectorTrainConfig:
    method: str = BEST_METHOD
    modality: str = "ct"
    preset: str = "cpu-small"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4  # BTD used 8e-6 for 700k steps; short CPU runs need a larger step
    seed: int = 0
    save_every: int = 500  # checkpoint and samples.png interval (steps)
    max_minutes: float | None = None  # stop earlier on wall-clock time (the step reached is saved)
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 100  # ema-pytorch's update_after_step: copy the weights until then
    grad_clip: float = 1.0
    in_lung: bool = True
    exclude_radius_mm: float = 20.0
    samples: int = 8
    sample_steps: int = 50
    noise_patches: int = 400  # patches used to fit the noise statistics
    patch_size: int | None = None  # default: 96 CT, 128 MRI (64 for the supervised classifier)
    context: int | None = None  # 2.5-D neighbouring slices per side; default: the method's (residual 1)

    def __post_init__(self):
        if self.method not in METHODS:
            raise MedfakeError(f"unknown detector method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.modality not in MODALITIES:
            raise MedfakeError(f"modality must be ct or mri, not '{self.modality}'")


@dataclass
class ScoreOptions:
    t: int = 0
    clamp: bool = True
    region: str = "whole"  # whole | centre
    centre: int = 32  # side of the centre region in pixels
    reduce: str = "mean"  # mean | topk
    topk: float = 0.05  # fraction of pixels averaged by `topk`
    precision: str = "fp32"  # fp32 | bf16 | fp16
    batch_size: int = 4  # per forward pass (CPU: per worker); small batches keep activations in the caches
    # CPU, fp32: Winograd F(4×4, 3×3) and matmul 1×1 convolutions (nn/fast.py); scores within ~1e-5 relative
    fast: bool = True
    # CPU: batches scored by this many single-threaded workers at once (None: one per torch thread); on a few
    # shared cores this beats splitting every operation over the threads (benchmarks/detect_throughput.py)
    cpu_workers: int | None = None

    def __post_init__(self):
        if self.region not in ("whole", "centre"):
            raise ValueError(f"region must be whole or centre, not {self.region}")
        if self.reduce not in ("mean", "topk"):
            raise ValueError(f"reduce must be mean or topk, not {self.reduce}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision}")
        if self.cpu_workers is not None and self.cpu_workers < 1:
            raise ValueError(f"cpu_workers must be at least 1, not {self.cpu_workers}")


@dataclass
class ScreenOptions:
    stride: int | None = None  # tile stride (default: half a patch)
    slice_step: int = 1  # score every n-th slice
    smooth_mm: float = 8.0  # FWHM of the in-plane smoothing of the anomaly map
    top: int = 5  # findings reported
    separation_mm: float = 20.0  # minimum distance between findings
    batch_tiles: int = 64
    step_mm: float = 2.0  # scan-level detectors: grid of their anomaly map (in-plane)
