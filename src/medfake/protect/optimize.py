"""Per-scan protection: projected sign-gradient steps through the differentiable tamperer (TAFIM/PhotoGuard
style), with the expectation over what the attacker controls.

Objective (see README, "Protect"): for an injector, minimise the mean HU the tamperer leaves in the core of
its hole (a ball of radius hole/4 around the site) — drive its output towards the parenchyma that was
there; for a remover, maximise it — the nodule stays a visible mass. The attacker picks the place, so the
sites are tiles covering the lung (removers: the nodules the CAD finds) with a random jitter each visit; it
keeps the strongest flip view, and the gradient follows that view (the selection is the attacker's argmax);
its fresh noise is added after every differentiable step, so it does not change the gradient of this
linear objective (the expectation over noise is exact without sampling it). Optional expectations for
attackers the optimiser does not see exactly: a blur of the scan before the tamperer reads it
(`eot_blur_mm`) and the generator with its dropout on (`ghosts`). The perturbation is kept in
[−budget, budget] (and inside the lung mask for `region=lungs`) after every step; `project_stored` then
makes the bound hold on the stored integers.
"""

from __future__ import annotations

import numpy as np
import torch

from medfake.errors import MedfakeError
from medfake.protect.config import OptimizeConfig
from medfake.protect.surrogate import Surrogate, gaussian
from medfake.scan import Scan, mask_box

def core_ball(surrogate: Surrogate, geo) -> torch.Tensor:
    """Block voxels within hole/4 of the site (at least the centre voxel)."""
    radius = surrogate.config.hole * surrogate.config.iso_spacing / 4.0
    d = geo.distance
    return torch.from_numpy(d <= max(radius, float(d.min())))


def site_loss(surrogate: Surrogate, volume: torch.Tensor, scan: Scan, geo, sigma: float,
              soft_views_hu: float | None = None) -> torch.Tensor:
    """Mean HU in the core of the tampered block, signed so lower is better protection (in 100 HU). The
    attacker keeps its strongest flip view; with `soft_views_hu` the loss is a smooth maximum (log-sum-exp at
    that temperature) over all views, so pushing one view down does not just hand the win to another."""
    core = core_ball(surrogate, geo)
    sign = 1.0 if surrogate.action == "inject" else -1.0
    if soft_views_hu:
        blocks, _ = surrogate.view_blocks(volume, scan, geo, sigma=sigma)
        means = sign * blocks[:, core].mean(dim=1) / 100.0
        t = soft_views_hu / 100.0
        return t * torch.logsumexp(means / t, dim=0)
    block, _ = surrogate.tamper_block(volume, scan, geo, sigma=sigma)
    return sign * block[core].mean() / 100.0


def expected_loss(surrogate: Surrogate, volume: torch.Tensor, scan: Scan, geo, sigma: float,
                  config: OptimizeConfig, rng) -> torch.Tensor:
    """`site_loss`, averaged over a blur the attacker's copy may have had (σ drawn from {0, ½, 1}·eot_blur_mm,
    few values so the blur matrices stay cached) and over `ghosts` dropout samples of the generator."""
    if config.eot_blur_mm > 0:
        sigma_mm = config.eot_blur_mm * rng.integers(0, 3) / 2.0
        if sigma_mm > 0:
            volume = gaussian(volume, sigma_mm, scan.spacing)
    if not config.ghosts:
        return site_loss(surrogate, volume, scan, geo, sigma, config.soft_views_hu)
    with surrogate.dropout():
        return sum(site_loss(surrogate, volume, scan, geo, sigma, config.soft_views_hu)
                   for _ in range(config.ghosts)) / config.ghosts


