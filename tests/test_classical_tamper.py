"""Copy-move injection and in-painting removal on the real lung1 nodule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import medfake
from medfake.tamper.classical import copy_move_inject, inpaint_remove, nodule_radius_mm
from medfake.tamper.pipeline import tamper_scan

NODULE = (33, 359, 218)  # lung1's labelled nodule (13.8 mm, mean -64 HU)
TARGET = (30, 330, 380)  # left lung parenchyma


def test_nodule_radius_is_close_to_the_label(lung1):
    assert 5.5 <= nodule_radius_mm(lung1, NODULE) <= 9.0  # equivalent diameter 13.8 mm → radius 6.9 mm


def test_copy_move_pastes_a_dense_nodule_and_touches_nothing_far(lung1):
    before = lung1.voxels.copy()
    out = copy_move_inject(lung1, TARGET, lung1, NODULE, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == lung1.shape and np.array_equal(lung1.voxels, before)
    z, y, x = TARGET
    assert lung1.voxels[z, y - 3:y + 4, x - 3:x + 4].mean() < -600  # parenchyma before
    assert out[z, y - 3:y + 4, x - 3:x + 4].mean() > -250  # nodule after
    changed = np.argwhere(np.abs(out - lung1.voxels) > 0.5)
    extent_mm = np.abs(changed - TARGET) * np.asarray(lung1.spacing)
    assert extent_mm.max() <= 8.0 + 3.0 + 6.0  # radius + soft edge (+ one 5 mm slice of rounding)
    assert (out >= lung1.voxels - 1e-3).all()  # "lighten" blend never darkens the target


def test_inpaint_removes_the_nodule_with_parenchyma_and_noise(lung1, lung1_label):
    out = inpaint_remove(lung1, NODULE, 13.8)
    label = lung1_label.voxels > 0
    assert lung1.voxels[label].mean() > -150 and out[label].mean() < -450
    z = NODULE[0]
    hole = out[z, 352:366, 211:225]
    assert hole.std() > 5  # not a flat fill: matched noise was added
    far = np.ones(lung1.shape, bool)
    far[z - 3:z + 4, 359 - 40:359 + 41, 218 - 40:218 + 41] = False
    assert np.array_equal(out[far], lung1.voxels[far].astype(np.float32))
    assert np.array_equal(inpaint_remove(lung1, NODULE, 13.8), out)  # deterministic


def test_sites_that_overlap_compose_as_on_a_float_copy_of_the_volume(lung1):
    """The pipeline edits boxes, not a float copy of the volume: the second paste must see the first."""
    sites = [(20, 300, 150), (21, 303, 152)]
    out, _ = tamper_scan(lung1, sites, "inject", method="copy-move", rng=np.random.default_rng(3), donor=lung1,
                         donor_zyx=NODULE)
    rng, voxels = np.random.default_rng(3), lung1.voxels
    for site in sites:
        voxels = copy_move_inject(lung1.with_voxels(voxels), site, lung1, NODULE, rng)
    assert out.voxels.dtype == lung1.voxels.dtype
    assert np.array_equal(out.voxels, np.clip(np.rint(voxels), -32768, 32767).astype(np.int16))
    one, _ = tamper_scan(lung1, sites[1:], "inject", method="copy-move", rng=np.random.default_rng(3), donor=lung1,
                         donor_zyx=NODULE)
    first = out.voxels != lung1.voxels
    assert (first & (one.voxels != lung1.voxels)).sum() > 100  # the two pastes do overlap


def test_automatic_copy_move_never_imports_torch(tmp_path):
    """The classical path (lung mask, CAD, sites, copy-move, writing) runs without torch's seconds of import;
    the detector's strongest candidate (lung1's nodule) is the donor."""
    code = ("import json, sys\nfrom medfake.data.samples import sample_path\n"
            "from medfake.tamper.config import TamperRequest\nfrom medfake.tamper.run import tamper_file\n"
            f"r = tamper_file(TamperRequest(target=sample_path('lung1'), outdir=r'{tmp_path}', action='inject', "
            "auto=2, method='copy-move', fmt='npz'))\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'rows': len(r.rows), "
            "'donor': json.loads(r.rows[0].parameters)['donor_zyx']}))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(medfake.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["rows"] == 2
    assert np.abs(np.subtract(result["donor"], NODULE)).max() <= 2
