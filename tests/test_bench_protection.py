"""The benchmark's protection axis at a tiny size: an 8-slice lung1 slab protected against the session's
`tiny_injector` (trained once on lung1) at the evaluation's site, then white-box and black-box rows, the summary
and the report section with its panels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from medfake.bench.config import Cells, load_config
from medfake.bench.protection import protection_section, protection_summary, run_protection
from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.report import write_report


def test_protection_stage_rows_summary_and_report_section(lung1_slab, tiny_injector, tmp_path):
    injector = tiny_injector
    path = save_scan(lung1_slab, tmp_path / "slab.nrrd", format="nrrd")
    config = {"seed": 0, "protection": {"scans": ["slab"], "against": ["inject"], "classical": ["inpaint"],
                                        "detectors": ["selfref"], "sites": 1}}
    scans = [{"name": "slab", "path": str(path), "label": None, "table": None}]
    items = run_protection(Cells(tmp_path / "cells", log=lambda *_: None), config, {"inject": str(injector)}, {},
                           scans)
    assert len(items) == 1 and (tmp_path / "cells" / "protect-slab" / "done.json").exists()
    change = load_scan(items[0]["protected"]).voxels.astype(np.int32) - lung1_slab.voxels
    assert np.abs(change).max() == 8  # the budget, reached at the focused site and never passed
    results = json.loads((tmp_path / "cells" / "protect-slab" / "evaluation" / "protection.json").read_text())
    rows = results["cases"][0]["attackers"]
    white = next(r for r in rows.values() if r["threat"] == "white-box")
    assert white["core_change_protected_hu"] < white["core_change_unprotected_hu"]
    assert next(r for r in rows.values() if r["threat"] == "black-box")["success_unprotected"] == 1.0
    matrix = {"protection": items}
    summary = protection_summary(matrix)
    assert sorted(r["threat"] for r in summary) == ["black-box", "white-box"]
    assert all(r["max_abs_hu"] == 8 for r in summary)
    html = write_report(tmp_path / "report.html", "t", [protection_section(matrix)]).read_text()
    assert re.findall(r"<h2>([^<]+)</h2>", html) == ["Protection against tampering"]
    assert html.count("data:image/png") == 2 and "white-box inject" in html
    assert protection_section({"protection": None}) is None


def test_protection_config_is_checked(tmp_path):
    for bad, message in (({"budget": 8}, "unknown protection key"), ({"focus": "everywhere"}, "sites or lungs")):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"name": "x", "protection": bad}))
        with pytest.raises(MedfakeError, match=message):
            load_config(path)
