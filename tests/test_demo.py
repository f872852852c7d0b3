"""The whole tamper → detect → measure loop at a tiny size, on the real lung1 and a synthetic cohort."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import yaml
from matplotlib import image as mpimg

from medfake.cli import main
from medfake.bench.config import example_config_text, load_config

TINY = {
    "name": "tiny",
    "seed": 0,
    "cohort": {"synthetic": {"n_train": 2, "n_test": 1, "seed": 5, "n_xy": 256, "max_slices": 40},
               "real_test": ["lung1"]},
    "tamper_models": {"preset": "cpu-small", "inject": {"steps": 6}, "remove": {"steps": 6},
                      "augment": {"rotation_step_deg": 120}},
    "detectors": {"selfref": {}, "btd": {"preset": "cpu-small", "steps": 4, "batch_size": 4}, "dae": {"steps": 4},
                  "noise": {}, "supervised": {"steps": 4}},
    "attacks": [{"action": "remove", "method": "ctgan", "targets": "labels"},
                {"action": "inject", "method": "ctgan", "auto": 1},
                {"action": "inject", "method": "copy-move", "auto": 1},
                {"action": "remove", "method": "inpaint", "targets": "labels"}],
    "screen": {"scans": ["lung1"], "methods": ["ctgan"], "options": {"stride": 96, "slice_step": 4}},
}
SECTIONS = ["Summary", "Tampered locations", "ROC curves and AUC (DeLong 95% intervals)",
            "Whole-scan screening of the tampered real scan", "Training curves and snapshots", "Timings",
            "Configuration, versions and commit"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = folder / "run"
    main(["bench", str(config), "-o", str(run)])
    return config, run


def test_report_has_every_section_and_decodable_images(tiny_run):
    _, run = tiny_run
    html = (run / "report.html").read_text()
    assert re.findall(r"<h2>([^<]+)</h2>", html) == SECTIONS
    assert "src='http" not in html and "<script" not in html  # self-contained
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) >= 10
    for encoded in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(encoded)), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 16 and np.ptp(pixels) > 0


def test_auc_table_equals_results_json(tiny_run):
    _, run = tiny_run
    results = json.loads((run / "results.json").read_text())
    evaluation = json.loads(next(run.glob("cells/evaluate/evaluation/results.json")).read_text())
    expected = {(s, d): v["auc"] for s, entry in evaluation["subsets"].items() for d, v in entry.items()}
    assert {(a["subset"], a["detector"]): a["auc"] for a in results["auc"]} == expected
    html = (run / "report.html").read_text()
    roc_table = html.split("<h2>ROC curves")[1].split("</table>")[0]
    for a in results["auc"]:
        assert f"<td>{a['subset']}</td><td>{a['detector']}</td><td>{a['auc']:.3f}</td>" in roc_table
    subsets = {a["subset"] for a in results["auc"]}
    assert {"inject-ctgan-ct", "inject-copy-move-ct", "remove-ctgan-ct", "remove-inpaint-ct"} <= subsets
    assert {a["detector"] for a in results["auc"]} == {"selfref", "btd", "dae", "noise", "supervised"}
    assert results["counts"]["genuine"] >= results["counts"]["tampered"] > 0


def cad_at(scan_path, places, capsys) -> dict:
    """The `cad` command's verdicts at voxels of one file, run here on the written file: zyx → diameter or None."""
    main(["cad", str(scan_path), *[a for zyx in places for a in ("-c", ",".join(map(str, zyx)))], "--top", "50",
          "--json"])
    found = json.loads(capsys.readouterr().out)["locations"]
    return {zyx: None if f["nodule"] is None else f["nodule"]["diameter_mm"] for zyx, f in zip(places, found)}


