"""Read DICOM into a Scan: a series folder of classic single-frame images, one file, or an enhanced
multi-frame image. Compressed transfer syntaxes are decoded by pydicom's pixel plugins (pylibjpeg, RLE).

Slices are ordered by their position projected on the slice normal; the z spacing comes from those
positions (never from SliceThickness). Missing slices are filled with padding so world coordinates
stay right, and every irregularity is described in `scan.meta['gaps']`. Values go through
RescaleSlope/Intercept (HU for CT). The headers (without pixels), one per slice in the volume's order,
stay in `scan.meta['dicom']` so `save_dicom_series` can derive a new series from them.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medfake.errors import MedfakeError
from medfake.io.dicom_header import check_pixel_description, read_dataset, short
from medfake.io.dicom_geometry import StackGeometry, floats_of, plan_stack
from medfake.io.dicom_write import save_dicom_series
from medfake.scan import AIR_HU, Scan

NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "ECG", "DOC"}
# functional-group macros of enhanced images → the classic attributes they carry
FRAME_MACROS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth"),
}
FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


@dataclass
class Image2D:
    """One 2-D image (a classic file or one frame) with its flattened header."""

    header: Dataset
    path: Path
    pixels: np.ndarray | None = None


@dataclass
class SeriesInfo:
    uid: str
    files: list[tuple[Path, Dataset]] = field(default_factory=list)

    def describe(self) -> str:
        first = self.files[0][1]
        desc = str(first.get("SeriesDescription", "")).strip()
        frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in self.files)
        text = f"{self.uid} ({first.get('Modality', '?')}, {len(self.files)} files, {frames} images"
        return text + (f", '{desc}')" if desc else ")")


# --- reading files ------------------------------------------------------------------------------
def decode_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Stored pixel values (frames, rows, columns) of a full dataset, decoded by pydicom's plugins."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds:
        raise MedfakeError("DICOM file has no pixel data", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise MedfakeError(f"cannot decode pixel data ({name}): {short(exc)}", path) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.size != frames * int(ds.Rows) * int(ds.Columns):
        raise MedfakeError(f"decoded {pixels.size} pixels where the header says {frames} frame(s) of "
                           f"{ds.Rows} x {ds.Columns}", path)
    return pixels.reshape(frames, int(ds.Rows), int(ds.Columns))


def check_image(ds: Dataset, path: Path) -> None:
    """Raise a clear error for DICOM objects that are not grey-level images (SEG, RT, SR, colour) and
    for images whose pixel description is impossible."""
    problem = not_a_grey_image(ds)
    if problem:
        raise MedfakeError(problem, path)
    check_pixel_description(ds, path)


def not_a_grey_image(ds: Dataset) -> str | None:
    modality = str(ds.get("Modality", "")).upper()
    sop = ds.get("SOPClassUID")
    kind = getattr(sop, "name", str(sop)) if sop else "unknown SOP class"
    if modality in NON_IMAGE_MODALITIES or not any(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
        return f"not an image DICOM ({modality or '?'}: {kind}); medfake reads CT/MR images"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return f"colour image ({ds.get('PhotometricInterpretation', '?')}, {kind}) is not supported"
    return None


def is_image(ds: Dataset) -> bool:
    return not_a_grey_image(ds) is None


def is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


# --- flattening enhanced multi-frame headers ---------------------------------------------------
def header_without_pixels(ds: Dataset) -> Dataset:
    header = Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0 and elem.keyword not in FUNCTIONAL_GROUPS:
            header.add(elem)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def frame_headers(ds: Dataset) -> list[Dataset]:
    """One classic-looking header per frame: the shared, then per-frame functional groups, flattened."""
    base = header_without_pixels(ds)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    headers = []
    for index in range(frames):
        header = Dataset()
        header.update(base)
        for group in (shared, per_frame[index] if index < len(per_frame) else None):
            for macro, keywords in FRAME_MACROS.items():
                item = _first_item(group, macro)
                for keyword in keywords:
                    if item is not None and keyword in item:
                        header.add(item[keyword])
        headers.append(header)
    return headers


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None or keyword not in ds or not ds[keyword].value:
        return None
    return ds[keyword].value[0]


# --- values ---------------------------------------------------------------------------------------
def rescale(stored: np.ndarray, headers: list[Dataset], source: Path) -> np.ndarray:
    """Stored values → real values (HU for CT) through each slice's RescaleSlope/Intercept.
    int16 when that is exact, float32 otherwise. Slice by slice, into `stored` itself when it is 16-bit
    and the result int16 (so `stored` may be overwritten): no full-volume temporaries."""
    slopes = np.array([float(h.get("RescaleSlope", 1) or 1) for h in headers])
    intercepts = np.array([float(h.get("RescaleIntercept", 0) or 0) for h in headers])
    check_rescale(stored, slopes, intercepts, source)
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        lo = int(stored.min()) + int(intercepts.min()) if stored.size else 0
        hi = int(stored.max()) + int(intercepts.max()) if stored.size else 0
        if -32768 <= lo and hi <= 32767:
            return _add_intercepts(stored, intercepts.astype(np.int32))
    out = np.empty(stored.shape, np.float32)
    for k in range(len(stored)):  # float64 per slice, as the whole-volume expression computed it
        out[k] = stored[k] * slopes[k] + intercepts[k]
    return out


def _add_intercepts(stored: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """int16 stored + intercept per slice (the caller checked the range)."""
    if stored.dtype == np.int16 or stored.dtype == np.uint16:
        out = stored.view(np.int16)  # each slice is read (into int32) before it is overwritten
    else:
        out = np.empty(stored.shape, np.int16)
    for k in range(len(stored)):
        out[k] = stored[k].astype(np.int32) + intercepts[k]
    return out


def check_rescale(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, source: Path) -> None:
    """A zero or non-finite RescaleSlope, or values beyond float32, would make a meaningless volume."""
    if not np.all(np.isfinite(slopes)) or np.any(slopes == 0) or not np.all(np.isfinite(intercepts)):
        raise MedfakeError(f"unusable RescaleSlope/RescaleIntercept ({slopes[0]:g} / {intercepts[0]:g})", source)
    if stored.size:
        extremes = np.array([float(stored.min()), float(stored.max())])
        largest = np.max(np.abs(np.outer(slopes, extremes) + intercepts[:, None]))
        if not largest < np.finfo(np.float32).max:
            raise MedfakeError(f"RescaleSlope/RescaleIntercept give values beyond float32 (up to {largest:.3g})",
                               source)


def pad_value(modality: str, values: np.ndarray) -> float:
    return AIR_HU if modality == "CT" else float(values.min())


# --- assembling a volume ---------------------------------------------------------------------------
def build_scan(images: list[Image2D], source: Path, extra_meta: dict, decode=None) -> Scan:
    """Stack 2-D images into a Scan with geometry from their headers (gaps filled with padding).
    `decode(image)`: the stored pixels of an image that has none yet (read one at a time, in stack order)."""
    sizes = Counter((int(im.header.Rows), int(im.header.Columns)) for im in images)
    if len(sizes) > 1:
        odd = next(im for im in images if (int(im.header.Rows), int(im.header.Columns)) != sizes.most_common(1)[0][0])
        listing = ", ".join(f"{r}x{c} in {n}" for (r, c), n in sizes.most_common())
        raise MedfakeError(f"slices of different sizes in one series ({listing}), e.g. {odd.path.name}", source)
    geometry: StackGeometry = plan_stack([im.header for im in images], source)
    ordered = [images[i] for i in geometry.order]
    values = rescale(stack_pixels(ordered, decode), [im.header for im in ordered], source)
    modality = str(ordered[0].header.get("Modality", "") or "OT").upper()
    volume = fill_gaps(values, geometry.slots, pad_value(modality, values))
    meta = {
        "format": "dicom",
        "series_uid": str(ordered[0].header.get("SeriesInstanceUID", "")),
        "files": [str(im.path) for im in ordered],
        "dicom": [im.header for im in ordered],
        "dicom_slots": geometry.slots,
        "gaps": geometry.gaps,
        "warnings": geometry.warnings + extra_meta.pop("warnings", []),
        **extra_meta,
    }
    return Scan(volume, geometry.spacing, geometry.origin, geometry.direction, modality, meta, str(source))


def stack_pixels(images: list[Image2D], decode=None) -> np.ndarray:
    """The images' stored pixels in one array allocated once (what np.stack gives, without holding every
    slice twice); mixed pixel types widen as np.stack would."""
    out = None
    for k, image in enumerate(images):
        pixels = image.pixels if image.pixels is not None else decode(image)
        if out is None:
            out = np.empty((len(images), *pixels.shape), pixels.dtype)
        elif np.result_type(out.dtype, pixels.dtype) != out.dtype:
            out = out.astype(np.result_type(out.dtype, pixels.dtype))
        out[k] = pixels
    return out


def fill_gaps(values: np.ndarray, slots: list[int | None], pad: float) -> np.ndarray:
    if all(slot is not None for slot in slots):
        return values
    out = np.full((len(slots),) + values.shape[1:], pad, dtype=values.dtype)
    for z, slot in enumerate(slots):
        if slot is not None:
            out[z] = values[slot]
    return out


def load_multiframe(path: Path, ds: Dataset) -> Scan:
    check_image(ds, path)
    stored = decode_pixels(ds, path)
    images = [Image2D(h, path, stored[i]) for i, h in enumerate(frame_headers(ds))]
    return build_scan(images, path, {"multiframe": True, "sop_class": str(ds.get("SOPClassUID", ""))})


def load_file(path: Path) -> Scan:
    ds = read_dataset(path, header_only=False, must_be_dicom=True)
    check_image(ds, path)
    if is_multiframe(ds):
        return load_multiframe(path, ds)
    image = Image2D(header_without_pixels(ds), path, decode_pixels(ds, path)[0])
    return build_scan([image], path, {"sop_class": str(ds.get("SOPClassUID", ""))})


def scan_folder(folder: Path) -> tuple[dict[str, SeriesInfo], list[tuple[Path, Dataset]]]:
    """Headers of every DICOM file below `folder`, grouped by series; non-image objects returned apart."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MedfakeError("folder is empty", folder)
    series: dict[str, SeriesInfo] = {}
    others = []
    for path in files:
        ds = read_dataset(path, header_only=True, must_be_dicom=False)
        if ds is None:
            continue
        if not is_image(ds):
            others.append((path, ds))
            continue
        check_pixel_description(ds, path)
        uid = str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        series.setdefault(uid, SeriesInfo(uid)).files.append((path, ds))
    return series, others


