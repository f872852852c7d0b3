"""Write a Scan as a classic DICOM series (one uncompressed Explicit VR Little Endian file per slice).

Output is always a new, derived series: new SeriesInstanceUID and SOPInstanceUIDs, ImageType
DERIVED\\SECONDARY and a DerivationDescription. When the scan came from DICOM, patient, study,
equipment and acquisition tags come from the source headers and values are stored back through the
source's RescaleSlope/Intercept (rounded, clipped to its stored range). Otherwise a standalone CT
(or MR) series is written: new Study/Series/FrameOfReference UIDs, every type 1 and 2 tag of the
CT/MR Image IOD, geometry from the direction matrix.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID,
                         SecondaryCaptureImageStorage, generate_uid)
from pydicom.valuerep import format_number_as_ds

from medfake.errors import MedfakeError
from medfake.scan import Scan

log = logging.getLogger("medfake")
DEFAULT_DERIVATION = "medfake: converted"
CLASSIC_STORAGE = {"CT": CTImageStorage, "MR": MRImageStorage}
# 2-D projection images (a tampered mammogram) are written as Secondary Capture, keeping their modality
PROJECTION = ("MG", "CR", "DX")
CLASSIC_STORAGE.update({m: SecondaryCaptureImageStorage for m in PROJECTION})
# tags never copied from a source header: identity of the new instances, geometry, pixel encoding
REGENERATED = {
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SeriesTime", "ImageType", "DerivationDescription", "DerivationCodeSequence", "SourceImageSequence",
    "ReferencedImageSequence", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "SliceLocation", "SpacingBetweenSlices", "NumberOfFrames", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "DimensionOrganizationSequence", "DimensionIndexSequence",
    "DimensionOrganizationType", "FrameIncrementPointer", "IconImageSequence", "InstanceCreationDate",
    "InstanceCreationTime", "ContentDate", "ContentTime", "ConcatenationUID", "InConcatenationNumber",
    "SOPInstanceUIDOfConcatenationSource", "InConcatenationTotalNumber", "PixelData",
}
KEPT_PIXEL_MODULE = {"WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
                     "RescaleType", "PixelPaddingValue", "PixelPaddingRangeLimit", "PhotometricInterpretation",
                     "PixelSpacing"}
# what an enhanced multi-frame source contributes to a classic series (its other attributes are
# multi-frame specific)
ENHANCED_KEPT = {
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "OtherPatientIDs", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
    "DeviceSerialNumber", "SoftwareVersions", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "BodyPartExamined", "PatientPosition", "ProtocolName", "AcquisitionNumber", "SliceThickness", "KVP",
    "MagneticFieldStrength", "WindowCenter", "WindowWidth", "RescaleType", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "Laterality", "Modality", "PhotometricInterpretation",
}
TYPE2_DEFAULTS = {  # present (may be empty) in every CT/MR Image IOD instance
    "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "", "StudyDate": "", "StudyTime": "",
    "ReferringPhysicianName": "", "StudyID": "", "AccessionNumber": "", "Manufacturer": "",
    "PositionReferenceIndicator": "", "AcquisitionNumber": None, "SliceThickness": None, "Laterality": None,
}
# General Series: PatientPosition is type 2C (required for CT and MR images unless a Patient Orientation
# Code Sequence is given): present, empty when unknown (like Laterality, 2C for paired body parts).
CT_TYPE2 = {"KVP": None, "PatientPosition": ""}
UNPAIRED_BODY_PARTS = {  # BodyPartExamined defined terms of unpaired parts (DICOM PS3.16 Annex L)
    "HEAD", "BRAIN", "SKULL", "NECK", "HEADNECK", "CHEST", "THORAX", "ABDOMEN", "PELVIS", "CHESTABDOMEN",
    "ABDOMENPELVIS", "CHESTABDPELVIS", "WHOLEBODY", "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX",
    "HEART", "LIVER", "PANCREAS", "SPLEEN", "STOMACH", "ESOPHAGUS", "COLON", "BLADDER", "PROSTATE", "UTERUS",
    "AORTA", "SACRUM", "SELLA", "LARYNX", "TRACHEA", "MEDIASTINUM", "RECTUM",
}
MR_REQUIRED = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "",
               "EchoTime": None, "EchoTrainLength": None, "RepetitionTime": None, "PatientPosition": ""}


@dataclass(frozen=True)
class Encoding:
    """How real values map to stored integers: real = stored * slope + intercept."""

    slope: float
    intercept: float
    bits_stored: int
    signed: bool

    @property
    def stored_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    def store(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Stored 16-bit pixels and how many voxels had to be clipped to the stored range."""
        stored = np.rint((values.astype(np.float64) - self.intercept) / self.slope)
        lo, hi = self.stored_range
        clipped = int(np.count_nonzero((stored < lo) | (stored > hi)))
        return np.clip(stored, lo, hi).astype("<i2" if self.signed else "<u2"), clipped


