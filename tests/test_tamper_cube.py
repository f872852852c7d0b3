"""Cube resampling (exact size at any spacing, centred on the location), 3D blending, noise of this scan,
and pasting an unchanged cube (bit-identical outside the blend, within noise inside)."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.scan import Scan
from medfake.tamper.blend import radial_weight
from medfake.scan import overlap
from medfake.tamper.cube import IsoGrid, block_shape, distance_mm, from_iso, scan_block, to_iso
from medfake.tamper.config import GanTrainConfig
from medfake.tamper.model import TamperModel
from medfake.stats import robust_sigma
from medfake.tamper.noise import estimate_noise, flat_parenchyma, noise_level, residual, tone_down
from medfake.tamper.pipeline import Context, Site, blend_radii, ctgan_site

NODULE = (33, 359, 218)
HEALTHY = (23, 358, 118)  # right lung parenchyma of lung1, 2 cm from vessels


@pytest.mark.parametrize("spacing", [(5.0, 0.5703, 0.5703), (3.0, 0.7, 0.7), (2.5, 0.9, 0.9), (1.25, 0.68, 0.68)])
def test_cube_round_trip_is_exact_in_size_and_close_in_values(lung1, spacing):
    scan = Scan(lung1.voxels, spacing)  # lung1's voxels relabelled with another spacing
    grid = IsoGrid(NODULE, 32, 1.0)
    cube = to_iso(scan, grid)
    assert cube.shape == (32, 32, 32)  # CT-GAN: 3.0 mm -> 33, 5.0 mm -> 30 and a crash
    block = scan_block(scan, grid)
    back = from_iso(cube, grid, block)
    original = block.voxels.astype(np.float32)
    assert back.shape == original.shape
    assert np.median(np.abs(back - original)) < 12.0  # HU; the 1 mm grid cannot hold finer in-plane detail
    assert abs(float(back.mean() - original.mean())) < 5.0


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 0.7), (1.0, 1.0, 1.0), (7.0, 1.3, 1.1), (0.5, 0.5, 0.5)])
def test_cube_size_is_exact_at_any_spacing(lung1, spacing):
    scan = Scan(lung1.voxels, spacing)
    for size in (24, 32, 48):
        grid = IsoGrid(NODULE, size, 1.0)
        assert to_iso(scan, grid).shape == (size,) * 3
        block = scan_block(scan, grid)
        assert from_iso(np.zeros((size,) * 3, np.float32), grid, block).shape == block.shape


def test_grid_is_centred_on_the_location_at_anisotropic_spacing():
    spacing = (3.0, 0.7, 0.7)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip((40, 120, 120), spacing)], indexing="ij")
    centre = np.array([20, 61, 57]) * spacing
    blob = np.exp(-((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) / (2 * 4.0 ** 2))
    scan = Scan((blob * 1000 - 1000).astype(np.float32), spacing)
    cube = to_iso(scan, IsoGrid((20, 61, 57), 32, 1.0)) + 1000
    com = np.array([np.sum(cube * g) / cube.sum() for g in np.indices(cube.shape)])
    np.testing.assert_allclose(com, [15.5, 15.5, 15.5], atol=0.05)  # the world point sits at the grid centre


def test_cubes_reaching_outside_the_scan_are_padded_with_air(lung1):
    cube = to_iso(lung1, IsoGrid((0, 256, 256), 32, 1.0))
    assert cube.shape == (32, 32, 32)
    assert cube[:5].max() < -950.0  # >10 mm beyond the first slice: air (spline ringing aside), not 0 HU


def test_blend_weight_falls_off_in_mm_along_every_axis(lung1):
    grid = IsoGrid(NODULE, 32, 1.0)
    block = scan_block(lung1, grid)
    weight = radial_weight(distance_mm(block), 10.0, 15.0)
    cz, cy, cx = np.asarray(block.shape) // 2
    assert weight[cz, cy, cx] == 1.0
    # 10 mm along z (2 slices of 5 mm) and along y (10 mm / 0.5703) get the same weight: full
    assert weight[cz + 2, cy, cx] == pytest.approx(1.0)
    y12 = int(round(12.5 / 0.5703))
    assert weight[cz, cy + y12, cx] == pytest.approx(0.5, abs=0.05)  # halfway through the fall-off
    assert weight[cz + 3, cy, cx] == 0.0  # 15 mm along z: zero (CT-GAN had no fall-off along z)
    assert weight[0, 0, 0] == 0.0


def test_noise_model_matches_this_scans_parenchyma(lung1, lung1_lungs):
    from medfake.lungmask import lung_parenchyma

    parenchyma = lung_parenchyma(lung1, lung1_lungs)
    rng = np.random.default_rng(0)
    shape = block_shape(lung1.spacing, IsoGrid(HEALTHY, 32, 1.0))
    model = estimate_noise(lung1, parenchyma, shape, rng, avoid_zyx=[HEALTHY])
    assert model.patches >= 6 and 10.0 < model.sigma < 80.0
    fresh = model.sample(rng)
    assert fresh.shape == shape
    assert robust_sigma(residual(fresh, lung1.spacing)) == pytest.approx(model.sigma, rel=0.25)
    # texture: neighbouring in-plane pixels are correlated as in the scan (0.57 mm pixels, smooth kernel)
    block = residual(lung1.cut_cube(HEALTHY, shape).astype(np.float32), lung1.spacing)
    def lag1(v):
        return np.corrcoef(v[:, :, :-1].ravel(), v[:, :, 1:].ravel())[0, 1]
    assert lag1(fresh) == pytest.approx(lag1(block), abs=0.15)


def placed(scan, block):
    """(scan slices, block slices) where a crop of `scan` lies inside it."""
    start = scan.offset_of(block)
    return overlap(start, start + np.asarray(block.shape), scan.shape)


class UnchangedCube(TamperModel):
    """A 'generator' that hands the input cube back: isolates the resampling, blending and noise path."""

    def inpaint_views(self, cube_hu, n_views):
        return np.stack([self.fake(cube_hu)] * n_views)

    def fake(self, cube_hu):
        return cube_hu


class NoisyCube(UnchangedCube):
    """Hands back the cube with three times lung1's noise added (a generator with high-frequency artefacts)."""

    def fake(self, cube_hu):
        return cube_hu + np.random.default_rng(1).normal(0.0, 60.0, cube_hu.shape).astype(np.float32)