def choose_series(series: dict[str, SeriesInfo], wanted: str | None, folder: Path) -> SeriesInfo:
    listing = "; ".join(s.describe() for s in sorted(series.values(), key=lambda s: -len(s.files)))
    if wanted:
        matches = [s for uid, s in series.items() if uid == wanted] or \
                  [s for uid, s in series.items() if uid.startswith(wanted)]
        if len(matches) != 1:
            raise MedfakeError(f"series '{wanted}' {'is ambiguous' if matches else 'not found'}; "
                               f"the folder holds: {listing}", folder)
        return matches[0]
    if len(series) > 1:
        raise MedfakeError(f"folder holds {len(series)} DICOM series, choose one with --series: {listing}", folder)
    return next(iter(series.values()))


def load_folder(folder: Path, wanted: str | None) -> Scan:
    series, others = scan_folder(folder)
    if not series:
        if others:
            path, ds = others[0]
            check_image(ds, path)
        raise MedfakeError("no DICOM image files in folder", folder)
    chosen = choose_series(series, wanted, folder)
    multi = [(p, ds) for p, ds in chosen.files if is_multiframe(ds)]
    if multi:
        if len(chosen.files) > 1:
            raise MedfakeError(f"series {chosen.uid} mixes {len(multi)} multi-frame files with other files; "
                               f"load one file directly", folder)
        scan = load_multiframe(multi[0][0], read_dataset(multi[0][0], False, True))
        scan.path = str(folder)  # the input is the folder: never write into it
        return scan
    images, warnings_ = unique_instances(chosen.files)
    return build_scan(images, folder, {"warnings": warnings_, "sop_class": str(images[0].header.get("SOPClassUID", ""))},
                      decode=decode_file)


