"""The evaluation protocol compares like with like: headline rows pair injected nodules with genuine nodules and
removals with genuine nodule-free lung; a content-only detector sits at chance there and wins the secondary rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfake.detect.evaluate import CONTENT_BASELINE, evaluate, evaluation_samples, rows
from medfake.detect.samples import LUNG, NODULE, Sample
from medfake.io import save_scan
from medfake.io.tables import ManifestRow, append_manifest
from medfake.scan import Scan

SPACING = (2.0, 0.7, 0.7)
DIAMETERS_MM = (4.0, 6.0, 8.0, 10.0, 5.0, 7.0)


def sample(label, action="", method="", content="", origin="", name="s.npz", zyx=(0, 0, 0)):
    return Sample(Path(name), zyx, label, action, method, "ct", content, origin)


def test_headline_rows_never_pair_a_positive_with_another_content_class():
    samples = [sample(1, "inject", "ctgan", NODULE, "tampered"), sample(1, "inject", "copy-move", NODULE, "tampered"),
               sample(1, "remove", "inpaint", LUNG, "tampered"),
               sample(0, "inject", "ctgan", LUNG, "before"), sample(0, "inject", "copy-move", LUNG, "before"),
               sample(0, "remove", "inpaint", NODULE, "before"),
               sample(0, content=NODULE, origin="table"), sample(0, content=NODULE, origin="table"),
               sample(0, content=LUNG, origin="matched"), sample(0, content=LUNG, origin="random"),
               sample(0, content=LUNG, origin="random"), sample(0, "remove", "ctgan", LUNG, "matched")]
    table = rows(samples)
    headline = {name for name, (_, kind) in table.items() if kind == "headline"}
    assert headline == {"inject-ctgan-ct", "inject-copy-move-ct", "inject-all-ct", "remove-inpaint-ct", "remove-all-ct"}
    for name, (index, kind) in table.items():
        positives = [samples[i] for i in index if samples[i].label]
        negatives = [samples[i] for i in index if not samples[i].label]
        claimed = {s.content for s in positives}
        assert len(claimed) == 1
        if kind == "headline":  # no real nodule among removal negatives, no bare lung among injection negatives
            assert {s.content for s in negatives} == claimed
        else:  # the same sites before tampering, of this row's action and method only
            assert {s.origin for s in negatives} == {"before"} and {s.content for s in negatives} != claimed
            assert {(s.action, s.method) for s in negatives} <= {(p.action, p.method) for p in positives}
    assert len([i for i in table["inject-all-ct"][0] if not samples[i].label]) == 3  # 2 table + 1 before removal
    # 3 genuine lung sites drawn for removals; the bare lung before the injections (drawn anywhere) is no negative
    # (lung matched to a CT-GAN removal site: a negative of the CT-GAN and the pooled rows only)
    assert len([i for i in table["remove-inpaint-ct"][0] if not samples[i].label]) == 3
    assert len([i for i in table["remove-all-ct"][0] if not samples[i].label]) == 4
    assert len(table["inject-vs-before-ctgan-ct"][0]) == 2 and len(table["inject-vs-before-all-ct"][0]) == 4


def parenchyma(rng, shape=(24, 200, 200)) -> np.ndarray:
    return -850.0 + 25.0 * rng.standard_normal(shape)


def put_nodules(voxels: np.ndarray, sites, diameters) -> np.ndarray:
    """Solid +40 HU spheres (the same sphere for the same diameter wherever it lies)."""
    out = voxels.copy()
    for (z, y, x), d in zip(sites, diameters):
        r = d / 2
        half = np.ceil(r / np.asarray(SPACING)).astype(int)
        zz, yy, xx = np.ogrid[-half[0]:half[0] + 1, -half[1]:half[1] + 1, -half[2]:half[2] + 1]
        ball = (zz * SPACING[0]) ** 2 + (yy * SPACING[1]) ** 2 + (xx * SPACING[2]) ** 2 <= r ** 2
        box = out[z - half[0]: z + half[0] + 1, y - half[1]: y + half[1] + 1, x - half[2]: x + half[2] + 1]
        box[ball] = 40.0 + 25.0 * np.random.default_rng(z * 1000 + x).standard_normal(ball.sum())
    return out


@pytest.fixture(scope="module")
def same_content_case(tmp_path_factory):
    """A genuine scan with six labelled nodules, and a scan with six injected nodules of the same sizes."""
    folder = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(4)
    sites = [(8 + 8 * (i // 3), 50 + 50 * (i % 3), 60 + 40 * (i // 3)) for i in range(6)]
    other = [(z, y + 20, x + 50) for z, y, x in sites]
    genuine = Scan(put_nodules(parenchyma(rng), sites, DIAMETERS_MM).astype(np.int16), SPACING)
    source = Scan(parenchyma(rng).astype(np.int16), SPACING)
    tampered = source.with_voxels(put_nodules(source.voxels.astype(float), other, DIAMETERS_MM).astype(np.int16))
    for name, scan in (("genuine.npz", genuine), ("source.npz", source), ("tampered.npz", tampered)):
        save_scan(scan, folder / name, format="npz")
    (folder / "nodules_vox.csv").write_text("filename,z,y,x\n" + "".join(f"genuine.npz,{z},{y},{x}\n" for z, y, x in sites))
    append_manifest([ManifestRow("source.npz", "tampered.npz", *source.voxel_to_world(zyx), *zyx, "inject", "paste",
                                 "none", "{}", "now") for zyx in other], folder / "manifest.csv")
    return folder


def test_a_nodule_detector_is_at_chance_when_injected_and_genuine_nodules_look_alike(same_content_case, tmp_path):
    folder = same_content_case
    samples = evaluation_samples(folder / "manifest.csv", nodules=folder / "nodules_vox.csv")
    assert sum(s.content == NODULE and not s.label for s in samples) == 6
    results = evaluate(samples, {}, tmp_path / "eval")
    headline, secondary = results["rows"]["inject-paste-ct"], results["rows"]["inject-vs-before-paste-ct"]
    assert headline["kind"] == "headline" and headline["n_tampered"] == headline["n_genuine"] == 6
    assert abs(headline["content_baseline"]["auc"] - 0.5) < 0.1 and not headline["content_differs"]
    assert headline["content_baseline"]["pd_at_1pct_far"] == 0.0  # at 1% false alarms it finds no injection
    # the same detector against the same sites before injection: content alone separates them perfectly
    assert secondary["content_baseline"]["auc"] == 1.0 and secondary["content_differs"]
    assert secondary["content_baseline"]["pd_at_1pct_far"] == 1.0
    table = (tmp_path / "eval/results.md").read_text()
    assert "| inject-paste-ct | headline | 6 | 6 |" in table and "(content differs)" in table
    header = (tmp_path / "eval/scores.csv").read_text().splitlines()[0]
    assert header.endswith(f"content,origin,group,{CONTENT_BASELINE}")
    assert json.loads((tmp_path / "eval/results.json").read_text())["rows"]["inject-all-ct"]["kind"] == "headline"


def test_removal_negatives_match_the_removed_sites_position_and_density(lung1, lung1_lungs, tmp_path):
    """In-painted sites (lung1's nodule and three lung points) against genuine lung1 lung: every genuine site is
    matched to a removal site's side, depth, front-to-back position and dense-tissue fraction, so the content-only
    baseline sits near chance on the headline removal row."""
    from medfake.detect.samples import lung_positions
    from medfake.detect.selfref import dense_fraction
    from medfake.tamper.classical import inpaint_remove

    sites = [(33, 359, 218), (20, 330, 150), (30, 300, 380), (12, 250, 120)]
    voxels = lung1.voxels.astype(np.float32)
    for zyx, diameter in zip(sites, (13.8, 8.0, 8.0, 8.0)):
        voxels = inpaint_remove(lung1.with_voxels(voxels), zyx, diameter)
    tampered = lung1.with_voxels(np.rint(voxels).astype(np.int16))
    save_scan(tampered, tmp_path / "removed.npz", format="npz")
    save_scan(lung1, tmp_path / "lung1.npz", format="npz")
    append_manifest([ManifestRow("lung1.npz", "removed.npz", *lung1.voxel_to_world(z), *z, "remove", "inpaint", "none",
                                 "{}", "now") for z in sites], tmp_path / "manifest.csv")
    samples = evaluation_samples(tmp_path / "manifest.csv", tmp_path / "lung1.npz", per_scan=12, seed=0,
                                 nodules=None)
    genuine = [s for s in samples if not s.label and s.content == LUNG]
    assert len(genuine) == 12 and {(s.origin, s.action, s.method) for s in genuine} == {("matched", "remove", "inpaint")}
    lung = lung1_lungs
    target_side, target_depth, target_front = lung_positions(lung, np.asarray(sites))
    target_density = dense_fraction(tampered, sites)
    side, depth, front = lung_positions(lung, np.asarray([s.zyx for s in genuine]))
    density = dense_fraction(lung1, [s.zyx for s in genuine])
    for k in range(12):  # the targets in turn
        t = k % len(sites)
        assert side[k] == target_side[t]
        assert abs(depth[k] - target_depth[t]) <= 0.1 + 1e-9 and abs(front[k] - target_front[t]) <= 0.1 + 1e-9
        assert abs(density[k] - target_density[t]) <= 0.02 + 1e-9
    assert min(np.linalg.norm((np.subtract(s.zyx, sites[0])) * lung1.spacing) for s in genuine) > 20.0
    row = evaluate(samples, {}, tmp_path / "eval")["rows"]["remove-inpaint-ct"]
    assert row["n_tampered"] == 4 and row["n_genuine"] == 12
    assert abs(row["content_baseline"]["auc"] - 0.5) <= 0.15 and not row["content_differs"]
