"""Judges that share no code with the tamperer or the CAD: core-vs-shell nodule rule, NPS, seam profile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medfake.judges import core_shell, detrended_slices, noise_power, seam_profile, spectral_distance
from medfake.lungmask import lung_mask
from medfake.scan import Scan
from medfake.tamper.pipeline import tamper_scan

NODULE = (33, 359, 218)


def test_core_shell_sees_lung1_nodule_and_its_removal(lung1):
    verdict = core_shell(lung1, NODULE)
    assert verdict.present and verdict.core_hu > -100 and verdict.shell_hu < -700
    assert 10 < verdict.length_mm < 30  # lung1's nodule is 13.8 mm across (equivalent diameter)
    removed, _ = tamper_scan(lung1, [NODULE], "remove", method="inpaint", rng=np.random.default_rng(0))
    assert not core_shell(removed, NODULE).present


def test_core_shell_false_positive_rate_at_random_lung_sites(lung1):
    lung = lung_mask(lung1)
    points = np.argwhere(lung[:, ::8, ::8]) * [1, 8, 8]
    far = np.linalg.norm((points - NODULE) * np.asarray(lung1.spacing), axis=1) > 25
    pick = points[far][np.random.default_rng(1).choice(far.sum(), 150, replace=False)]
    assert np.mean([core_shell(lung1, p).present for p in pick]) <= 0.03


def test_core_shell_rejects_a_vessel_and_accepts_a_ball():
    voxels = np.full((70, 80, 80), -850.0, np.float32)
    voxels[:, 38:42, 38:42] = 40.0  # a 4 mm vessel along z through the centre
    zz, yy, xx = np.mgrid[:70, :80, :80]
    voxels[(zz - 35) ** 2 + (yy - 40) ** 2 + (xx - 20) ** 2 <= 16] = 40.0  # an 8 mm ball
    scan = Scan(voxels, (1.0, 1.0, 1.0))
    assert not core_shell(scan, (35, 40, 40)).present
    ball = core_shell(scan, (35, 40, 20))
    assert ball.present and ball.length_mm == pytest.approx(8.0, abs=1.5)


def test_core_shell_sees_a_ball_touching_a_thinner_vessel_but_not_a_thick_vessel():
    voxels = np.full((70, 80, 80), -850.0, np.float32)
    zz, yy, xx = np.mgrid[:70, :80, :80]
    voxels[:, 34:37, 45:48] = 40.0  # a 3 mm vessel along z, touching the ball's side
    voxels[(zz - 35) ** 2 + (yy - 35) ** 2 + (xx - 40) ** 2 <= 25] = 40.0  # a 10 mm ball
    voxels[:, 60:70, 5:15] = 40.0  # a 10 mm vessel along z
    scan = Scan(voxels, (1.0, 1.0, 1.0))
    attached = core_shell(scan, (35, 35, 40))
    assert attached.present and attached.length_mm < 15
    assert not core_shell(scan, (35, 65, 10)).present and core_shell(scan, (35, 65, 10)).length_mm == 50.0


def test_noise_power_tells_smoothed_noise_from_a_fresh_draw():
    rng = np.random.default_rng(0)
    a, b = (Scan(rng.normal(-850, 25, (5, 64, 64)).astype(np.float32), (2.0, 0.7, 0.7)) for _ in range(2))
    smooth = a.with_voxels(ndimage.gaussian_filter(a.voxels, (0, 1.2, 1.2)) * 1.0)
    centre = (2, 32, 32)
    same = spectral_distance(noise_power(a, centre), noise_power(b, centre))
    assert same < 0.3 and spectral_distance(noise_power(a, centre), noise_power(smooth, centre)) > 3 * same
    white = noise_power(a, centre)
    assert np.mean(white) == pytest.approx(625 * 0.7 * 0.7, rel=0.35)  # white noise: NPS = σ² · pixel area


def test_detrend_removes_a_quadratic_surface_exactly():
    yy, xx = np.mgrid[:20, :30].astype(float)
    plane = np.stack([3 + 0.5 * yy - 0.2 * xx + 0.01 * yy * xx + 0.03 * xx ** 2] * 2)
    assert np.abs(detrended_slices(plane)).max() < 1e-9


def test_seam_profile_flags_a_hard_paste_and_not_an_untouched_scan(lung1):
    assert np.allclose(seam_profile(lung1, lung1, NODULE, [6, 10, 14]), 1.0)
    pasted = lung1.voxels.astype(np.float32).copy()
    box = np.s_[31:36, 359 - 17: 359 + 18, 218 - 17: 218 + 18]  # a 20 mm in-plane block shifted by 120 HU
    pasted[box] += 120.0
    hard = lung1.with_voxels(pasted)
    profile = seam_profile(lung1, hard, NODULE, [4, 12, 14])  # shells through the block's faces: 12, 14 mm
    assert profile[0] == pytest.approx(1.0, abs=0.05) and max(profile[1:]) > 1.5