def decode_file(image: Image2D) -> np.ndarray:
    return decode_pixels(read_dataset(image.path, header_only=False, must_be_dicom=True), image.path)[0]


def unique_instances(files: list[tuple[Path, Dataset]]) -> tuple[list[Image2D], list[str]]:
    """Drop exact duplicate instances (same SOPInstanceUID) and keep the main orientation's slices."""
    seen, images, notes = set(), [], []
    for path, ds in files:
        uid = str(ds.get("SOPInstanceUID", "") or path)  # anonymised exports may blank the UID
        if uid in seen:
            continue
        seen.add(uid)
        images.append(Image2D(ds, path))
    if len(images) < len(files):
        notes.append(f"ignored {len(files) - len(images)} duplicate file(s) of the same instance")
    orientations = Counter(_orientation_key(im.header) for im in images)
    if len(orientations) > 1:
        main = orientations.most_common(1)[0][0]
        dropped = [im for im in images if _orientation_key(im.header) != main]
        images = [im for im in images if _orientation_key(im.header) == main]
        notes.append(f"ignored {len(dropped)} slice(s) with another orientation (localizer?), e.g. {dropped[0].path.name}")
    return images, notes


def _orientation_key(ds: Dataset) -> tuple:
    iop = floats_of(ds, "ImageOrientationPatient", 6)
    return tuple(np.round(iop, 3)) if iop is not None else ()


def load_dicom(path: str | Path, series: str | None = None) -> Scan:
    """A DICOM series folder, a single DICOM file or an enhanced multi-frame file → Scan (HU for CT)."""
    path = Path(path)
    if path.is_dir():
        return load_folder(path, series)
    if path.stat().st_size == 0:
        raise MedfakeError("file is empty", path)
    scan = load_file(path)
    if series and scan.meta["series_uid"] != series:
        raise MedfakeError(f"file belongs to series {scan.meta['series_uid']}, not '{series}'", path)
    return scan


__all__ = ["load_dicom", "save_dicom_series", "read_dataset", "frame_headers", "check_image"]
