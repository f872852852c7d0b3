"""The keyed fragile watermark on a real lung1 slab (8 slices around the nodule): the budget holds on every stored
voxel, the right key finds it intact, a wrong key or an unmarked scan finds nothing, an in-painted site is found
where it was made; CLI end to end (derived DICOM, the key never written) and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from clihelp import assert_one_line_error
from medfake.cli import main
from medfake.errors import MedfakeError
from medfake.io import load_scan
from medfake.protect import watermark as wm
from medfake.protect.config import ProtectConfig
from medfake.protect.run import protect_scan
from medfake.protect.threats import classical_attack

NODULE = (4, 359, 218)  # lung1's nodule in the slab (z 29..36)
HEALTHY = [(3, 380, 140), (4, 400, 360), (2, 320, 380), (2, 300, 200), (4, 320, 360), (2, 400, 140)]  # lung windows
KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def slab_lungs(lung1_slab):
    from medfake.lungmask import lung_mask

    return lung_mask(lung1_slab)


@pytest.fixture(scope="module")
def marked(lung1_slab, slab_lungs):
    return protect_scan(lung1_slab, [], ProtectConfig(8.0, method="watermark", key=KEY), slab_lungs)


def test_budget_holds_on_every_stored_voxel_and_only_in_the_lungs(lung1_slab, slab_lungs, marked):
    change = marked.voxels.astype(np.int32) - lung1_slab.voxels.astype(np.int32)
    assert marked.voxels.dtype == lung1_slab.voxels.dtype
    assert np.abs(change).max() == 8 and not change[~slab_lungs].any()
    assert 3.5 < change[slab_lungs].std() < 6  # the pattern spends the budget (~5 HU rms), not a few voxels
    everywhere = wm.embed(lung1_slab, KEY, 5.7, np.ones(lung1_slab.shape, bool))
    assert np.abs(everywhere.voxels.astype(np.int32) - lung1_slab.voxels).max() == 5  # integer part of 5.7
    with pytest.raises(MedfakeError, match="needs a key"):
        ProtectConfig(8.0, method="watermark").validate()


def test_right_key_finds_it_intact_a_wrong_key_or_an_unmarked_scan_nothing(lung1_slab, slab_lungs, marked):
    right = wm.verify(marked, KEY, slab_lungs)
    assert right.present and right.global_correlation > 0.1 and right.findings == []
    assert 0.8 < np.nanmedian(right.strength) < 1.2
    wrong = wm.verify(marked, KEY + "!", slab_lungs)
    assert not wrong.present and abs(wrong.global_correlation) < 0.01 and wrong.findings == []
    unmarked = wm.verify(lung1_slab, KEY, slab_lungs)
    assert not unmarked.present and "no watermark found" in wm.verdict(unmarked)
    assert wm.key_fingerprint(KEY) != wm.key_fingerprint(KEY + "!") and KEY not in wm.key_fingerprint(KEY)


def test_an_inpainted_site_is_found_where_it_was_made(marked, slab_lungs):
    site = HEALTHY[0]
    tampered = classical_attack("inpaint")(marked, site)
    result = wm.verify(tampered, KEY, slab_lungs)
    assert result.present and len(result.findings) == 1
    z, y, x = result.findings[0]["voxel_zyx"]
    assert abs(z - site[0]) <= 1 and np.hypot(y - site[1], x - site[2]) < 12  # voxels of 0.57 mm: < 7 mm
    ev, clean = wm.evidence(tampered, KEY, slab_lungs), wm.evidence(marked, KEY, slab_lungs)
    assert 6 < ev.reference < 8.5  # HU: ~0.95 of the 8 HU budget over the whole lung
    assert wm.site_score(ev, site) < 0.3 * ev.reference
    untouched = [wm.site_score(clean, s) for s in HEALTHY] + [wm.site_score(ev, s) for s in HEALTHY[1:]]
    assert min(untouched) > 0.6 * ev.reference
    wrong = wm.evidence(marked, "wrong", slab_lungs)
    assert np.mean([abs(wm.site_score(wrong, s)) for s in HEALTHY]) < 0.3 * ev.reference


def test_cli_end_to_end_dicom_and_errors(lung1_dicom, tmp_path, capsys):
    out = tmp_path / "marked"
    main(["protect", str(lung1_dicom), "-o", str(out), "--method", "watermark", "--key", KEY])
    written = out / "series_protected"
    change = load_scan(written).voxels.astype(np.int32) - load_scan(lung1_dicom).voxels
    assert np.abs(change).max() == 8
    ds = pydicom.dcmread(sorted(written.iterdir())[0])
    assert "DERIVED" in ds.ImageType and "watermark" in ds.DerivationDescription
    assert wm.key_fingerprint(KEY) in ds.DerivationDescription
    record = json.loads((out / "series_protected.protection.json").read_text())["config"]
    assert record["method"] == "watermark" and record["key_fingerprint"] == wm.key_fingerprint(KEY)
    for path in out.rglob("*"):  # the key is written nowhere
        assert path.is_dir() or KEY.encode() not in path.read_bytes()

    main(["verify-watermark", str(written), "--key", KEY, "-o", str(tmp_path / "ok")])
    report = json.loads((tmp_path / "ok" / "watermark.json").read_text())["config"]
    assert report["watermark_found"] and report["findings"] == [] and report["global_correlation"] > 0.1
    assert (tmp_path / "ok" / "watermark.png").stat().st_size > 10_000
    main(["verify-watermark", str(lung1_dicom), "--key", KEY, "-o", str(tmp_path / "none")])
    report = json.loads((tmp_path / "none" / "watermark.json").read_text())["config"]
    assert not report["watermark_found"] and report["verdict"].startswith("no watermark found")
    assert "no watermark found" in capsys.readouterr().out

    assert_one_line_error(["protect", str(lung1_dicom), "-o", str(tmp_path / "x"), "--method", "watermark"], capsys,
                          "needs a key")
    assert_one_line_error(["verify-watermark", str(written), "-o", str(tmp_path / "y")], capsys, "needs a key")
    assert_one_line_error(["verify-watermark", str(tmp_path / "missing"), "--key", KEY, "-o", str(tmp_path / "z")],
                          capsys, "missing")


def test_a_copy_resampled_onto_another_grid_is_checked_with_the_protection_record(lung1_slab, marked, tmp_path,
                                                                                  capsys):
    from scipy import ndimage

    from medfake.io import save_scan

    zoom = [1.0, lung1_slab.spacing[1] / 0.8, lung1_slab.spacing[2] / 0.8]  # 0.57 mm pixels onto 0.8 mm
    voxels = ndimage.zoom(marked.voxels.astype(np.float32), zoom, order=1)
    spacing = (marked.spacing[0],
               *(s * n / m for s, n, m in zip(marked.spacing[1:], marked.shape[1:], voxels.shape[1:])))
    moved = marked.with_voxels(np.rint(voxels).astype(np.int16), spacing=spacing)
    grid = wm.Grid.of(marked)
    assert not grid.matches(moved) and grid.matches(marked)
    assert not wm.verify(moved, KEY).present  # the pattern lives on the voxel grid
    found = wm.verify(moved, KEY, grid=grid)
    assert found.present and found.global_correlation > 0.05 and found.findings == []
    assert abs(wm.verify(moved, "wrong", grid=grid).global_correlation) < 0.01
    # the CLI: the record protect writes carries the grid; --record maps the pattern onto the resampled copy
    main(["protect", str(save_scan(lung1_slab, tmp_path / "slab.nrrd")), "-o", str(tmp_path / "p"),
          "--method", "watermark", "--key", KEY])
    record = next((tmp_path / "p").glob("*.protection.json"))
    assert json.loads(record.read_text())["config"]["grid"]["shape"] == list(lung1_slab.shape)
    main(["verify-watermark", str(save_scan(moved, tmp_path / "moved.nrrd")), "--key", KEY, "--record", str(record),
          "-o", str(tmp_path / "v")])
    report = json.loads((tmp_path / "v" / "watermark.json").read_text())["config"]
    assert report["watermark_found"] and report["grid_from"] == str(record)
    (tmp_path / "bad.json").write_text("{}")
    assert_one_line_error(["verify-watermark", str(tmp_path / "moved.nrrd"), "--key", KEY, "--record",
                           str(tmp_path / "bad.json"), "-o", str(tmp_path / "w")], capsys,
                          "bad.json: not a watermark protection record (no grid)")
