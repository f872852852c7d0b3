"""Self-referenced local statistics (training-free) and the content-only baseline."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medfake.detect.selfref import SelfRefConfig, dense_fraction, score_sites
from medfake.scan import Scan
from medfake.stats import auc_score
from medfake.tamper.pipeline import tamper_scan

NODULE = (33, 359, 218)


def auc(positives, negatives) -> float:
    return auc_score(np.r_[np.ones(len(positives)), np.zeros(len(negatives))], np.r_[positives, negatives])


def parenchyma_with_nodules(seed: int = 0):
    """Flat lung (−850 HU, scanner-like noise σ ≈ 25 HU) with 12 identical 5 mm nodules; at 6 of them the
    noise inside 10 mm was replaced by a smoothed, level-matched version (what a careless in-painter leaves)."""
    rng = np.random.default_rng(seed)
    spacing = (2.0, 0.7, 0.7)
    noise = ndimage.gaussian_filter(rng.standard_normal((24, 330, 330)), (0.6, 0.8, 0.8))
    voxels = -850.0 + 25.0 * noise / noise.std()
    smooth = ndimage.gaussian_filter(voxels, (0, 1.5, 1.5))
    centres = [(12, 45 + 80 * (i // 4), 45 + 80 * (i % 4)) for i in range(12)]
    zz, yy, xx = np.meshgrid(*(np.arange(-20, 21) * s for s in spacing), indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    for i, (z, y, x) in enumerate(centres):
        box = np.s_[max(z - 20, 0): z + 21, y - 20: y + 21, x - 20: x + 21]
        local = r[20 - (z - box[0].start):][: voxels[box].shape[0]]
        if i % 2:  # tampered: smoother texture, same level
            near = local <= 10.0
            part = voxels[box]
            calm = smooth[box][near] + 850.0
            part[near] = -850.0 + 0.6 * calm * (part[near] + 850.0).std() / calm.std()
        voxels[box][local <= 5.0] = 30.0
    scan = Scan(voxels.astype(np.float32), spacing)
    labels = np.array([i % 2 for i in range(12)])
    return scan, centres, labels


def test_content_baseline_sits_at_chance_when_content_matches_and_selfref_does_not():
    scan, centres, tampered = parenchyma_with_nodules()
    lung = np.ones(scan.shape, bool)
    content = dense_fraction(scan, centres)
    assert np.ptp(content) < 1e-9 and content[0] > 0.9  # every site holds the same nodule
    assert auc(content[tampered == 1], content[tampered == 0]) == pytest.approx(0.5)
    scores = score_sites(scan, centres, lung=lung)
    assert auc(scores[tampered == 1], scores[tampered == 0]) >= 0.95


@pytest.fixture(scope="module")
def lung1_tampered(lung1, lung1_lungs):
    lung = lung1_lungs
    sites = [(25, 382, 118), (8, 402, 146), (15, 390, 122), (10, 326, 154), (12, 450, 154), (3, 386, 102)]
    injected, _ = tamper_scan(lung1, sites, "inject", method="copy-move", rng=np.random.default_rng(0))
    removed, _ = tamper_scan(lung1, [NODULE], "remove", method="inpaint", rng=np.random.default_rng(0))
    return lung, sites, injected, removed


def test_blatant_fakes_on_lung1_score_above_genuine_sites(lung1, lung1_tampered):
    lung, sites, injected, removed = lung1_tampered
    fake = score_sites(injected, sites, lung=lung)
    before = score_sites(lung1, sites, lung=lung)
    genuine_nodule = score_sites(lung1, [NODULE], lung=lung)[0]
    assert auc(fake, np.r_[before, genuine_nodule]) >= 0.85
    gone = score_sites(removed, [NODULE], lung=lung)[0]
    assert gone > 5 * genuine_nodule and gone > before.max()


def test_scores_are_deterministic_and_config_sensitive(lung1, lung1_tampered):
    lung, sites, injected, _ = lung1_tampered
    a = score_sites(injected, sites[:2], lung=lung)
    assert np.array_equal(a, score_sites(injected, sites[:2], lung=lung))
    other = score_sites(injected, sites[:2], SelfRefConfig(seed=1), lung=lung)
    assert not np.array_equal(a, other)  # another set of reference positions
    assert np.all(np.abs(np.log(other / a)) < 1.0)  # ... but the same verdict