def classic_modality(scan: Scan) -> str:
    """The classic IOD the scan is written as: CT, a one-slice projection image (SC), or MR for anything else."""
    if scan.modality.upper() in PROJECTION and scan.shape[0] == 1:
        return scan.modality.upper()
    return "CT" if scan.modality.upper() == "CT" else "MR"


def _ds_number(value: float) -> float:
    """The value as a reader will see it after writing as a DICOM DS string (16 characters)."""
    return float(format_number_as_ds(float(value)))


def standalone_encoding(voxels: np.ndarray, modality: str) -> Encoding:
    """int16 with intercept -1024 for CT (whole HU); integers kept exactly when they fit in 16 bits."""
    lo, hi = (float(voxels.min()), float(voxels.max())) if voxels.size else (0.0, 0.0)
    integral = np.issubdtype(voxels.dtype, np.integer) or bool(np.all(np.mod(voxels, 1) == 0))
    if modality == "CT" or integral:
        lo, hi = np.floor(lo), np.ceil(hi)
        base = -1024.0 if modality == "CT" else 0.0
        if lo - base >= -32768 and hi - base <= 32767:
            return Encoding(1.0, base, 16, True)
        if hi - lo <= 65535:
            return Encoding(1.0, lo, 16, False)
    slope = _ds_number((hi - lo) / 65535.0) if hi > lo else 1.0
    return Encoding(slope, _ds_number(lo), 16, False)


def source_encoding(header: Dataset) -> Encoding | None:
    """The source slice's encoding, when it is a 16-bit grey image."""
    if int(header.get("BitsAllocated", 0) or 0) != 16 or "BitsStored" not in header:
        return None
    return Encoding(float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0),
                    int(header.BitsStored), int(header.get("PixelRepresentation", 0) or 0) == 1)


# --- which source header serves as the template of each output slice ----------------------------
def slice_templates(scan: Scan) -> tuple[list[Dataset | None], bool]:
    """Per output slice: the source header to derive from (or None), and whether slices correspond 1:1."""
    headers = scan.meta.get("dicom") or []
    nz, ny, nx = scan.shape
    if not headers:
        return [None] * nz, False
    slots = scan.meta.get("dicom_slots") or list(range(len(headers)))
    same_size = all((int(h.get("Rows", 0)), int(h.get("Columns", 0))) == (ny, nx) for h in headers)
    if len(slots) == nz and same_size:
        return [headers[_nearest_slot(slots, z)] for z in range(nz)], True
    return [headers[0]] * nz, False


def _nearest_slot(slots: list[int | None], z: int) -> int:
    for distance in range(len(slots)):
        for candidate in (z - distance, z + distance):
            if 0 <= candidate < len(slots) and slots[candidate] is not None:
                return slots[candidate]
    return 0


# --- building one slice ----------------------------------------------------------------------------
@dataclass
class SeriesIds:
    study_uid: str
    series_uid: str
    frame_uid: str
    now: dt.datetime
    derivation: str


def copy_source_tags(ds: Dataset, template: Dataset) -> None:
    enhanced = "PerFrameFunctionalGroupsSequence" in template or "NumberOfFrames" in template or \
        str(template.get("SOPClassUID", "")) not in CLASSIC_STORAGE.values()
    for elem in template:
        keyword = elem.keyword
        if elem.tag.is_private or elem.tag.group in (0x0002, 0x7FE0) or 0x5000 <= elem.tag.group <= 0x60FF:
            continue
        if keyword in REGENERATED or (elem.tag.group == 0x0028 and keyword not in KEPT_PIXEL_MODULE):
            continue
        if enhanced and keyword not in ENHANCED_KEPT:
            continue
        ds.add(copy.deepcopy(elem))


def is_unpaired_part(ds: Dataset) -> bool:
    return str(ds.get("BodyPartExamined", "") or "").strip().upper().replace(" ", "") in UNPAIRED_BODY_PARTS


def fill_required(ds: Dataset, modality: str) -> None:
    extra = CT_TYPE2 if modality == "CT" else {"ConversionType": "WSD"} if modality in PROJECTION else MR_REQUIRED
    for keyword, value in {**TYPE2_DEFAULTS, **extra}.items():
        # Laterality (type 2C) is for paired body parts: present (empty: unknown) unless the body part is unpaired
        if keyword not in ds and not (keyword == "Laterality" and is_unpaired_part(ds)):
            setattr(ds, keyword, value)


