"""AUC, DeLong variance and CI against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.stats import auc_score, delong_auc, delong_paired_test, roc_curve, structural_components

Z95 = 1.959963984540054


def test_delong_small_case_by_hand():
    # labels 0,0,1,1 with scores 0.1, 0.4, 0.35, 0.8: positives {0.35, 0.8}, negatives {0.1, 0.4}
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    v10, v01 = structural_components(np.array([0.35, 0.8]), np.array([0.1, 0.4]))
    # V10(0.35) = (1 + 0)/2, V10(0.8) = (1 + 1)/2; V01(0.1) = (1 + 1)/2, V01(0.4) = (0 + 1)/2
    assert v10.tolist() == [0.5, 1.0] and v01.tolist() == [1.0, 0.5]
    result = delong_auc(labels, scores)
    assert result.auc == 0.75
    s10 = ((0.5 - 0.75) ** 2 + (1.0 - 0.75) ** 2) / 1  # sample variance of V10 = 0.125
    s01 = ((1.0 - 0.75) ** 2 + (0.5 - 0.75) ** 2) / 1
    assert result.variance == pytest.approx(s10 / 2 + s01 / 2) == pytest.approx(0.125)
    assert result.low == pytest.approx(0.75 - Z95 * np.sqrt(0.125))  # 0.05704
    assert result.high == 1.0  # 0.75 + 0.693 clipped


def test_delong_with_ties_by_hand():
    positives, negatives = [0.9, 0.5, 0.5], [0.5, 0.3, 0.2, 0.6]
    labels = [1, 1, 1, 0, 0, 0, 0]
    result = delong_auc(labels, positives + negatives)
    v10 = [1.0, (1 + 1 + 0.5) / 4, (1 + 1 + 0.5) / 4]  # a tie counts one half
    v01 = [(1 + 0.5 + 0.5) / 3, 1.0, 1.0, 1 / 3]
    auc = np.mean(v10)
    assert auc == 0.75 and result.auc == pytest.approx(auc)
    s10 = sum((v - auc) ** 2 for v in v10) / 2  # 0.046875
    s01 = sum((v - np.mean(v01)) ** 2 for v in v01) / 3  # 0.101852
    assert s10 == pytest.approx(0.046875) and s01 == pytest.approx(0.1018518518)
    assert result.variance == pytest.approx(s10 / 3 + s01 / 4)
    assert (result.low, result.high) == pytest.approx((auc - Z95 * np.sqrt(s10 / 3 + s01 / 4), 1.0))


def test_auc_matches_pairwise_definition_and_roc_area():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=60), 1)  # rounding creates ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc_score(labels, scores) == pytest.approx(pairwise)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise)


def test_paired_test_detects_a_better_detector():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(40), np.zeros(40)]
    good = labels * 2 + rng.normal(size=80)
    bad = labels * 0.2 + rng.normal(size=80)
    diff, p = delong_paired_test(labels, good, bad)
    assert diff > 0.3 and p < 0.01
    assert delong_paired_test(labels, good, good) == (0.0, 1.0)


def test_needs_both_classes():
    with pytest.raises(ValueError):
        delong_auc([1, 1], [0.2, 0.3])