class SmoothCube(UnchangedCube):
    """Hands back a blurred cube (a generator that regresses to the mean)."""

    def fake(self, cube_hu):
        from scipy import ndimage

        return ndimage.gaussian_filter(cube_hu, 2.0)


def test_pasting_an_unchanged_cube_touches_nothing_outside_the_blend(lung1, lung1_lungs):
    from medfake.lungmask import lung_parenchyma

    config = GanTrainConfig(action="remove")
    model = UnchangedCube(config, None, None, "unchanged")
    block = scan_block(lung1, IsoGrid(HEALTHY, 32, 1.0))
    rng = np.random.default_rng(0)
    noise = estimate_noise(lung1, lung_parenchyma(lung1, lung1_lungs), block.shape, rng)
    out = ctgan_site(lung1, Site(HEALTHY), "remove", model, Context(noise, rng, blend_radii(model)))
    diff = out - lung1.voxels
    weight = np.zeros(lung1.shape, bool)
    scan_sl, block_sl = placed(lung1, block)
    weight[scan_sl] = radial_weight(distance_mm(block), *blend_radii(model))[block_sl] > 0
    assert weight.sum() > 1000
    assert np.all(diff[~weight] == 0)  # bit-identical outside the blend
    inside = diff[weight]
    assert abs(float(inside.mean())) < 0.15 * noise.sigma  # no bias
    assert float(np.abs(inside).std()) < 1.0 * noise.sigma  # changes stay within the scan's noise


@pytest.fixture(scope="module")
def lung1_noise(lung1, lung1_lungs):
    from medfake.lungmask import lung_parenchyma

    shape = block_shape(lung1.spacing, IsoGrid(HEALTHY, 32, 1.0))
    return estimate_noise(lung1, lung_parenchyma(lung1, lung1_lungs), shape, np.random.default_rng(0))


@pytest.mark.parametrize("fake", [NoisyCube, SmoothCube, UnchangedCube])
def test_in_painted_noise_matches_what_was_there(lung1, lung1_noise, fake):
    """Whether the generator adds noise, blurs or hands the input back, the in-painted region ends with the
    noise level the scan had at those voxels (flat parenchyma, same voxels before and after)."""
    model = fake(GanTrainConfig(action="remove"), None, None, "fake")
    rng = np.random.default_rng(0)
    out = ctgan_site(lung1, Site(HEALTHY), "remove", model, Context(lung1_noise, rng, blend_radii(model)))
    block = scan_block(lung1, IsoGrid(HEALTHY, 32, 1.0))
    scan_sl, block_sl = placed(lung1, block)
    before = np.asarray(lung1.voxels[scan_sl], dtype=np.float32)
    after = out[scan_sl]
    inside = radial_weight(distance_mm(block), *blend_radii(model))[block_sl] >= 0.99
    flat = flat_parenchyma(before, lung1.spacing) & flat_parenchyma(after, lung1.spacing) & inside
    level_before = noise_level(before, lung1.spacing, flat)
    level_fake = noise_level(model.fake(before), lung1.spacing, flat)
    assert level_fake / level_before > 2.5 or level_fake / level_before < 0.5 or fake is UnchangedCube
    assert noise_level(after, lung1.spacing, flat) / level_before == pytest.approx(1.0, abs=0.1)


def test_toning_down_noise_keeps_a_nodule(lung1, lung1_label):
    """Scaling the high-pass part down acts on air-filled lung only: lung1's nodule keeps its mean HU."""
    sl = tuple(slice(c - h, c + h) for c, h in zip(NODULE, (6, 30, 30)))
    block = np.asarray(lung1.voxels[sl], dtype=np.float32)
    nodule = np.asarray(lung1_label.voxels[sl]) > 0
    toned = tone_down(block, lung1.spacing, 0.5)
    flat = flat_parenchyma(block, lung1.spacing)
    assert 0.5 < noise_level(toned, lung1.spacing, flat) / noise_level(block, lung1.spacing, flat) < 0.75
    assert abs(float(toned[nodule].mean() - block[nodule].mean())) < 10.0  # HU; the nodule is ~ -60 HU
    assert abs(float(toned[nodule].std() / block[nodule].std()) - 1.0) < 0.05


def test_noise_without_a_lung_mask_agrees_with_the_lung_mask(lung1, lung1_noise):
    """User locations skip lung segmentation: lung-like voxels near the location give the same noise level."""
    from medfake.tamper.pipeline import _lung_like_near

    near = _lung_like_near(lung1, [Site(HEALTHY)])
    assert near[HEALTHY[0]].any() and not near[0].any()  # only the slices within 40 mm (3 mm slices)
    model = estimate_noise(lung1, near, lung1_noise.shape, np.random.default_rng(0), avoid_zyx=[HEALTHY])
    assert model.patches >= 6
    assert model.sigma == pytest.approx(lung1_noise.sigma, rel=0.2)

