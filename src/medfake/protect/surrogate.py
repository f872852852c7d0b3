"""The tamper pipeline (`medfake.tamper.pipeline.ctgan_site`) as a differentiable torch function of the scan.

Every step of the numpy path is rebuilt so gradients reach the scan voxels:
- the isotropic resampling (`to_iso`, `from_iso`: cubic B-spline, `mode='nearest'`) is separable on the
  axis-aligned grid the tamperer uses, so each axis is an exact 1-D matrix, obtained by running scipy's own
  spline prefilter + evaluation on unit vectors; the clip to the source's range is a clamp;
- the equalizer is the same piecewise-linear map (torch `searchsorted` over the fitted edges and cdf);
- the generator is the tamper model's own module (eval mode), through the same in-plane flip views;
- change resampled back, `max` for injection, the generator's excess noise toned down (Gaussian smoothing,
  also exact 1-D matrices), radial blend.
What stays random (the attacker's fresh noise, drawn from the scan's noise model, and its final `settle`
round) is an additive term with no gradient: `tamper_block(noise=…)` adds a draw, so the optimiser takes
the expectation over it. `tests/test_protect.py` checks this function against `ctgan_site` on lung1.

This is the ONLY module of `medfake.protect` that imports `medfake.tamper`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from medfake.scan import Scan, cube_bounds, overlap
from medfake.tamper.blend import noise_gain, radial_weight
from medfake.tamper.config import ACTIONS, DEFAULT_VIEWS
from medfake.tamper.cube import PLAIN_VIEW, IsoGrid, block_shape, offsets_mm, region_shape, scan_block
from medfake.tamper.model import FLIP_VIEWS, TamperModel, hole_slices, load_tamper_model, model_folder
from medfake.tamper.noise import (DETREND_MM, ParenchymaNoise, estimate_noise, inpainted_flat, lung_likeness,
                                  match_ratio, noise_ratio, site_sigma)
from medfake.tamper.pipeline import Context, blend_radii, ctgan_site, tamper_scan
from medfake.tamper.pipeline import Site as TamperSite

__all__ = ["ACTIONS", "DEFAULT_VIEWS", "Context", "Surrogate", "TamperModel", "TamperSite", "ctgan_site",
           "estimate_noise", "load_tamper_model", "model_folder", "tamper_scan"]


# --- exact 1-D operators ----------------------------------------------------------------------------
@lru_cache(maxsize=256)
def spline_matrix(n_source: int, coords: tuple[float, ...], prefilter: bool = True) -> np.ndarray:
    """(len(coords), n_source): cubic B-spline interpolation (scipy, mode 'nearest') of a length-n signal."""
    out = np.zeros((len(coords), n_source))
    points = np.asarray(coords, dtype=np.float64)[None]
    for i in range(n_source):
        e = np.zeros(n_source)
        e[i] = 1.0
        c = ndimage.spline_filter1d(e, 3, mode="nearest") if prefilter else e
        out[:, i] = ndimage.map_coordinates(c, points, order=3, mode="nearest", prefilter=False)
    return out


@lru_cache(maxsize=64)
def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n): `ndimage.gaussian_filter1d(·, sigma, mode='nearest')` as a matrix."""
    return ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="nearest")


