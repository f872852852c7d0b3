"""The benchmark matrix takes copy-move donors and removal sizes from the labels, never from the CAD judge."""

from __future__ import annotations

from medfake.bench.matrix import labelled_donor, scan_labels
from medfake.data.samples import sample_path

NODULE = (33, 359, 218)  # lung1's labelled nodule (voxel z,y,x), 13.75 mm


def test_labels_from_a_label_volume_and_from_a_table_agree_on_lung1():
    lung1, label = str(sample_path("lung1")), str(sample_path("lung1_label"))
    table = str(sample_path("lung1").parent / "annotations.csv")
    by_label = scan_labels({"path": lung1, "label": label, "table": None})
    by_table = scan_labels({"path": lung1, "label": None, "table": table})
    assert len(by_label) == len(by_table) == 1
    for (zyx, diameter) in (by_label[0], by_table[0]):
        assert abs(zyx[0] - NODULE[0]) <= 1 and abs(zyx[1] - NODULE[1]) <= 3 and abs(zyx[2] - NODULE[2]) <= 3
    assert by_table[0][1] == 13.7502 and 11.0 < by_label[0][1] < 16.0


def test_a_scan_without_labels_borrows_another_scans_labelled_nodule(tmp_path):
    lung1 = {"path": str(sample_path("lung1")), "label": str(sample_path("lung1_label")), "table": None}
    bare = {"path": str(sample_path("lung1")), "label": None, "table": None}
    path, coord = labelled_donor(bare, [bare, lung1])
    z, y, x = (int(v) for v in coord.split(","))
    assert path == lung1["path"] and abs(z - 33) <= 1 and abs(y - 359) <= 3 and abs(x - 218) <= 3
    assert labelled_donor(lung1, [bare, lung1]) == (path, coord)
