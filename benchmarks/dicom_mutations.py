"""The mutations of `fuzz_dicom.py`: real DICOM files and series, broken in the ways files break.

Single files: truncation at a random offset, random byte flips in the header, deleted geometry tags, wrong
VRs (two VR bytes overwritten), absurd values, huge element lengths. Series (a folder): one slice truncated,
flipped, stripped of a tag or given an absurd value (or all slices), duplicate positions, mixed series.
Every case is deterministic: (kind, source, seed).
"""

from __future__ import annotations

import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                 "BitsAllocated")
OTHER_TAGS = ("BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
              "PixelData", "SOPClassUID", "SeriesInstanceUID", "Modality", "NumberOfFrames", "RescaleSlope")
ABSURD = [
    ("PixelSpacing", ["0", "0"]), ("PixelSpacing", ["-0.7", "-0.7"]), ("PixelSpacing", ["nan", "nan"]),
    ("PixelSpacing", ["1e308", "1e308"]), ("PixelSpacing", ["0.5"]), ("Rows", 0), ("Columns", 0),
    ("Rows", 65535), ("Columns", 1), ("BitsAllocated", 7), ("BitsAllocated", 0), ("BitsAllocated", 64),
    ("BitsStored", 0), ("BitsStored", 17), ("HighBit", 40), ("PixelRepresentation", 2), ("SamplesPerPixel", 0),
    ("SamplesPerPixel", 3), ("NumberOfFrames", "0"), ("NumberOfFrames", "-3"), ("NumberOfFrames", "100000"),
    ("SliceThickness", "0"), ("SliceThickness", "-5"), ("SpacingBetweenSlices", "-1"), ("RescaleSlope", "0"),
    ("RescaleSlope", "1e300"), ("RescaleSlope", "nan"), ("RescaleIntercept", "inf"),
    ("ImageOrientationPatient", ["0"] * 6), ("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]),
    ("ImageOrientationPatient", ["1e308", "0", "0", "0", "1", "0"]), ("ImagePositionPatient", ["nan", "0", "0"]),
    ("ImagePositionPatient", ["1e308", "1e308", "1e308"]), ("ImagePositionPatient", ["1", "2"]),
    ("PhotometricInterpretation", "PALETTE COLOR"), ("PhotometricInterpretation", "YBR_FULL"),
    ("WindowWidth", "0"), ("InstanceNumber", "-2147483648"), ("Modality", "SEG"),
]
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")
BAD_VRS = ("ZZ", "  ", "\0\0", "ds", "U?", "XQ")
LONG_FORM = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
HUGE_LENGTHS = (0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFF, 0x00FFFFFF, 0xFFFF)


@dataclass(frozen=True)
class Case:
    kind: str
    source: str  # a file, or a series folder for the series kinds
    seed: int

    @property
    def label(self) -> str:
        return f"{self.kind}:{Path(self.source).name}:{self.seed}"


# --- sources ----------------------------------------------------------------------------------------
def file_sources(max_bytes: int = 1_500_000) -> list[Path]:
    """The pydicom and pydicom-data test files (skipping very large ones to keep the run short)."""
    from medfake.data.samples import sample_path

    folders = {sample_path("pydicom/CT_small.dcm").parent, sample_path("pydicom-data/liver.dcm").parent}
    return sorted(p for folder in folders for p in folder.glob("*.dcm") if p.stat().st_size <= max_bytes)


def series_sources(workdir: Path, slices: int = 8) -> list[Path]:
    """Two real CT series of `slices` slices: the middle of TotalSegmentator's example_ct_dicom (JPEG 2000,
    blank SOPInstanceUIDs, as exported) and lung1 written by medfake as an uncompressed DICOM series."""
    from medfake.data.samples import fetch, sample_path
    from medfake.io import load_scan, save_scan

    example = workdir / f"example_ct_dicom_{slices}"
    if not example.exists():
        files = sorted((fetch("totalsegmentator") / "example_ct_dicom").iterdir())
        middle = len(files) // 2 - slices // 2
        example.mkdir(parents=True)
        for file in files[middle: middle + slices]:
            shutil.copy(file, example / file.name)
    lung1_series = workdir / f"lung1_{slices}"
    if not lung1_series.exists():
        lung1 = load_scan(sample_path("lung1"))
        first = 33 - slices // 2  # around the nodule
        slab = lung1.with_voxels(np.ascontiguousarray(lung1.voxels[first: first + slices]),
                                 origin=tuple(lung1.voxel_to_world((first, 0, 0))), meta={"format": "nrrd"})
        save_scan(slab, lung1_series, format="dicom")
    return [example, lung1_series]


# --- helpers to edit files ---------------------------------------------------------------------------
def read_any(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def write_any(ds: Dataset, path: Path) -> None:
    """Write `ds` as it was encoded, whatever its values (validation off while writing)."""
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path, enforce_file_format=False)
    finally:
        pydicom_config.settings.writing_validation_mode = old


def pixel_data_offset(data: bytes) -> int:
    """Where the pixel data element starts (the header ends), else the end of the file."""
    found = [i for i in (data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10")) if i > 0]
    return min(found) if found else len(data)


def raw_elements(path: Path) -> list:
    """The top-level raw elements of the main data set, with where their values start in the file
    (none for a deflated data set, whose offsets are in the inflated stream)."""
    ds = read_any(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == pydicom.uid.DeflatedExplicitVRLittleEndian:
            return []
    return [elem for elem in ds._dict.values() if getattr(elem, "value_tell", None) and elem.tag.group != 0x7FE0]


def suits(kind: str, path: Path) -> bool:
    """Raw-byte mutations need elements with known offsets (and explicit VRs for wrong_vr)."""
    if kind not in ("wrong_vr", "huge_length"):
        return True
    elements = raw_elements(path)
    return bool(elements) and (kind == "huge_length" or not elements[0].is_implicit_VR)


def _nested_items(ds: Dataset):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield item
                yield from _nested_items(item)


def delete_everywhere(ds: Dataset, keyword: str) -> None:
    for item in [ds, *_nested_items(ds)]:
        if keyword in item:
            del item[keyword]


def set_everywhere(ds: Dataset, keyword: str, value) -> None:
    """Set `keyword` at the top level and wherever a nested item (functional group) also holds it."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    items = [item for item in _nested_items(ds) if keyword in item]
    for item in [ds, *items]:
        if keyword in item:
            item[keyword].value = value
        else:
            item.add_new(tag, dictionary_VR(tag), value)


def set_native_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Store `pixels` uncompressed (the source may be JPEG 2000)."""
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def _copy_series(source: Path, out: Path) -> list[Path]:
    shutil.copytree(source, out)
    return sorted(p for p in out.iterdir() if p.is_file())


# --- single-file mutations ---------------------------------------------------------------------------
def truncate(source: Path, rng, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: int(rng.integers(0, len(data)))])
    return out


def flip(source: Path, rng, out: Path) -> Path:
    data = bytearray(source.read_bytes())
    end = pixel_data_offset(bytes(data))
    for _ in range(int(rng.integers(1, 5))):
        position = int(rng.integers(0, end))
        data[position] ^= int(rng.integers(1, 256))
    out.write_bytes(bytes(data))
    return out


def delete_tag(source: Path, rng, out: Path) -> Path:
    ds = read_any(source)
    present = [k for k in GEOMETRY_TAGS if k in ds or any(k in i for i in _nested_items(ds))]
    choices = present if present and rng.random() < 0.8 else [k for k in OTHER_TAGS if k in ds] or list(GEOMETRY_TAGS)
    delete_everywhere(ds, str(rng.choice(choices)))
    write_any(ds, out)
    return out


def wrong_vr(source: Path, rng, out: Path) -> Path:
    """Overwrite the two VR bytes of one element (an explicit VR source): another VR or no VR at all."""
    elements = raw_elements(source)
    interesting = [e for e in elements if pydicom.datadict.keyword_for_tag(e.tag) in GEOMETRY_TAGS + OTHER_TAGS]
    pool = interesting if interesting and rng.random() < 0.6 else elements
    elem = pool[int(rng.integers(0, len(pool)))]
    new_vr = str(rng.choice(BAD_VRS if rng.random() < 0.3 else VRS))
    data = bytearray(source.read_bytes())
    vr_at = elem.value_tell - (8 if elem.VR in LONG_FORM else 4)
    data[vr_at: vr_at + 2] = new_vr.encode("latin-1")
    out.write_bytes(bytes(data))
    return out


def absurd(source: Path, rng, out: Path) -> Path:
    ds = read_any(source)
    keyword, value = ABSURD[int(rng.integers(0, len(ABSURD)))]
    set_everywhere(ds, keyword, value)
    write_any(ds, out)
    return out


def huge_length(source: Path, rng, out: Path) -> Path:
    elem = (elements := raw_elements(source))[int(rng.integers(0, len(elements)))]
    data = bytearray(source.read_bytes())
    order = "<" if elem.is_little_endian else ">"
    length = HUGE_LENGTHS[int(rng.integers(0, len(HUGE_LENGTHS)))]
    if not elem.is_implicit_VR and elem.VR not in LONG_FORM:
        data[elem.value_tell - 2: elem.value_tell] = np.array(min(length, 0xFFFF), dtype=f"{order}u2").tobytes()
    else:
        data[elem.value_tell - 4: elem.value_tell] = np.array(length, dtype=f"{order}u4").tobytes()
    out.write_bytes(bytes(data))
    return out


# --- series mutations (the source is a folder) ------------------------------------------------------
def _one_or_all(files: list[Path], rng) -> list[Path]:
    return files if rng.random() < 0.4 else [files[int(rng.integers(0, len(files)))]]


def series_truncate(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    truncate(victim, rng, victim)
    return out


def series_flip(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    flip(victim, rng, victim)
    return out


def series_delete_tag(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    keyword = str(rng.choice(GEOMETRY_TAGS))
    for path in _one_or_all(files, rng):
        ds = read_any(path)
        delete_everywhere(ds, keyword)
        write_any(ds, path)
    return out


def series_absurd(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    keyword, value = ABSURD[int(rng.integers(0, len(ABSURD)))]
    for path in _one_or_all(files, rng):
        ds = read_any(path)
        set_everywhere(ds, keyword, value)
        write_any(ds, path)
    return out


def duplicate_position(source: Path, rng, out: Path) -> Path:
    """A slice moved onto another's position, or an extra copy of a slice (same or new SOPInstanceUID)."""
    files = _copy_series(source, out)
    i, j = (int(v) for v in rng.choice(len(files), size=2, replace=False))
    variant = int(rng.integers(0, 3))
    if variant == 0:
        target = read_any(files[j])
        target.ImagePositionPatient = read_any(files[i]).ImagePositionPatient
        write_any(target, files[j])
    else:
        copy = read_any(files[i])
        if variant == 2:
            copy.SOPInstanceUID = generate_uid()
        write_any(copy, out / f"copy_{files[i].name}")
    return out


def mixed_series(source: Path, rng, out: Path) -> Path:
    files = _copy_series(source, out)
    victim = files[int(rng.integers(0, len(files)))]
    variant = int(rng.integers(0, 8))
    if variant == 0:  # a foreign image dropped into the folder
        others = file_sources()
        shutil.copy(others[int(rng.integers(0, len(others)))], out / "foreign.dcm")
        return out
    if variant == 1:  # a second series (same images, new UIDs) in a subfolder
        series_uid = generate_uid()
        for path in _copy_series(source, out / "sub"):
            ds = read_any(path)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            write_any(ds, path)
        return out
    if variant == 2:  # junk that is not DICOM at all
        (out / "notes.txt").write_bytes(rng.bytes(int(rng.integers(0, 4000))))
        return out
    ds = read_any(victim)
    if variant == 3:
        ds.SeriesInstanceUID = generate_uid()
    elif variant == 4:  # one slice cropped to another size
        pixels = ds.pixel_array[: ds.Rows // 2, : ds.Columns // 3].copy()
        ds.Rows, ds.Columns = pixels.shape
        set_native_pixels(ds, pixels)
    elif variant == 5:  # one slice in another orientation (a localizer?)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    elif variant == 6:  # one slice stored as 8 bits
        pixels = (ds.pixel_array // 256).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        set_native_pixels(ds, pixels)
    else:  # another modality and rescale
        ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "MR", "2.5", "-7"
    write_any(ds, victim)
    return out


FILE_KINDS = {"truncate": truncate, "flip": flip, "delete_tag": delete_tag, "wrong_vr": wrong_vr,
              "absurd": absurd, "huge_length": huge_length}
SERIES_KINDS = {"series_truncate": series_truncate, "series_flip": series_flip,
                "series_delete_tag": series_delete_tag, "series_absurd": series_absurd,
                "duplicate_position": duplicate_position, "mixed_series": mixed_series}
MUTATIONS = {**FILE_KINDS, **SERIES_KINDS}
PLAN = {"truncate": 200, "flip": 260, "delete_tag": 140, "wrong_vr": 160, "absurd": 160, "huge_length": 80,
        "series_truncate": 25, "series_flip": 30, "series_delete_tag": 40, "series_absurd": 40,
        "duplicate_position": 30, "mixed_series": 45}


def plan_cases(files: list[Path], series: list[Path], plan: dict[str, int]) -> list[Case]:
    """Deterministic cases: sources taken in turn, one seed per (kind, index)."""
    cases = []
    for kind, count in plan.items():
        sources = series if kind in SERIES_KINDS else [p for p in files if suits(kind, p)]
        for index in range(count):
            cases.append(Case(kind, str(sources[index % len(sources)]), zlib.crc32(kind.encode()) % 10_000 * 1000 + index))
    return cases


def make_input(case: Case, folder: Path) -> Path:
    """Write the mutated file or series of `case` under `folder`."""
    rng = np.random.default_rng(case.seed)
    source = Path(case.source)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (source.name if case.kind in SERIES_KINDS else f"{source.stem}_{case.kind}.dcm")
    with warnings.catch_warnings():  # pydicom complains about the values we break on purpose
        warnings.simplefilter("ignore")
        return MUTATIONS[case.kind](source, rng, out)
