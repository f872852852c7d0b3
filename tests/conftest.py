"""Shared fixtures: the real lung1 chest CT and its nodule label (loaded once per test session).

Tests must not modify these scans in place: use `scan.with_voxels(scan.voxels.copy())` to change voxels.
"""

from __future__ import annotations

import numpy as np
import pytest

from medfake.data.samples import sample_path
from medfake.io import load_scan


@pytest.fixture(scope="session")
def lung1():
    """lung1 (48x512x512 int16 HU, spacing 5 x 0.5703 x 0.5703 mm) as a Scan."""
    scan = load_scan(sample_path("lung1"))
    scan.voxels.setflags(write=False)
    return scan


@pytest.fixture(scope="session")
def lung1_label():
    """lung1's binary nodule label (same geometry as lung1), modality 'SEG'."""
    scan = load_scan(sample_path("lung1_label"), modality="SEG")
    scan.voxels.setflags(write=False)
    return scan


@pytest.fixture(scope="session")
def lung1_lungs(lung1):
    """lung1's lung mask (`medfake.lungmask.lung_mask`), computed once per session; read-only."""
    from medfake.lungmask import lung_mask

    mask = lung_mask(lung1)
    mask.setflags(write=False)
    return mask


@pytest.fixture(scope="session")
def lung1_file(lung1, tmp_path_factory):
    """lung1 written once per session as a compressed .npz (what the detector CLIs read in tests)."""
    from medfake.io import save_scan

    return save_scan(lung1, tmp_path_factory.mktemp("genuine") / "lung1.npz", format="npz")


@pytest.fixture(scope="session")
def lung1_slab(lung1):
    """8 full slices of lung1 around the nodule (z 29..36) with the matching origin: a small real CT."""
    voxels = np.ascontiguousarray(lung1.voxels[29:37])
    return lung1.with_voxels(voxels, origin=tuple(lung1.voxel_to_world((29, 0, 0))),
                             meta={"format": "nrrd"})


@pytest.fixture(scope="session")
def lung1_dicom(lung1_slab, tmp_path_factory):
    """`lung1_slab` written once per session as a standalone classic DICOM CT series (a folder)."""
    from medfake.io import save_scan

    folder = tmp_path_factory.mktemp("lung1_dicom") / "series"
    return save_scan(lung1_slab, folder, format="dicom")


@pytest.fixture(scope="session")
def tiny_injector(tmp_path_factory):
    """A 16³ CT-GAN injector trained once per session (60 steps on lung1's nodule, see tests/tiny.py): it paints a
    faint blob (about +250 HU in lung parenchyma); quality is not the point."""
    from tiny import NODULE_ROW, tiny_tamper_run

    return tiny_tamper_run(tmp_path_factory.mktemp("tiny_injector"), "inject", NODULE_ROW)


@pytest.fixture(scope="session")
def tiny_remover(tmp_path_factory):
    """A 16³ CT-GAN remover trained once per session (60 steps on two healthy lung spots of lung1): its 8 mm hole
    clears a nodule's core, not a whole 14 mm nodule (test_tamper_pipeline trains a 32³ one for that)."""
    from tiny import HEALTHY_ROWS, tiny_tamper_run

    return tiny_tamper_run(tmp_path_factory.mktemp("tiny_remover"), "remove", HEALTHY_ROWS)


CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download is unreachable here (see Makefile system-deps)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium headless; in CI a missing browser fails, never skips."""
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make system-deps` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1700, "height": 1000}}


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    """Where browser tests save their screenshots (pytest's temporary folder)."""
    return tmp_path_factory.mktemp("screenshots")