def separable(volume: torch.Tensor, mats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Apply one matrix per axis to the last three axes of `volume`."""
    mz, my, mx = mats
    out = torch.einsum("az,...zyx->...ayx", mz, volume)
    out = torch.einsum("by,...ayx->...abx", my, out)
    return torch.einsum("cx,...abx->...abc", mx, out)


def gaussian(volume: torch.Tensor, sigma_mm: float, spacing) -> torch.Tensor:
    mats = tuple(torch.from_numpy(gaussian_matrix(n, float(sigma_mm / s))).to(volume)
                 for n, s in zip(volume.shape[-3:], spacing))
    return separable(volume, mats)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """`np.interp` in torch (clamped at the ends), differentiable in x."""
    xc = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, xc.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) / (x1 - x0) * (xc - x0)


# --- per-site geometry --------------------------------------------------------------------------------
@dataclass
class SiteGeometry:
    """What `ctgan_site` computes from the location and the scan geometry alone (no voxel values)."""

    zyx: tuple[int, int, int]
    source_start: np.ndarray  # first scan voxel of the to_iso source cuboid (the plain view's region)
    source_shape: tuple[int, int, int]
    to_iso: tuple[torch.Tensor, ...]
    block_start: np.ndarray  # first scan voxel of the block the pipeline pastes (`tamper.cube.scan_block`)
    block_shape: tuple[int, int, int]
    distance: np.ndarray  # mm of every block voxel from the site
    from_iso: tuple[torch.Tensor, ...]
    weight: torch.Tensor  # blend weight on the block


def cut(volume: torch.Tensor, start, shape, pad: float) -> torch.Tensor:
    """volume[start:start+shape] with `pad` outside (differentiable; torch version of `cut_box`)."""
    start = np.asarray(start, dtype=int)
    stop = start + np.asarray(shape, dtype=int)
    lo, hi = np.maximum(start, 0), np.minimum(stop, volume.shape[-3:])
    inner = volume[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    pads = []
    for axis in (2, 1, 0):
        pads += [int(lo[axis] - start[axis]), int(stop[axis] - hi[axis])]
    if any(pads):
        inner = torch.nn.functional.pad(inner, pads, value=float(pad))
    return inner


# --- the surrogate ------------------------------------------------------------------------------------
class Surrogate:
    """A loaded tamper model as a differentiable function: scan tensor → tampered block around a site."""

    def __init__(self, model: TamperModel, blend_mm: tuple[float, float] | None = None):
        self.model = model
        self.config = model.config
        self.action = model.action
        self.generator = model.generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.blend_mm = tuple(blend_mm) if blend_mm else blend_radii(model)
        eq = model.equalizer
        self.edges = torch.as_tensor(np.asarray(eq.edges, dtype=np.float64))
        self.cdf = torch.as_tensor(np.asarray(eq.cdf, dtype=np.float64))

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def geometry(self, scan: Scan, zyx) -> SiteGeometry:
        c = self.config
        grid = IsoGrid(tuple(int(v) for v in zyx), c.cube, c.iso_spacing)
        spacing = np.asarray(scan.spacing, dtype=float)
        shape = region_shape(grid, spacing, [PLAIN_VIEW])
        start, _ = cube_bounds(grid.center, shape)
        centre = shape // 2
        to_iso = tuple(torch.from_numpy(spline_matrix(int(n), tuple(grid.offsets_mm() / s + k))).float()
                       for n, s, k in zip(shape, spacing, centre))
        b_shape = block_shape(spacing, grid)
        b_start, _ = cube_bounds(grid.center, b_shape)
        idx = [o / grid.spacing + (grid.size - 1) / 2.0 for o in offsets_mm(b_shape, spacing)]
        from_iso = tuple(torch.from_numpy(spline_matrix(grid.size, tuple(i))).float() for i in idx)
        zz, yy, xx = np.meshgrid(*offsets_mm(b_shape, spacing), indexing="ij")
        distance = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
        weight = torch.from_numpy(radial_weight(distance, *self.blend_mm))
        return SiteGeometry(grid.center, start, tuple(int(v) for v in shape), to_iso, b_start, b_shape, distance,
                            from_iso, weight)

    @contextmanager
    def dropout(self):
        """The generator with its dropout layers sampling (batch norm keeps its running statistics)."""
        layers = [m for m in self.generator.modules() if isinstance(m, torch.nn.Dropout)]
        for layer in layers:
            layer.train(True)
        try:
            yield self
        finally:
            for layer in layers:
                layer.train(False)

    def source_shape(self, scan: Scan) -> np.ndarray:
        c = self.config
        return region_shape(IsoGrid((0, 0, 0), c.cube, c.iso_spacing), np.asarray(scan.spacing, dtype=float),
                            [PLAIN_VIEW])

    def to_net(self, hu: torch.Tensor) -> torch.Tensor:
        return (2.0 * interp(hu.double(), self.edges, self.cdf) - 1.0).float()

    def to_hu(self, net: torch.Tensor) -> torch.Tensor:
        u = (net.double().clamp(-1.0, 1.0) + 1.0) / 2.0
        return interp(u, self.cdf, self.edges).float()

    def iso_cube(self, volume: torch.Tensor, geo: SiteGeometry, pad: float) -> torch.Tensor:
        source = cut(volume, geo.source_start, geo.source_shape, pad)
        cube = separable(source, geo.to_iso)
        return torch.minimum(torch.maximum(cube, source.min().detach()), source.max().detach())

    def generate(self, cube_hu: torch.Tensor, views: int) -> torch.Tensor:
        """(views, cube³) HU: the hole filled through the first `views` flips, each flipped back."""
        net = self.to_net(cube_hu).clone()
        net[hole_slices(net.shape[-1], self.config.hole)] = 0
        batch = torch.stack([torch.flip(net, a) if a else net for a in FLIP_VIEWS[:views]])[:, None]
        out = self.generator(batch)[:, 0]
        return torch.stack([self.to_hu(torch.flip(o, a) if a else o) for o, a in zip(out, FLIP_VIEWS)])

    def centre_means(self, views_hu: torch.Tensor) -> torch.Tensor:
        c, r = views_hu.shape[-1] // 2, max(1, self.config.hole // 8)
        return views_hu[:, c - r: c + r, c - r: c + r, c - r: c + r].mean(dim=(1, 2, 3))

    def tamper_block(self, volume: torch.Tensor, scan: Scan, geo: SiteGeometry, views: int | None = None,
                     noise: torch.Tensor | None = None, sigma: float | None = None,
                     view: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tampered block, original block) around the site. `volume` is the scan as a float tensor
        (the perturbed one). The view is the pipeline's strongest one (chosen without gradient) unless
        `view` names one. `sigma` is the site's noise level (for the generator's excess-noise tone-down);
        `noise`, a draw of the attacker's fresh noise at unit gain, is added with the pipeline's gain."""
        views = DEFAULT_VIEWS[self.action] if views is None else views
        cube = self.iso_cube(volume, geo, scan.pad_value)
        generated = self.generate(cube, views)
        if view is None:
            means = self.centre_means(generated.detach())
            view = int(torch.argmax(means) if self.action == "inject" else torch.argmin(means))
        original = cut(volume, geo.block_start, geo.block_shape, scan.pad_value)
        return self.finish(generated[view], cube, original, scan, geo, noise, sigma), original

    def view_blocks(self, volume: torch.Tensor, scan: Scan, geo: SiteGeometry, views: int | None = None,
                    sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(views, block) tampered blocks, one per flip view (no fresh noise), and the original block."""
        views = DEFAULT_VIEWS[self.action] if views is None else views
        cube = self.iso_cube(volume, geo, scan.pad_value)
        generated = self.generate(cube, views)
        original = cut(volume, geo.block_start, geo.block_shape, scan.pad_value)
        ratio = None  # the noise tone-down is measured once, on the first view, and shared (it has no gradient)
        blocks = []
        for g in generated:
            block, ratio = self.finish(g, cube, original, scan, geo, None, sigma, ratio, with_ratio=True)
            blocks.append(block)
        return torch.stack(blocks), original

    def finish(self, generated, cube, original, scan: Scan, geo: SiteGeometry, noise, sigma, measured=None,
               with_ratio: bool = False):
        """One generated cube → the blended block (the pipeline after the generator). `measured`: the noise
        ratio of a block measured before (None: measure it on this one); `with_ratio`: return (block, ratio)."""
        change = separable(generated - cube, geo.from_iso)
        content = original + change
        if self.action == "inject":
            content = torch.maximum(content, original)
        if measured is None:
            measured = self.noise_ratio(content, scan.spacing, geo, sigma)
        content, ratio = match_ratio(content, scan.spacing, measured, tone_down)
        w = geo.weight
        block = w * content + (1.0 - w) * original
        if noise is not None:
            block = block + noise * torch.from_numpy(noise_gain(w.numpy(), ratio))
        return (block, measured) if with_ratio else block

    @staticmethod
    def noise_ratio(content: torch.Tensor, spacing, geo: SiteGeometry, sigma: float | None) -> float:
        """The block's noise level over the site's (0 when either is unknown), measured without gradient."""
        if not sigma:
            return 0.0
        block = content.detach().numpy()
        return noise_ratio(block, spacing, sigma, inpainted_flat(block, spacing, geo.weight.numpy()))

    def site_sigma(self, scan: Scan, geo: SiteGeometry, fallback: float) -> float:
        """The noise level the pipeline matches at this site (measured on the unperturbed scan)."""
        grid = IsoGrid(geo.zyx, self.config.cube, self.config.iso_spacing)
        original = scan_block(scan, grid).voxels.astype(np.float32)
        return site_sigma(original, scan.spacing, geo.weight.numpy(), fallback)

    def paste(self, volume: torch.Tensor, block: torch.Tensor, geo: SiteGeometry) -> torch.Tensor:
        """The volume with the block written where the blend weight is > 0 (as `ctgan_site`)."""
        out = volume.clone()
        scan_sl, block_sl = overlap(geo.block_start, geo.block_start + np.asarray(geo.block_shape), volume.shape)
        touched = geo.weight[block_sl] > 0
        out[scan_sl] = torch.where(touched, block[block_sl], out[scan_sl])
        return out


def tone_down(block: torch.Tensor, spacing, amount: float) -> torch.Tensor:
    """`tamper.noise.tone_down` in torch (the Gaussians as exact matrices, so gradients reach the block)."""
    lung_like = lung_likeness(gaussian(block, 1.0, spacing))
    residual = block - gaussian(block, DETREND_MM, spacing)
    return block - amount * lung_like * residual


def noise_free_context(sigma: float, rng: np.random.Generator, blend_mm, views: int) -> Context:
    """A pipeline Context whose noise model can never be sampled for a block (shape 1³): `ctgan_site`
    then skips the fresh noise and its settling, which the agreement test compares without."""
    return Context(ParenchymaNoise(float(sigma), np.ones((1, 1, 1)), (1, 1, 1), 0), rng, tuple(blend_mm), views)
