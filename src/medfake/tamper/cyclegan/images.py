"""2-D images for the CycleGAN: DICOM (MG, CR, DX: single-frame projection images) and PNG/TIFF/JPEG, and the mammography
pre-processing of Becker et al. (their experiment-1 code and the MVA reproduction, reference §C).

Mammograms: pydicom decodes the 16-bit RLE Lossless pixels; MONOCHROME1 is inverted so tissue is bright;
the breast is the largest bright connected region of an Otsu threshold (labels, markers and scanner edges
outside it are removed); the image is cropped to the breast, flipped so the chest wall is on the left (right
breasts flipped, the reproduction's rule, decided from the image itself rather than a header that may be
wrong), scaled to fit the preset size (aspect kept, zero-padded, like the reproduction) and mapped to
[-1, 1] through the breast's own 0.5-99.8 percentiles. `Prepared` keeps what `restore_change` needs to put
a change made by the generator back onto the original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError

PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
PROJECTION_MODALITIES = ("MG", "CR", "DX", "OT", "RG", "IO", "PX")
MASK_LONG_SIDE = 512  # the breast is found on an image of about this size


@dataclass
class Image2D:
    """Presentation values (bright = dense), (C, H, W) float32, and what the header said."""

    pixels: np.ndarray
    path: Path
    modality: str = "OT"
    laterality: str = ""  # L | R | "" from ImageLaterality / Laterality / PatientID
    patient: str = ""
    inverted: bool = False  # MONOCHROME1: presentation = max_stored - stored
    max_stored: float = 0.0

    @property
    def channels(self) -> int:
        return self.pixels.shape[0]


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in PICTURE_SUFFIXES


def read_image2d(path: str | Path) -> Image2D:
    path = Path(path)
    if not path.is_file():
        raise MedfakeError("no such image file", path)
    if is_picture(path):
        return _read_picture(path)
    return _read_dicom_image(path)


def _read_picture(path: Path) -> Image2D:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im.convert("L") if mode in ("LA", "P", "1") else
                               im.convert("RGB") if mode in ("RGBA", "CMYK", "YCbCr") else im)
    except (UnidentifiedImageError, OSError) as exc:
        raise MedfakeError(f"unreadable image ({exc.__class__.__name__})", path) from None
    pixels = array.astype(np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return Image2D(np.ascontiguousarray(pixels), path, "OT", patient=path.stem)


def _read_dicom_image(path: Path) -> Image2D:
    from medfake.io.dicom import check_image, decode_pixels, read_dataset

    ds = read_dataset(path, header_only=False, must_be_dicom=True)
    check_image(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedfakeError(f"a {frames}-frame DICOM is a volume, not a 2-D image (give it as a 3-D scan)", path)
    stored = decode_pixels(ds, path)[0].astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = stored * slope + intercept
    inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    max_stored = float((1 << int(ds.get("BitsStored", 16) or 16)) - 1)
    if inverted:
        values = (max_stored * slope + intercept) - values
    patient = str(ds.get("PatientID", "") or path.stem)
    return Image2D(values[None], path, str(ds.get("Modality", "OT") or "OT").upper(), _laterality(ds), patient,
                   inverted, max_stored)


def _laterality(ds) -> str:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").upper()
        if value in ("L", "R"):
            return value
    patient = str(ds.get("PatientID", "")).upper()
    return "L" if "LEFT" in patient else "R" if "RIGHT" in patient else ""


# --- mammography -------------------------------------------------------------------------------------
def breast_mask(image: np.ndarray) -> np.ndarray:
    """Bool mask of the breast in a (H, W) mammogram (bright = dense): Otsu on a reduced image, largest
    component, holes filled, a small opening to cut thin bridges to labels that touch it."""
    from skimage.filters import threshold_otsu

    factor = max(1, int(np.ceil(max(image.shape) / MASK_LONG_SIDE)))
    small = _block_mean(image, factor)
    smooth = ndimage.gaussian_filter(small, 1.0)
    if smooth.max() <= smooth.min():
        raise MedfakeError("the image is blank (one grey value)")
    bright = smooth > threshold_otsu(smooth)
    bright = ndimage.binary_opening(bright, iterations=2)
    labels, count = ndimage.label(bright)
    if count == 0:
        raise MedfakeError("no breast region found (nothing brighter than the background)")
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    largest = ndimage.binary_fill_holes(ndimage.binary_closing(largest, iterations=3))
    full = np.repeat(np.repeat(largest, factor, axis=0), factor, axis=1)
    return full[: image.shape[0], : image.shape[1]]


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image.astype(np.float32)
    pad = np.pad(image, ((0, (-image.shape[0]) % factor), (0, (-image.shape[1]) % factor)), mode="edge")
    h, w = pad.shape[0] // factor, pad.shape[1] // factor
    return pad.reshape(h, factor, w, factor).mean(axis=(1, 3)).astype(np.float32)


def chest_wall_on_right(mask: np.ndarray) -> bool:
    """The chest wall is the side where the breast is widest: compare the breast area in the outer quarters."""
    quarter = max(1, mask.shape[1] // 4)
    return int(mask[:, -quarter:].sum()) > int(mask[:, :quarter].sum())


@dataclass
class Prepared:
    """A network input (C, H, W) in [-1, 1] and how it maps back onto the source pixels."""

    net: np.ndarray
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of the crop in the source image
    flipped: bool
    placed: tuple[int, int, int, int]  # y0, y1, x0, x1 of the crop inside `net`
    lo: np.ndarray  # per channel: presentation value mapped to -1
    hi: np.ndarray  # per channel: presentation value mapped to +1
    mask: np.ndarray | None = None  # breast mask of the crop (source resolution), None = everywhere
    info: dict = field(default_factory=dict)


def prepare(image: Image2D, size: tuple[int, int], mammogram: bool, window=None) -> Prepared:
    """Crop (mammograms: to the breast, background removed, chest wall left), fit into `size` (H, W) with the
    aspect kept, map to [-1, 1] (a fixed `window` (lo, hi), or the breast's / image's percentiles)."""
    pixels = image.pixels
    mask = None
    y0, y1, x0, x1 = 0, pixels.shape[1], 0, pixels.shape[2]
    flipped = False
    if mammogram:
        full = breast_mask(pixels.mean(axis=0))
        ys, xs = np.nonzero(full)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        mask = full[y0:y1, x0:x1]
        flipped = chest_wall_on_right(mask)
    crop = pixels[:, y0:y1, x0:x1]
    inside = mask if mask is not None else np.ones(crop.shape[1:], bool)
    if window is not None:
        lo, hi = np.full(crop.shape[0], float(window[0])), np.full(crop.shape[0], float(window[1]))
    else:
        lo = np.array([np.percentile(c[inside], 0.5) for c in crop])
        hi = np.array([np.percentile(c[inside], 99.8) for c in crop])
        hi = np.where(hi > lo, hi, lo + 1.0)
    scaled = np.clip(2.0 * (crop - lo[:, None, None]) / (hi - lo)[:, None, None] - 1.0, -1.0, 1.0)
    if mask is not None:
        scaled = np.where(mask[None], scaled, -1.0)
    if flipped:
        scaled = scaled[:, :, ::-1]
    net, placed = fit_into(scaled, size)
    info = {"source": str(image.path), "crop_yx": [y0, y1, x0, x1], "flipped": flipped,
            "laterality": image.laterality, "inverted": image.inverted}
    return Prepared(net, (y0, y1, x0, x1), flipped, placed, lo, hi, mask, info)


def fit_into(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scale (C, h, w) to fit (H, W) keeping the aspect, at the left edge, vertically centred, padded with -1."""
    H, W = size
    h, w = image.shape[1:]
    scale = min(H / h, W / w)
    ph, pw = max(1, min(H, int(round(h * scale)))), max(1, min(W, int(round(w * scale))))
    resized = np.stack([resize(c, (ph, pw)) for c in image])
    out = np.full((image.shape[0], H, W), -1.0, dtype=np.float32)
    oy = (H - ph) // 2
    out[:, oy:oy + ph, :pw] = resized
    return out, (oy, oy + ph, 0, pw)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Float resize; area-averaging when shrinking (no aliasing), bilinear when enlarging."""
    from PIL import Image

    method = Image.Resampling.BOX if shape[0] < image.shape[0] else Image.Resampling.BILINEAR
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize((shape[1], shape[0]), method)
    return np.asarray(out, dtype=np.float32)


def restore_change(prepared: Prepared, net_change: np.ndarray, source_shape) -> np.ndarray:
    """A change made in network units (C, H, W) → presentation units on the full source image (C, H0, W0),
    zero outside the crop and outside the breast."""
    y0, y1, x0, x1 = prepared.box
    py0, py1, px0, px1 = prepared.placed
    part = net_change[:, py0:py1, px0:px1]
    if prepared.flipped:
        part = part[:, :, ::-1]
    scale = (prepared.hi - prepared.lo) / 2.0
    local = np.stack([resize(c, (y1 - y0, x1 - x0)) for c in part]) * scale[:, None, None]
    if prepared.mask is not None:
        local = local * prepared.mask[None]
    out = np.zeros((net_change.shape[0], *source_shape), dtype=np.float32)
    out[:, y0:y1, x0:x1] = local
    return out