def test_real_nodule_removal_and_the_cad_verdicts_on_lung1(tiny_run, lung1, lung1_label, capsys):
    """Every CAD verdict on the real scan (before and after, each tampering) is re-derived here by running `cad` on
    the written scans; the classical removal must succeed (the in-painted nodule is gone, as its HU shows)."""
    from medfake.io import load_scan
    from medfake.io.tables import read_manifest

    _, run = tiny_run
    capsys.readouterr()  # nothing printed before this test may reach the JSON read below
    rows = read_manifest(run / "cells" / "manifest-test.csv")
    lung1_rows = [r for r in rows if r.scan.endswith("lung1_image.nrrd")]
    removals = [r for r in lung1_rows if r.action == "remove"]
    assert {r.method for r in removals} == {"ctgan", "inpaint"}
    for r in removals:  # the labelled nodule: centre voxel ≈ (33, 359, 218)
        assert abs(r.voxel_z - 33) <= 1 and abs(r.voxel_y - 359) <= 3 and abs(r.voxel_x - 218) <= 3
    cad = {(v["output"], tuple(v["zyx"])): v for v in json.loads((run / "cells" / "cad" / "done.json").read_text())["result"]}
    assert len(cad) == len(rows) and {r.action for r in lung1_rows} == {"inject", "remove"}
    places = {}
    for r in lung1_rows:
        for path in (r.scan, r.output):
            places.setdefault(path, []).append((r.voxel_z, r.voxel_y, r.voxel_x))
    rerun = {path: cad_at(path, zyx, capsys) for path, zyx in places.items()}
    for r in lung1_rows:
        zyx = (r.voxel_z, r.voxel_y, r.voxel_x)
        verdict, before, after = cad[r.output, zyx], rerun[r.scan][zyx], rerun[r.output][zyx]
        assert verdict["before"] == pytest.approx(before, abs=0.051) if before else verdict["before"] is None
        assert verdict["after"] == pytest.approx(after, abs=0.051) if after else verdict["after"] is None
        found = (after is not None and before is None) if r.action == "inject" else (before is not None and after is None)
        assert verdict["success"] is found, (r.method, r.action, before, after)
        if r.action == "remove":
            assert 9.0 <= before <= 20.0  # lung1's nodule (13.8 mm labelled) is there before
    inpaint = next(r for r in removals if r.method == "inpaint")
    nodule = lung1_label.voxels > 0
    assert load_scan(inpaint.output).voxels[nodule].mean() < lung1.voxels[nodule].mean() - 300
    verdict = cad[inpaint.output, (inpaint.voxel_z, inpaint.voxel_y, inpaint.voxel_x)]
    assert verdict["success"] and verdict["after"] is None


def test_rerun_reuses_every_cell(tiny_run, capsys):
    config, run = tiny_run
    before = (run / "results.json").read_text()
    main(["bench", str(config), "-o", str(run)])
    printed = capsys.readouterr().out
    assert "cached model-inject" in printed and "cached detector-btd" in printed and "cached evaluate" in printed
    assert json.loads((run / "results.json").read_text())["auc"] == json.loads(before)["auc"]


def test_a_changed_config_is_refused_for_the_same_run(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "seed": 1}))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(other), "-o", str(run)])
    assert exit_info.value.code == 2
    assert "different config" in capsys.readouterr().err


def test_shipped_demo_config_is_valid_and_fast_is_smaller():
    full, fast = load_config(None), load_config(None, fast=True)
    assert yaml.safe_load(example_config_text())["name"] == "demo"
    assert fast["cohort"]["synthetic"]["n_train"] < full["cohort"]["synthetic"]["n_train"]
    assert fast["detectors"]["btd"]["steps"] < full["detectors"]["btd"]["steps"]
    assert set(fast["detectors"]) == set(full["detectors"]) and fast["attacks"] == full["attacks"]


def test_bad_configs_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndetectors: {magic: {}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(bad), "-o", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown detector 'magic'" in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


KEPT_CELLS = ("cohort-", "trainset-", "model-", "detector-", "tamper-train-", "evaluate", "screen-")  # resumed


def test_the_matrix_on_a_local_dask_cluster_gives_the_serial_results(tiny_run, tmp_path):
    """The slow cells are carried over from the serial run (a resume); every tampering of a test scan and the CAD
    verdicts on them run again on 2 Dask worker processes and must give exactly what the serial run gave."""
    import filecmp

    from medfake.io.tables import read_manifest

    config, serial = tiny_run
    run = tmp_path / "dask"
    (run / "cells").mkdir(parents=True)
    for cell in (serial / "cells").iterdir():
        if cell.name.startswith(KEPT_CELLS):
            (run / "cells" / cell.name).symlink_to(cell, target_is_directory=True)
    main(["bench", str(config), "-o", str(run), "--workers", "2"])

    def same_paths(value):
        return json.loads(json.dumps(value).replace(str(run), str(serial)))

    redone = sorted(c.name for c in (serial / "cells").iterdir() if c.is_dir() and not c.name.startswith(KEPT_CELLS))
    assert len(redone) >= 9 and sorted(c.name for c in (run / "cells").iterdir() if c.is_dir()
                                        and not c.is_symlink()) == redone
    for name in redone:
        ours, theirs = (json.loads((r / "cells" / name / "done.json").read_text())["result"] for r in (run, serial))
        assert same_paths(ours) == theirs, name
    rows = {name: read_manifest(r / "cells" / "manifest-test.csv") for name, r in (("dask", run), ("serial", serial))}
    assert len(rows["dask"]) == len(rows["serial"]) > 0
    for ours, theirs in zip(rows["dask"], rows["serial"]):
        assert same_paths(ours.output) == theirs.output and ours.parameters == theirs.parameters
        assert (ours.voxel_z, ours.voxel_y, ours.voxel_x) == (theirs.voxel_z, theirs.voxel_y, theirs.voxel_x)
        assert filecmp.cmp(ours.output, theirs.output, shallow=False)  # the tampered scans, byte for byte
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, serial))
    for key in ("auc", "counts", "cad_success", "screening_top3", "screening"):
        assert same_paths(ours[key]) == theirs[key], key
