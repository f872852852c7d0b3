"""Read one DICOM file's data set and make sure every value in it can be used.

pydicom decodes values lazily, so a corrupt element (an unknown VR, a value that does not fit its VR)
would otherwise fail wherever it is first touched, far from the file's name. Here every element is
decoded at once: an unreadable element the reader needs (pixel description, geometry, identity) is an
error naming the file; any other unreadable element is dropped with a warning. The numbers the reader
uses (Rows, BitsAllocated, RescaleSlope, ...) are checked to be single finite numbers in range.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medfake.errors import MedfakeError

# elements the reader cannot do without when they are present but unreadable
NEEDED = {
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "NumberOfFrames", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "PlanePositionSequence", "PlaneOrientationSequence",
    "PixelMeasuresSequence", "PixelValueTransformationSequence", "RescaleSlope", "RescaleIntercept",
}
WHOLE_NUMBERS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                 "SamplesPerPixel", "NumberOfFrames", "PlanarConfiguration")
MUST_HAVE_VALUE = ("Rows", "Columns", "BitsAllocated")
REAL_NUMBERS = ("RescaleSlope", "RescaleIntercept")
BITS_ALLOCATED = (1, 8, 16, 32, 64)


def short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:200]


def _quiet_read(path: Path, header_only: bool, force: bool = False) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=header_only, force=force)


def read_dataset(path: Path, header_only: bool, must_be_dicom: bool) -> Dataset | None:
    """The dataset in `path`, None when it is not DICOM at all (unless `must_be_dicom`).
    A file that claims to be DICOM but cannot be parsed raises a one-line error naming it."""
    from medfake.io import has_dicom_preamble

    claims_dicom = must_be_dicom or path.suffix.lower() == ".dcm" or has_dicom_preamble(path)
    try:
        return decode_all(_quiet_read(path, header_only), path)
    except InvalidDicomError:
        pass
    except MedfakeError:
        if claims_dicom:
            raise
        return None
    except Exception as exc:  # truncated or corrupt header
        if claims_dicom:
            raise MedfakeError(f"corrupt or truncated DICOM file ({short(exc)})", path) from None
        return None
    try:  # files without the 128-byte preamble (e.g. older exports)
        ds = _quiet_read(path, header_only, force=True)
        if "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds):
            return decode_all(_with_transfer_syntax(ds), path)
    except MedfakeError:
        if must_be_dicom:
            raise
    except Exception:
        pass
    if must_be_dicom:
        raise MedfakeError("not a DICOM file", path)
    return None


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """Data sets without file meta: record the encoding pydicom detected, so pixels can be decoded."""
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def decode_all(ds: Dataset, path: Path) -> Dataset:
    """Decode every element now; raise for an unreadable needed one, drop (with a warning) the others."""
    for item in (getattr(ds, "file_meta", None), ds):
        if item is not None:
            _decode_items(item, path)
    check_numbers(ds, path)
    return ds


def _is_needed(tag) -> bool:
    return tag.group in (0x0002, 0x0028, 0x7FE0) or keyword_for_tag(tag) in NEEDED


def _decode_items(ds: Dataset, path: Path) -> None:
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            _check_vr(elem)
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _decode_items(item, path)
        except MedfakeError as exc:
            raise MedfakeError(exc.message, path) from None
        except Exception as exc:
            name = keyword_for_tag(tag) or str(tag)
            if _is_needed(tag):
                raise MedfakeError(f"corrupt DICOM element {name} {tag} ({short(exc)})", path) from None
            del ds[tag]
            warnings.warn(f"{path.name}: ignored the unreadable element {name} {tag} ({short(exc)[:80]})", stacklevel=2)


def _check_vr(elem) -> None:
    """A needed element must carry the VR the standard gives it (a flipped VR byte makes nonsense values)."""
    if not _is_needed(elem.tag) or elem.tag.is_private:
        return
    try:
        expected = dictionary_VR(elem.tag)
    except KeyError:
        return
    if elem.VR not in expected.split(" or ") and elem.VR != "UN":
        raise ValueError(f"VR {elem.VR} where the standard says {expected}")


def check_numbers(ds: Dataset, path: Path) -> None:
    """The counts and rescale values the reader uses: single finite numbers (a whole one where needed)."""
    for keyword in WHOLE_NUMBERS + REAL_NUMBERS:
        if keyword not in ds:
            continue
        value = ds[keyword].value
        if value is None or value == "":
            if keyword in MUST_HAVE_VALUE:
                raise MedfakeError(f"{keyword} is empty", path)
            continue
        whole = keyword in WHOLE_NUMBERS
        if isinstance(value, (list, tuple, str, bytes)) or not _finite(value, whole):
            raise MedfakeError(f"invalid {keyword} {_show(value)} (expected one {'whole ' if whole else ''}number)", path)


def _finite(value, whole: bool) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(number) and (not whole or number == int(number))


def _show(value) -> str:
    text = repr(value if not isinstance(value, bytes) else value[:16])
    return text if len(text) <= 40 else text[:37] + "..."


def check_pixel_description(ds: Dataset, path: Path) -> None:
    """Rows, Columns, bit depths and frame count of a grey image within what DICOM allows."""
    for keyword in MUST_HAVE_VALUE:
        if keyword not in ds:
            raise MedfakeError(f"{keyword} is missing: cannot lay out the pixels", path)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        raise MedfakeError(f"image of {rows} x {columns} pixels (Rows/Columns must be at least 1)", path)
    allocated = int(ds.get("BitsAllocated") or 0)
    if allocated not in BITS_ALLOCATED:
        raise MedfakeError(f"BitsAllocated is {allocated} (expected one of {', '.join(map(str, BITS_ALLOCATED))})", path)
    stored = int(ds.get("BitsStored") or allocated)
    high = int(ds.get("HighBit") if ds.get("HighBit") is not None else stored - 1)
    if not 1 <= stored <= allocated or not 0 <= high < allocated:
        raise MedfakeError(f"BitsStored {stored} / HighBit {high} do not fit BitsAllocated {allocated}", path)
    if int(ds.get("PixelRepresentation") or 0) not in (0, 1):
        raise MedfakeError(f"PixelRepresentation is {ds.PixelRepresentation} (expected 0 or 1)", path)
    if "NumberOfFrames" in ds and ds.NumberOfFrames not in (None, "") and int(ds.NumberOfFrames) < 1:
        raise MedfakeError(f"NumberOfFrames is {ds.NumberOfFrames}", path)
