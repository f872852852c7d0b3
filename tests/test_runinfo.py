"""Run records: a benchmark figure from a dirty tree is marked in its record and announced."""

from __future__ import annotations

import json

from medfake import runinfo


def test_dirty_benchmark_record_is_marked_and_announced(tmp_path, monkeypatch, capsys):
    results = tmp_path / "benchmarks" / "results"
    monkeypatch.setattr(runinfo, "git_commit", lambda: "0123abc+dirty")
    path = runinfo.write_run_record(results, {"n": 1}, 7, name="x.run.json")
    record = json.loads(path.read_text())
    assert record["git_commit"] == "0123abc+dirty" and "not reproducible" in record["warning"]
    assert "WARNING" in capsys.readouterr().err
    monkeypatch.setattr(runinfo, "git_commit", lambda: "0123abc")
    clean = json.loads(runinfo.write_run_record(results, {"n": 1}, 7, name="y.run.json").read_text())
    assert "warning" not in clean and clean["seed"] == 7 and clean["config"] == {"n": 1}
    assert capsys.readouterr().err == ""