def attack_sites(surrogate: Surrogate, scan: Scan, lung: np.ndarray, config: OptimizeConfig,
                 nodules: list[tuple[int, int, int]]) -> np.ndarray:
    """(n, 3) z,y,x tile centres where this attacker would act: lung tiles (inject) or nodules (remove)."""
    if surrogate.action == "remove":
        tiles = np.asarray(nodules, dtype=int).reshape(-1, 3)
    else:
        stride_mm = max(surrogate.config.hole * surrogate.config.iso_spacing * config.tile_fraction, 1.0)
        step = [max(1, int(round(stride_mm / s))) for s in scan.spacing]
        offset = [s // 2 for s in step]
        tiles = np.argwhere(lung[offset[0]::step[0], offset[1]::step[1], offset[2]::step[2]])
        tiles = tiles * np.asarray(step) + np.asarray(offset)
    if config.focus_zyx:
        focus = np.asarray(config.focus_zyx, dtype=float).reshape(-1, 3)
        d = np.linalg.norm((tiles[:, None, :] - focus[None]) * np.asarray(scan.spacing), axis=2).min(axis=1)
        tiles = tiles[d <= config.focus_mm]
        if not len(tiles):  # a focus between tiles: protect exactly there
            tiles = focus.astype(int)
    if len(tiles) > config.max_tiles:
        tiles = tiles[np.random.default_rng(config.seed).choice(len(tiles), config.max_tiles, replace=False)]
    return tiles


def jittered(zyx, surrogate: Surrogate, scan: Scan, rng, config: OptimizeConfig) -> tuple[int, int, int]:
    if config.jitter_mm is not None:
        reach_mm = config.jitter_mm
    elif surrogate.action == "remove":  # the remover is aimed at the nodule: a little slack only
        reach_mm = 2.0
    else:
        reach_mm = surrogate.config.hole * surrogate.config.iso_spacing * config.tile_fraction / 2.0
    jitter = rng.uniform(-reach_mm, reach_mm, 3) / np.asarray(scan.spacing)
    zyx = np.clip(np.rint(np.asarray(zyx) + jitter), 0, np.asarray(scan.shape) - 1)
    return tuple(int(v) for v in zyx)


def optimize_perturbation(scan: Scan, surrogates: list[Surrogate], budget_hu: float, allowed: np.ndarray,
                          lung: np.ndarray, nodules, config: OptimizeConfig, noise_sigma: float,
                          progress=None) -> np.ndarray:
    """The float32 perturbation δ (scan shape, |δ| ≤ budget, 0 outside `allowed`). δ and its gradient live
    only on the bounding box of `allowed`; each step updates only the boxes its sites touched."""
    rng = np.random.default_rng(config.seed)
    jobs = []
    for surrogate in surrogates:
        tiles = attack_sites(surrogate, scan, lung, config, nodules)
        jobs += [(surrogate, t) for t in tiles]
    if not jobs:
        raise MedfakeError("no place to protect: no lung tile (or nodule, for a remover) in the scan", scan.path)
    area = mask_box(allowed) or tuple(slice(0, 0) for _ in allowed.shape)
    start = np.asarray([s.start for s in area])
    delta = torch.zeros(tuple(s.stop - s.start for s in area))
    grad = torch.zeros_like(delta)
    mask = torch.from_numpy(np.ascontiguousarray(allowed[area], dtype=bool))
    steps = int(np.ceil(config.passes * len(jobs) / config.sites_per_step))
    order = np.concatenate([rng.permutation(len(jobs)) for _ in range(config.passes)])
    task = progress.add_task("protect (optimize)", total=steps, status="") if progress is not None else None
    for step in range(steps):
        touched = []
        for index in order[step * config.sites_per_step:(step + 1) * config.sites_per_step]:
            surrogate, tile = jobs[index]
            box, local_scan, local_zyx = local_crop(scan, surrogate, jittered(tile, surrogate, scan, rng, config))
            inner, part = overlap_in_area(box, area, start)
            if part is None:
                continue
            local = torch.zeros(local_scan.shape)
            local[inner] = delta[part]
            local.requires_grad_(True)
            x = torch.from_numpy(np.asarray(local_scan.voxels, dtype=np.float32))
            geo = surrogate.geometry(local_scan, local_zyx)
            loss = expected_loss(surrogate, x + local, local_scan, geo, noise_sigma, config, rng)
            (g,) = torch.autograd.grad(loss, local)
            grad[part] += g[inner]
            touched.append(part)
        for part in touched:  # a voxel in several boxes: its gradient is zeroed after its first update
            delta[part] = ((delta[part] - config.step_hu * torch.sign(grad[part])).clamp(-budget_hu, budget_hu)
                           * mask[part])
            grad[part] = 0.0
        if task is not None:
            progress.update(task, advance=1)
    out = np.zeros(scan.shape, dtype=np.float32)
    out[area] = delta.numpy()
    return out


def overlap_in_area(box, area, start):
    """(slices into the crop, slices into the area) where the crop `box` (scan slices) meets the area;
    (None, None) when they do not meet."""
    lo = [max(b.start, a.start) for b, a in zip(box, area)]
    hi = [min(b.stop, a.stop) for b, a in zip(box, area)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None, None
    inner = tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, box))
    part = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
    return inner, part


def local_crop(scan: Scan, surrogate: Surrogate, zyx):
    """(slices, crop scan, site in crop coordinates): the part of the scan one site's tampering reads. The
    crop holds the whole resampling source (clipped to the scan, so out-of-scan padding is unchanged)."""
    from medfake.scan import cube_bounds

    geo_shape = surrogate.source_shape(scan)
    start, stop = cube_bounds(zyx, geo_shape)
    lo, hi = np.maximum(start, 0), np.minimum(stop, scan.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return box, scan.with_voxels(scan.voxels[box]), tuple(int(v - a) for v, a in zip(zyx, lo))


def project_stored(original: np.ndarray, delta: np.ndarray, budget_hu: float) -> np.ndarray:
    """x + δ in the input's dtype with |stored − x| ≤ budget at every voxel: integers are rounded and the
    bound is the integer part of the budget; a float voxel the sum's rounding would push past it is left as it was."""
    x = np.asarray(original)
    if np.issubdtype(x.dtype, np.integer):
        b = int(np.floor(budget_hu))
        info = np.iinfo(x.dtype)
        wide = np.int64 if x.dtype.itemsize >= 4 else np.int32
        step = np.clip(np.rint(delta), -b, b).astype(wide)
        return np.clip(x.astype(wide) + step, info.min, info.max).astype(x.dtype)
    xp = (x.astype(np.float64) + np.clip(delta, -budget_hu, budget_hu)).astype(x.dtype)
    over = np.abs(xp.astype(np.float64) - x.astype(np.float64)) > budget_hu  # float rounding of the sum
    return np.where(over, x, xp)
