"""Tamper a scan in memory: inject or remove lung nodules at given locations.

For each location (method `ctgan`): cut the isotropic cube around it (only the cube is resampled), equalize,
cut the hole, generate, invert; the change (generated − input cube) is resampled onto the scan voxels and
pasted with a 3D soft blend; injection keeps the brighter of tissue and nodule; the noise level is matched
to the untouched parenchyma around the location (this scan's noise texture; a generator noisier than that is
toned down, a smoother one topped up with fresh noise). Locations are applied one
after the other, so nearby edits compose; the noise model is measured once on the original scan.

`copy-move` and `inpaint` dispatch to `medfake.tamper.classical` and get the same manifest treatment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.io.tables import ManifestRow
from medfake.cad import detect_nodules, nodule_near
from medfake.lungmask import IN_PLANE, block_mean, coarse_factor, lung_parenchyma, upsample
from medfake.scan import Scan
from medfake.tamper.blend import blend, noise_gain, radial_weight
from medfake.tamper.cube import IsoGrid, block_shape, distance_mm, from_iso, scan_block, to_iso
from medfake.tamper import classical
from medfake.tamper.config import DEFAULT_VIEWS, require_action, require_method
from medfake.tamper.noise import (ParenchymaNoise, estimate_noise, inpainted_flat, match_noise, settle_noise,
                                  site_sigma)

if TYPE_CHECKING:  # the classical methods never import torch
    from medfake.tamper.model import TamperModel

DEFAULT_REMOVE_DIAMETER_MM = 12.0
NOISE_SLAB_MM = 40.0  # slices searched for noise patches around the locations when there is no lung mask


@dataclass
class Site:
    """A location to tamper (z,y,x voxel), how it was chosen, and the nodule size when known."""

    zyx: tuple[int, int, int]
    chosen_by: str = "user"  # user | auto | table
    diameter_mm: float | None = None


@dataclass
class Context:
    """What every location of one scan shares: the parenchyma noise model, rng, blend radii, generator views."""

    noise: ParenchymaNoise | None
    rng: np.random.Generator
    blend_mm: tuple[float, float] = (9.0, 13.0)
    views: int = 1


def as_sites(scan: Scan, locations) -> list[Site]:
    sites = []
    for loc in locations:
        site = loc if isinstance(loc, Site) else Site(tuple(np.asarray(loc).tolist()))
        zyx = tuple(int(v) for v in scan.require_inside(site.zyx, "location"))
        sites.append(Site(zyx, site.chosen_by, site.diameter_mm))
    if not sites:
        raise MedfakeError("no location to tamper", scan.path)
    return sites


def tamper_scan(scan: Scan, locations, action: str, model: TamperModel | None = None, method: str = "ctgan",
                rng: np.random.Generator | None = None, lung: np.ndarray | None = None,
                donor: Scan | None = None, donor_zyx=None,
                blend_mm: tuple[float, float] | None = None, views: int | None = None, *,
                nodules=None) -> tuple[Scan, list[ManifestRow]]:
    """Return a tampered copy of `scan` and one manifest row per location (`output` left empty).

    `locations`: z,y,x voxel coordinates or `Site`s. `model` is required for `ctgan` and must have been
    trained for `action`. `lung` (bool mask), when given, is where ctgan samples this scan's noise texture
    (without it: lung-like voxels near the locations); the classical methods compute it when they need it. `donor`/`donor_zyx` feed copy-move
    (default: the strongest nodule the CAD finds in `scan` itself). `blend_mm` = (full weight up to,
    zero from) in mm, default `blend_radii(model)`. `views`: the generator fills the hole through this many
    flips of the cube and the strongest result is kept (inject: most tissue in the hole's centre; remove:
    least); default DEFAULT_VIEWS[action]. `nodules`: `detect_nodules(scan, lung)` when the caller already
    ran it (copy-move's donor and the removals' nodule sizes reuse it instead of running the detector again)."""
    require_action(action)
    require_method(method)
    rng = np.random.default_rng(0) if rng is None else rng
    if method == "cyclegan":  # 2-D images, or CT slice-wise through the ctgan paste below
        from medfake.tamper.cyclegan.apply import cyclegan_scan

        return cyclegan_scan(scan, locations, action, model, rng, lung, blend_mm, views, nodules=nodules)
    sites = as_sites(scan, locations)
    if method == "ctgan":
        voxels = np.asarray(scan.voxels, dtype=np.float32).copy()
        if model is None:
            raise MedfakeError("method ctgan needs a trained model (--model RUN)")
        if model.action != action:
            raise MedfakeError(f"the model was trained to {model.action}, not to {action}", model.info.get("folder"))
        blend_mm = tuple(blend_mm) if blend_mm else blend_radii(model)
        if not 0 < blend_mm[0] < blend_mm[1] <= model.config.cube / 2 * model.config.iso_spacing:
            raise MedfakeError(f"blend radii {blend_mm} must increase and stay inside the cube")
        views = DEFAULT_VIEWS[action] if views is None else int(views)
        context = Context(parenchyma_noise(scan, lung, model, sites, rng), rng, blend_mm, views)
        for site in sites:
            voxels = ctgan_site(scan.with_voxels(voxels), site, action, model, context)
        params = {"cube": model.config.cube, "hole": model.config.hole, "iso_spacing_mm": model.config.iso_spacing,
                  "blend_mm": list(blend_mm), "noise_sigma_hu": round(context.noise.sigma, 2), "views": views}
        model_id = model.model_id
        out = scan.with_voxels(like_input(voxels, scan.voxels))
    else:
        canvas, params = _classical(scan, sites, action, method, rng, lung, donor, donor_zyx, nodules)
        out = scan.with_voxels(canvas.result())
        model_id = "none"
    return out, [manifest_row(scan, site, action, method, model_id, params) for site in sites]


# --- ctgan -----------------------------------------------------------------------------------------
def blend_radii(model: TamperModel) -> tuple[float, float]:
    """Full weight to 1 mm inside the hole's faces, raised-cosine fall-off to zero 3 mm outside them: the
    generator's own (blurry) reconstruction of the wider context is not pasted, only the in-painted hole
    and its rim, where the generator was trained to continue the context."""
    c = model.config
    half = c.hole / 2.0 * c.iso_spacing
    return half - 1.0 * c.iso_spacing, min(half + 3.0 * c.iso_spacing, (c.cube / 2.0 - 1.0) * c.iso_spacing)


def ctgan_site(scan: Scan, site: Site, action: str, model: TamperModel, context: Context) -> np.ndarray:
    """New voxels (float32) with one location in-painted by the generator."""
    c = model.config
    grid = IsoGrid(site.zyx, c.cube, c.iso_spacing)
    block = scan_block(scan, grid)
    cube_in = to_iso(scan, grid)
    generated = strongest_view(model.inpaint_views(cube_in, context.views), action, c.hole)
    change = from_iso(generated - cube_in, grid, block)
    original = block.voxels.astype(np.float32)
    content = original + change
    if action == "inject":
        content = np.maximum(content, original)  # a vessel brighter than the nodule stays
    weight = radial_weight(distance_mm(block), *context.blend_mm)
    noise = context.noise
    sigma = site_sigma(original, scan.spacing, weight, noise.sigma)
    content, ratio = match_noise(content, scan.spacing, sigma, inpainted_flat(content, scan.spacing, weight))
    fresh = (noise.sample(context.rng, sigma) * noise_gain(weight, ratio)
             if noise.shape == block.shape else None)
    blended = blend(original, content, weight, fresh)
    if fresh is not None:
        blended = settle_noise(blended, scan.spacing, sigma, inpainted_flat(blended, scan.spacing, weight),
                               weight, lambda: noise.sample(context.rng, sigma))
    canvas = scan.with_voxels(np.asarray(scan.voxels, dtype=np.float32))
    changed = np.where(weight > 0, blended, original)  # voxels the blend does not reach stay bit for bit
    return canvas.paste(block.with_voxels(changed)).voxels


def strongest_view(views: np.ndarray, action: str, hole: int) -> np.ndarray:
    """The view with the highest (inject) or lowest (remove) mean HU in the central quarter of the hole."""
    c, r = views.shape[1] // 2, max(1, hole // 8)
    centre = views[:, c - r: c + r, c - r: c + r, c - r: c + r].mean(axis=(1, 2, 3))
    return views[int(np.argmax(centre) if action == "inject" else np.argmin(centre))]


def parenchyma_noise(scan: Scan, lung, model: TamperModel, sites: list[Site], rng) -> ParenchymaNoise:
    """This scan's noise texture from parenchyma patches: inside the lung mask when one was computed (auto
    locations need it anyway), else lung-like voxels in the slab of slices around the locations (the full
    lung segmentation would cost more than all the tampering)."""
    shape = block_shape(scan.spacing, IsoGrid(sites[0].zyx, model.config.cube, model.config.iso_spacing))
    parenchyma = lung_parenchyma(scan, lung) if lung is not None else _lung_like_near(scan, sites)
    return estimate_noise(scan, parenchyma, shape, rng, avoid_zyx=[s.zyx for s in sites])


def _lung_like_near(scan: Scan, sites: list[Site], reach_mm: float = NOISE_SLAB_MM) -> np.ndarray:
    """Voxels whose local mean (block-averaged to ~1.2 mm pixels, 1 mm Gaussian; thresholding raw HU would
    clip the noise being measured) lies between −975 and −600 HU, eroded ~2 mm away from air and tissue, in
    the slices within `reach_mm` of any location; False elsewhere."""
    reach = int(np.ceil(reach_mm / scan.spacing[0]))
    z = [s.zyx[0] for s in sites]
    lo, hi = max(min(z) - reach, 0), min(max(z) + reach + 1, scan.shape[0])
    factor = coarse_factor(scan.spacing)
    pixel = min(scan.spacing[1:]) * factor
    coarse = block_mean(np.asarray(scan.voxels[lo:hi], dtype=np.float32), factor)
    smooth = ndimage.gaussian_filter(coarse, (0, 1.0 / pixel, 1.0 / pixel))
    lung_like = ndimage.binary_erosion((smooth > -975) & (smooth < -600), IN_PLANE,
                                       iterations=max(1, int(round(2.0 / pixel))))
    mask = np.zeros(scan.shape, dtype=bool)
    mask[lo:hi] = upsample(lung_like, factor, (hi - lo, *scan.shape[1:]))
    return mask


# --- classical methods (medfake.tamper.classical) ---------------------------------------------------
class Canvas:
    """The voxels being tampered without a float copy of the volume: the original array plus the float32
    boxes written so far, in order (a later box overwrites an earlier one where they overlap). Reads and
    the result see exactly what a float32 copy edited in place would hold."""

    def __init__(self, voxels: np.ndarray):
        self.voxels = voxels
        self.boxes: list[tuple[tuple[slice, ...], np.ndarray]] = []

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        out = np.array(self.voxels[region], dtype=np.float32)  # a copy even when the voxels are float32
        for box, values in self.boxes:
            shared = _shared(region, box)
            if shared is not None:
                out[_within(shared, region)] = values[_within(shared, box)]
        return out

    def write(self, region: tuple[slice, ...], values: np.ndarray) -> None:
        self.boxes.append((region, values))

    def result(self) -> np.ndarray:
        """The voxels in the input's dtype (integers rounded and clipped, untouched voxels bit for bit)."""
        out = self.voxels.copy()
        for box, values in self.boxes:
            out[box] = like_input(values, self.voxels)
        return out


