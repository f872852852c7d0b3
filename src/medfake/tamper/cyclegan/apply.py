"""`medfake tamper --method cyclegan`: inject (A→B) or remove (B→A) with a trained CycleGAN.

2-D images (a one-slice scan: a mammogram, a radiograph): the image is prepared as for training (mammograms:
breast crop, chest wall left, fitted into the model's size), translated whole, and the generator's *change*
(output − input) is scaled back to the source pixels and added there, inside the breast only; the original
resolution and detail stay. With locations, the change is kept only around them (raised-cosine fall-off
between the --blend radii, in mm of the image, default 10 % and 20 % of its short side).

CT: `CTAdapter` gives the generator the interface of the CT-GAN model, so `pipeline.ctgan_site` does the work:
the isotropic cube around each location is cut, every in-plane slice within the paste's reach is translated
(slice-wise, the in-plane ROI of the patch size), and the change is pasted with the same 3-D radial blend,
injection max-rule and noise matching as CT-GAN's. Removal sizes the paste to each nodule (its table
diameter, else the CAD's, else 12 mm: full weight to 1 mm beyond its edge, zero 4 mm further), so no rim of
a nodule larger than the training median is left behind, and looks through all four in-plane flips keeping
the least dense result (as CT-GAN's remover can).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfake.errors import MedfakeError
from medfake.nn.cyclegan import ResnetGenerator, translate
from medfake.scan import Scan
from medfake.tamper.cyclegan.config import CycleGANConfig
from medfake.tamper.cyclegan.images import Image2D, prepare, restore_change
from medfake.tamper.cyclegan.model import GENERATORS, KIND, MODEL_JSON
from medfake.tamper.cyclegan.trainset import hu_to_net, net_to_hu

DIRECTION = {"inject": "a2b", "remove": "b2a"}
DEFAULT_LESION_MM = 10.0
FLIPS = ((), (2,), (1,), (1, 2))
REMOVE_VIEWS = 4
REMOVE_MARGIN_MM = 4.0  # hole = nodule diameter + this: full blend weight to 1 mm beyond the nodule's edge


@dataclass
class CubeGeometry:
    """What `pipeline.ctgan_site` reads from a CT-GAN config: cube points, spacing, and the lesion 'hole'."""

    cube: int
    iso_spacing: float
    hole: int


@dataclass
class CycleGANTamper:
    action: str
    generator: ResnetGenerator
    config: CycleGANConfig
    meta: dict
    model_id: str
    info: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.meta.get("source") or "image")

    def translate_net(self, net: np.ndarray) -> np.ndarray:
        """(N, C, H, W) in [-1, 1] → generator output, in chunks."""
        out = []
        with torch.no_grad():
            for i in range(0, len(net), 16):
                out.append(translate(self.generator, torch.from_numpy(np.ascontiguousarray(net[i: i + 16]))).numpy())
        return np.concatenate(out)


def model_folder(run: str | Path) -> Path:
    run = Path(run)
    if not run.exists():
        raise MedfakeError("no such model run folder", run)
    for candidate in (run / "model", run):
        if (candidate / MODEL_JSON).exists():
            return candidate
    raise MedfakeError("not a medfake model (no model/model.json)", run)


def load_cyclegan(run: str | Path, action: str) -> CycleGANTamper:
    if action not in DIRECTION:
        raise MedfakeError(f"action must be inject or remove, not '{action}'")
    folder = model_folder(run)
    try:
        meta = json.loads((folder / MODEL_JSON).read_text())
    except ValueError:
        raise MedfakeError("unreadable model.json", folder / MODEL_JSON) from None
    if meta.get("kind") != KIND:
        raise MedfakeError(f"this is a {meta.get('kind', 'CT-GAN (medfake train inject|remove)')} model, not a "
                           "CycleGAN (train one with `medfake train cyclegan`)", folder)
    config = CycleGANConfig.from_dict(meta["config"])
    weights = folder / GENERATORS
    try:
        states = torch.load(weights, map_location="cpu", weights_only=True)
        generator = ResnetGenerator(config.channels, config.channels, config.ngf, config.n_blocks, config.upsample)
        generator.load_state_dict(states[DIRECTION[action]])
    except Exception as exc:  # a missing, truncated or mismatched file
        raise MedfakeError(f"cannot load the generators ({exc.__class__.__name__})", weights) from None
    generator.eval()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    name = folder.parent.name if folder.name == "model" else folder.name
    return CycleGANTamper(action, generator, config, meta, f"{name}@{meta.get('step', '?')}:{digest}",
                          {"folder": str(folder)})


# --- CT ---------------------------------------------------------------------------------------------------
class CTAdapter:
    """A CycleGAN trained on CT patches, seen by `pipeline.ctgan_site` as an in-painting model."""

    def __init__(self, model: CycleGANTamper, lesion_mm: float | None = None):
        if model.source != "ct":
            raise MedfakeError(f"this CycleGAN was trained on {model.source} images, not CT patches",
                               model.info.get("folder"))
        self.model = model
        lesion_mm = lesion_mm or model.meta.get("lesion_diameter_mm") or DEFAULT_LESION_MM
        pixel = float(model.meta.get("pixel_mm") or 1.0)
        self.config = CubeGeometry(int(model.config.size[0]), pixel,
                                   int(np.clip(round(lesion_mm / pixel), 4, model.config.size[0] - 8)))
        self.window = tuple(model.meta.get("window") or (-1000.0, 400.0))
        self.action, self.model_id, self.info = model.action, model.model_id, model.info

    def reach(self) -> int:
        """Slices from the centre that the paste can touch (the outer blend radius, in points)."""
        return int(np.ceil(self.config.hole / 2.0 + 4))

    def inpaint_views(self, cube_hu: np.ndarray, n_views: int) -> np.ndarray:
        """(n, S, S, S) HU: the cube with its central slices translated (seen through n in-plane flips)."""
        s = cube_hu.shape[0]
        lo, hi = max(0, s // 2 - self.reach()), min(s, s // 2 + self.reach() + 1)
        views = []
        for axes in FLIPS[:n_views]:
            flipped = np.flip(cube_hu, axes)
            net = hu_to_net(flipped[lo:hi], self.window)[:, None]
            change = net_to_hu(self.model.translate_net(net)[:, 0], self.window) - net_to_hu(net[:, 0], self.window)
            out = np.array(flipped, dtype=np.float32)
            out[lo:hi] += change
            views.append(np.flip(out, axes))
        return np.stack(views)


# --- 2-D images -----------------------------------------------------------------------------------------
def image_of(scan: Scan) -> Image2D:
    """The one-slice scan as presentation values (MONOCHROME1 inverted back to bright = dense)."""
    header = (scan.meta.get("dicom") or [None])[0]
    pixels = np.asarray(scan.voxels[0], dtype=np.float32)
    inverted, max_stored = False, 0.0
    if header is not None and str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        slope, intercept = float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)
        max_stored = float((1 << int(header.get("BitsStored", 16) or 16)) - 1) * slope + intercept
        pixels, inverted = max_stored - pixels, True
    return Image2D(pixels[None], Path(str(scan.path or "")), scan.modality.upper(), inverted=inverted,
                   max_stored=max_stored)


def tamper_image(scan: Scan, sites: list, action: str, model: CycleGANTamper,
                 blend_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """New voxels for a one-slice scan and the manifest parameters."""
    from medfake.tamper.blend import radial_weight

    if model.source == "ct":
        raise MedfakeError("this CycleGAN was trained on CT patches: give it a CT volume, not a 2-D image",
                           model.info.get("folder"))
    image = image_of(scan)
    if image.channels != model.config.channels:
        raise MedfakeError(f"the model translates {model.config.channels}-channel images, this one has "
                           f"{image.channels}", scan.path)
    mammogram = model.source == "mammogram"
    prepared = prepare(image, tuple(model.config.size), mammogram)
    net_out = model.translate_net(prepared.net[None])[0]
    change = restore_change(prepared, net_out - prepared.net, scan.shape[1:])[0]
    if image.inverted:
        change = -change
    params = {"region": "whole image" if not sites else "around locations", "size": list(model.config.size),
              "breast_crop": list(prepared.box) if mammogram else None, "flipped": prepared.flipped}
    if sites:
        short_mm = min(scan.shape[1] * scan.spacing[1], scan.shape[2] * scan.spacing[2])
        blend_mm = tuple(blend_mm) if blend_mm else (0.1 * short_mm, 0.2 * short_mm)
        yy, xx = np.mgrid[: scan.shape[1], : scan.shape[2]]
        weight = np.zeros(scan.shape[1:], np.float32)
        for site in sites:
            distance = np.hypot((yy - site.zyx[1]) * scan.spacing[1], (xx - site.zyx[2]) * scan.spacing[2])
            weight = np.maximum(weight, radial_weight(distance, *blend_mm))
        change = change * weight
        params["blend_mm"] = [round(float(v), 2) for v in blend_mm]
    voxels = np.asarray(scan.voxels, dtype=np.float32).copy()
    voxels[0] += change
    if mammogram or image.inverted:
        header = (scan.meta.get("dicom") or [None])[0]
        top = float((1 << int(header.get("BitsStored", 16) or 16)) - 1) if header is not None else float(voxels.max())
        voxels = np.clip(voxels, 0.0, top)
    params["mean_abs_change"] = round(float(np.abs(change).mean()), 3)
    return voxels, params


# --- what `pipeline.tamper_scan` calls for method cyclegan --------------------------------------------------
def cyclegan_scan(scan: Scan, locations, action: str, model, rng=None, lung=None, blend_mm=None, views=None, *,
                  nodules=None):
    """(tampered scan, manifest rows) as `tamper_scan` returns them; 2-D: no location = the whole image.
    `nodules`: `detect_nodules(scan, lung)` when the caller already ran it (removal sizes the paste with it)."""
    from dataclasses import replace

    from medfake.tamper.pipeline import Site, as_sites, like_input, manifest_row, tamper_scan

    if model is None:
        raise MedfakeError("method cyclegan needs a trained model (--model RUN of `medfake train cyclegan`)")
    if not isinstance(model, CycleGANTamper):
        raise MedfakeError("method cyclegan needs a CycleGAN model (`medfake train cyclegan`), not a CT-GAN one",
                           getattr(model, "info", {}).get("folder"))
    if model.action != action:
        raise MedfakeError(f"the model was loaded to {model.action}, not to {action}", model.info.get("folder"))
    if scan.shape[0] == 1:
        sites = as_sites(scan, locations) if locations else []
        voxels, params = tamper_image(scan, sites, action, model, blend_mm)
        sites = sites or [Site((0, scan.shape[1] // 2, scan.shape[2] // 2), "user")]
        out = scan.with_voxels(like_input(voxels, scan.voxels))
        return out, [manifest_row(scan, s, action, "cyclegan", model.model_id, params) for s in sites]
    if model.source != "ct":
        raise MedfakeError(f"this CycleGAN was trained on 2-D {model.source} images; give it a 2-D image, not a "
                           f"{scan.shape[0]}-slice volume", model.info.get("folder"))
    if action == "remove":
        tampered, rows = remove_ct(scan, as_sites(scan, locations), model, rng, lung, blend_mm, views, nodules)
    else:
        tampered, rows = tamper_scan(scan, locations, action, CTAdapter(model), "ctgan", rng, lung, None, None,
                                     blend_mm, views)
    rows = [replace(r, method="cyclegan", parameters=json.dumps(dict(json.loads(r.parameters), generator="cyclegan",
                                                                     slicewise=True), sort_keys=True)) for r in rows]
    return tampered, rows


def remove_ct(scan: Scan, sites: list, model: CycleGANTamper, rng, lung, blend_mm, views, nodules=None):
    """Each nodule removed with a paste sized to it (see the module docstring), one site after the other."""
    from medfake.tamper.pipeline import removal_diameters, tamper_scan

    views = REMOVE_VIEWS if views is None else views
    diameters = removal_diameters(scan, sites, lung, nodules)
    rows = []
    for site, diameter in zip(sites, diameters):
        site.diameter_mm = diameter
        adapter = CTAdapter(model, diameter + REMOVE_MARGIN_MM)
        scan, new = tamper_scan(scan, [site], "remove", adapter, "ctgan", rng, lung, None, None, blend_mm, views)
        rows += new
    return scan, rows