def set_identity(ds: Dataset, scan: Scan, template: Dataset | None, ids: SeriesIds, index: int) -> None:
    modality = classic_modality(scan)
    ds.SOPClassUID = CLASSIC_STORAGE[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.StudyInstanceUID = str(template.get("StudyInstanceUID", "")) if template is not None else ""
    ds.StudyInstanceUID = ds.StudyInstanceUID or ids.study_uid
    ds.FrameOfReferenceUID = (str(template.get("FrameOfReferenceUID", "")) if template is not None else "") or ids.frame_uid
    ds.SeriesInstanceUID = ids.series_uid
    source_number = template.get("SeriesNumber") if template is not None else None
    ds.SeriesNumber = int(source_number) + 1000 if source_number not in (None, "") else 1
    source_text = str(template.get("SeriesDescription", "")) if template is not None else ""
    if not source_text.startswith("medfake derived"):
        source_text = f"medfake derived: {source_text}".strip().rstrip(":")
    ds.SeriesDescription = source_text[:64]
    source_type = list(template.get("ImageType", [])) if template is not None else ["", "", "AXIAL"]
    ds.ImageType = ["DERIVED", "SECONDARY", *source_type[2:]]
    ds.DerivationDescription = ids.derivation[:1024]
    date, time = ids.now.strftime("%Y%m%d"), ids.now.strftime("%H%M%S")
    for prefix in ("Series", "Content", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    if template is None:
        ds.StudyDate, ds.StudyTime = date, time
        ds.PatientName, ds.PatientID, ds.Manufacturer = "Anonymous", "medfake", "medfake"
        ds.StudyDescription = "medfake standalone series"
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceNumber = index + 1


def set_geometry(ds: Dataset, scan: Scan, index: int) -> None:
    direction = scan.direction
    position = scan.voxel_to_world((index, 0, 0))
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*direction[:, 0], *direction[:, 1])]
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    ds.PixelSpacing = [format_number_as_ds(scan.spacing[1]), format_number_as_ds(scan.spacing[2])]
    normal = np.cross(direction[:, 0], direction[:, 1])
    ds.SliceLocation = format_number_as_ds(float(position @ normal))
    if "SliceThickness" not in ds or ds.SliceThickness in (None, ""):
        ds.SliceThickness = format_number_as_ds(scan.spacing[0])
    if scan.modality.upper() != "CT":
        ds.SpacingBetweenSlices = format_number_as_ds(scan.spacing[0])


def set_pixels(ds: Dataset, values: np.ndarray, encoding: Encoding, modality: str) -> int:
    stored, clipped = encoding.store(values)
    ds.SamplesPerPixel = 1
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 1 if encoding.signed else 0
    if modality == "CT" or (encoding.slope, encoding.intercept) != (1.0, 0.0):
        ds.RescaleIntercept = format_number_as_ds(encoding.intercept)
        ds.RescaleSlope = format_number_as_ds(encoding.slope)
        if modality == "CT" and "RescaleType" not in ds:
            ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return clipped


def add_source_reference(ds: Dataset, template: Dataset) -> None:
    if not template.get("SOPInstanceUID") or not template.get("SOPClassUID"):  # anonymised sources may blank them
        return
    item = Dataset()
    item.ReferencedSOPClassUID = template.SOPClassUID
    item.ReferencedSOPInstanceUID = template.SOPInstanceUID
    ds.SourceImageSequence = [item]


def with_file_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def build_slice(scan: Scan, index: int, template: Dataset | None, matched: bool, ids: SeriesIds,
                fallback: Encoding) -> tuple[Dataset, int]:
    ds = Dataset()
    modality = classic_modality(scan)
    if template is not None:
        copy_source_tags(ds, template)
        if matched and not ("PerFrameFunctionalGroupsSequence" in template or "NumberOfFrames" in template):
            add_source_reference(ds, template)
    set_identity(ds, scan, template, ids, index)
    set_geometry(ds, scan, index)
    encoding = (source_encoding(template) if template is not None else None) or fallback
    clipped = set_pixels(ds, scan.voxels[index], encoding, modality)
    fill_required(ds, modality)
    return with_file_meta(ds), clipped


def check_writable(scan: Scan) -> None:
    """DICOM stores integers and an orthonormal in-plane frame (the slice axis is implied by positions)."""
    if np.issubdtype(scan.voxels.dtype, np.floating) and not np.all(np.isfinite(scan.voxels)):
        raise MedfakeError("the scan has NaN or infinite voxels, which DICOM cannot store", scan.path)
    if not np.allclose(scan.direction.T @ scan.direction, np.eye(3), atol=1e-4):
        raise MedfakeError("the direction matrix is not orthonormal (sheared), which DICOM cannot store; "
                           "save as NRRD instead", scan.path)


def save_dicom_series(scan: Scan, folder: str | Path, derivation: str | None = None) -> list[Path]:
    """Write `scan` as a derived classic DICOM series into `folder` (callers pass a temporary folder)."""
    folder = Path(folder)
    check_writable(scan)
    folder.mkdir(parents=True, exist_ok=True)
    templates, matched = slice_templates(scan)
    ids = SeriesIds(generate_uid(), generate_uid(), generate_uid(), dt.datetime.now(),
                    derivation or DEFAULT_DERIVATION)
    fallback = standalone_encoding(scan.voxels, classic_modality(scan))
    width = max(4, len(str(scan.shape[0])))
    paths, clipped = [], 0
    for index, template in enumerate(templates):
        ds, count = build_slice(scan, index, template, matched, ids, fallback)
        clipped += count
        path = folder / f"IM{index + 1:0{width}d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    if clipped:
        log.warning("%d voxels were outside the stored DICOM range and were clipped", clipped)
    return paths
