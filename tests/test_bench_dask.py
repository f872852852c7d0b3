"""The benchmark's cells on a local Dask cluster: results as in-process, resumable, and a cell whose worker
dies is redone from a wiped folder (the whole tiny matrix on Dask is compared in test_demo.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medfake.bench.cluster import DaskCells
from medfake.bench.config import Cells


def write_then(text: str, die_once_marker: Path | None = None):
    """A cell that writes a file; with a marker path, the first attempt writes a half file and kills its worker."""

    def cell(folder: Path):
        if die_once_marker is not None and not die_once_marker.exists():
            die_once_marker.write_text(str(os.getpid()))
            (folder / "half-written.txt").write_text("partial")
            os._exit(1)  # the worker process dies mid-cell
        (folder / "out.txt").write_text(text)
        return {"text": text, "pid": os.getpid()}

    return cell


def never(folder: Path):
    raise AssertionError("a finished cell must not run again")


@pytest.fixture(scope="module")
def cluster():
    with DaskCells(workers=2) as executor:
        yield executor


def test_cells_run_on_the_cluster_and_a_dead_worker_means_a_redone_cell(cluster, tmp_path):
    marker = tmp_path / "died-once"
    cells = Cells(tmp_path / "cells", executor=cluster, log=lambda _: None)
    results = cells.run_all({"a": write_then("alpha", marker), "b": write_then("beta"), "c": write_then("gamma")})
    assert [results[k]["text"] for k in "abc"] == ["alpha", "beta", "gamma"]
    assert marker.exists() and int(marker.read_text()) != results["a"]["pid"]  # redone by another process
    assert {r["pid"] for r in results.values()} != {os.getpid()}  # ... and none ran here
    folder = tmp_path / "cells" / "a"
    assert sorted(p.name for p in folder.iterdir()) == ["done.json", "out.txt"]  # the half file was wiped
    assert json.loads((folder / "done.json").read_text())["result"] == results["a"]
    # resumed: finished cells are read back, not rerun, and give the same results as run here
    again = Cells(tmp_path / "cells", executor=cluster, log=lambda _: None).run_all({"a": never, "b": never, "c": never})
    assert again == results


def test_in_process_and_cluster_results_agree_and_a_half_done_cell_is_redone(cluster, tmp_path):
    here = Cells(tmp_path / "here", log=lambda _: None).run_all({"x": write_then("x"), "y": write_then("y")})
    there = Cells(tmp_path / "there", executor=cluster, log=lambda _: None).run_all(
        {"x": write_then("x"), "y": write_then("y")})
    assert {k: v["text"] for k, v in here.items()} == {k: v["text"] for k, v in there.items()}
    (tmp_path / "there" / "y" / "done.json").unlink()  # as if interrupted before the marker was renamed in
    (tmp_path / "there" / "y" / "stale.txt").write_text("left over")
    redone = Cells(tmp_path / "there", executor=cluster, log=lambda _: None).run_all(
        {"x": never, "y": write_then("y2")})
    assert redone["x"] == there["x"] and redone["y"]["text"] == "y2"
    assert not (tmp_path / "there" / "y" / "stale.txt").exists()


def test_a_failing_cell_stops_the_stage_with_its_error(cluster, tmp_path):
    def broken(folder: Path):
        raise ValueError("bad cell")

    with pytest.raises(ValueError, match="bad cell"):
        Cells(tmp_path / "cells", executor=cluster, log=lambda _: None).run_all({"ok": write_then("ok"), "bad": broken})
    assert not (tmp_path / "cells" / "bad" / "done.json").exists()
