"""The CPU fast path of BTD scoring (Winograd 3×3 and matmul 1×1 convolutions, data-parallel workers) gives
eager's numbers on real lung1 patches, at the published `btd` width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfake.detect.btd import BTDScorer, ScoreOptions
from medfake.detect.patches import lung_mask_or_none, patches_at, to_unit
from medfake.nn.ddpm import build_diffusion
from medfake.nn.fast import FoldedLinearAttention, PointwiseConv2d, WinogradConv2d, fast_unet


@pytest.fixture(scope="module")
def lung_patches(lung1):
    mask = lung_mask_or_none(lung1)
    points = np.argwhere(mask[:, 48:-48:8, 48:-48:8]) * [1, 8, 8] + [0, 48, 48]
    pick = points[np.random.default_rng(0).choice(len(points), 6, replace=False)]
    return patches_at(to_unit(lung1), pick, 96)


@pytest.fixture(scope="module")
def diffusion():
    torch.manual_seed(0)
    return build_diffusion("btd", image_size=96).eval()


def relative_error(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@torch.inference_mode()
def test_winograd_and_pointwise_convolutions_equal_direct_on_lung_activations(lung_patches, diffusion):
    x = diffusion.model.init_conv(torch.from_numpy(lung_patches) * 2 - 1)  # real activations, 32 channels, 96²
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1)
    fast = WinogradConv2d(conv)
    assert relative_error(fast.winograd(x), conv(x)) < 1e-5  # forced at 96² (4×4 tiles, borders included)
    small = F.avg_pool2d(x, 4)  # 24²: Winograd chosen; 96² with 32 channels and an odd side: direct
    assert fast.uses_winograd(small) and not fast.uses_winograd(x) and not fast.uses_winograd(x[..., :30, :30])
    assert relative_error(fast(small), conv(small)) < 1e-5
    assert torch.equal(fast(x[..., :30, :30]), conv(x[..., :30, :30]))
    pointwise = torch.nn.Conv2d(32, 16, 1)
    assert relative_error(PointwiseConv2d(pointwise)(x), pointwise(x)) < 1e-5
    # a wrong transform would not pass: Winograd with the filter flipped is off by order one
    flipped = WinogradConv2d(torch.nn.Conv2d(32, 48, 3, padding=1).requires_grad_(False))
    flipped.u.copy_(fast.u.flip(0))
    flipped.bias.copy_(conv.bias)
    assert relative_error(flipped.winograd(x), conv(x)) > 0.1


@torch.inference_mode()
def test_fast_unet_predicts_eagers_noise(lung_patches, diffusion):
    x = torch.from_numpy(lung_patches[:4]) * 2 - 1
    fast = fast_unet(diffusion.model)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 43  # every 3×3 convolution
    assert sum(isinstance(m, FoldedLinearAttention) for m in fast.modules()) == 6  # 96², 48², 24², down and up
    for m in fast.modules():  # several chunks per image at 96², so the running maximum is exercised
        if isinstance(m, FoldedLinearAttention):
            m.chunk_values = 1 << 15
    for t in (0, 500):
        steps = torch.full((len(x),), t)
        assert relative_error(fast(x, steps), diffusion.model(x, steps)) < 1e-4


def test_fast_scorer_equals_eager_on_lung1_patches(lung_patches, diffusion):
    threads = torch.get_num_threads()
    eager = BTDScorer(diffusion, ScoreOptions(fast=False, cpu_workers=1, batch_size=4))
    fast = BTDScorer(diffusion, ScoreOptions(fast=True, cpu_workers=2, batch_size=2))  # 3 batches on 2 workers
    assert sum(isinstance(m, WinogradConv2d) for m in fast.net.modules()) == 43
    assert not any(isinstance(m, WinogradConv2d) for m in eager.net.modules())
    maps, fast_maps = eager.anomaly_maps(lung_patches), fast.anomaly_maps(lung_patches)
    assert relative_error(fast_maps, maps) < 1e-4
    scores = eager.scores(lung_patches)
    assert fast.scores(lung_patches) == pytest.approx(scores, rel=1e-4)
    assert len(set(np.round(scores, 8))) == len(scores)  # distinct patches: a reordering by the workers shows
    assert torch.get_num_threads() == threads  # the workers' one-thread setting stays in the workers