def _shared(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    parts = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(p.stop <= p.start for p in parts) else parts


def _within(part: tuple[slice, ...], box: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(part, box))


def _classical(scan, sites, action, method, rng, lung, donor, donor_zyx, nodules=None):
    if method == "copy-move" and action != "inject" or method == "inpaint" and action != "remove":
        raise MedfakeError(f"method {method} can only {'inject' if method == 'copy-move' else 'remove'}")
    params: dict = {}
    if method == "copy-move":
        donor = scan if donor is None else donor
        if donor_zyx is None:
            donor_zyx = _strongest_nodule(donor, lung if donor is scan else None, nodules if donor is scan else None)
        params = {"donor": str((donor.path or "")), "donor_zyx": [int(v) for v in donor_zyx]}
    else:
        for site, diameter in zip(sites, removal_diameters(scan, sites, lung, nodules)):
            site.diameter_mm = diameter
    canvas = Canvas(np.asarray(scan.voxels))
    for site in sites:
        if method == "copy-move":
            region, values = classical.copy_move_patch(scan, site.zyx, donor, tuple(donor_zyx), rng, canvas.read)
        else:
            region, values = classical.inpaint_patch(scan, site.zyx, site.diameter_mm, canvas.read)
        canvas.write(region, values)
    return canvas, params


def _strongest_nodule(scan: Scan, lung, nodules=None) -> tuple[int, int, int]:
    found = detect_nodules(scan, lung, max_count=1) if nodules is None else nodules[:1]  # strongest first
    if not found:
        raise MedfakeError("copy-move needs a donor nodule and the detector found none (give --donor-coord)",
                           scan.path)
    return found[0].center_zyx


def removal_diameters(scan: Scan, sites: list[Site], lung=None, nodules=None) -> list[float]:
    """The size (mm) of the nodule to remove at each site: the site's own diameter, else the CAD's strongest
    candidate within 10 mm, else DEFAULT_REMOVE_DIAMETER_MM. `nodules`: `detect_nodules(scan, lung)` when the
    caller already ran it; otherwise the detector runs once, and only when some site has no diameter."""
    if nodules is None and any(not s.diameter_mm for s in sites):
        nodules = detect_nodules(scan, lung)
    out = []
    for site in sites:
        hit = None if site.diameter_mm else nodule_near(nodules, scan, site.zyx, radius_mm=10.0)
        out.append(float(site.diameter_mm or (hit.diameter_mm if hit else DEFAULT_REMOVE_DIAMETER_MM)))
    return out


# --- outputs ---------------------------------------------------------------------------------------
def like_input(voxels: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Back to the input's dtype: integers are rounded and clipped, so untouched voxels stay bit-identical."""
    if np.issubdtype(original.dtype, np.integer):
        info = np.iinfo(original.dtype)
        return np.clip(np.rint(voxels), info.min, info.max).astype(original.dtype)
    return voxels.astype(original.dtype)


def manifest_row(scan: Scan, site: Site, action: str, method: str, model_id: str, params: dict,
                 output: str = "") -> ManifestRow:
    x, y, z = scan.voxel_to_world(site.zyx)
    extra = dict(params, **({"diameter_mm": round(site.diameter_mm, 2)} if site.diameter_mm else {}))
    return ManifestRow(scan=str((scan.path or "")), output=output, world_x=round(float(x), 3),
                       world_y=round(float(y), 3), world_z=round(float(z), 3), voxel_z=int(site.zyx[0]),
                       voxel_y=int(site.zyx[1]), voxel_x=int(site.zyx[2]), action=action, method=method,
                       model_id=model_id, parameters=json.dumps(extra, sort_keys=True),
                       time=datetime.now(timezone.utc).isoformat(timespec="seconds"), chosen_by=site.chosen_by)
