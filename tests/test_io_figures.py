"""Picture helpers: windows, orthogonal views with true proportions and a marker, overlays, PNG output."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from medfake.errors import MedfakeError
from medfake.render import (MARKER_RGB, Window, orthogonal_views, overlay_heatmap, render_view,
                                      save_png, window)
from medfake.scan import Scan


def test_named_and_numeric_windows():
    assert window("lung") == Window(1500, -600) and window("mediastinum") == Window(350, 40)
    assert window(" 400,-50 ") == Window(400, -50)
    lung = window("lung")
    assert lung.apply(np.array([-1350, -600, 150, 3000])).tolist() == [0, 128, 255, 255]
    with pytest.raises(MedfakeError, match="window must be"):
        window("soft tissue")
    with pytest.raises(MedfakeError, match="positive"):
        window("0,40")
    auto = window("auto", np.arange(1000.0))
    assert auto.level == pytest.approx(499.5) and auto.width == pytest.approx(979.02, abs=0.1)


def marker_positions(rgb):
    rows, cols = np.nonzero(np.all(rgb == MARKER_RGB, axis=2))
    return rows, cols


def test_orthogonal_views_keep_proportions_and_mark_the_point():
    # 10 slices of 4 mm, 40 x 60 pixels of 1 mm: coronal panel is 40 mm high = 40 display pixels
    voxels = np.full((10, 40, 60), -1000, dtype=np.int16)
    voxels[6, 25, 15] = 500
    scan = Scan(voxels, (4.0, 1.0, 1.0), (0, 0, 0), np.eye(3), "CT")
    rgb = orthogonal_views(scan, (6, 25, 15), "mediastinum")
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 60 + 4 + 60 + 4 + 40, 3)
    rows, cols = marker_positions(rgb)
    axial = cols < 60
    # the axial cross is centred on row 25, column 15 (a hole of 4 pixels around the point)
    assert rows[axial].min() == 25 - 12 and rows[axial].max() == 25 + 12
    assert cols[axial].min() == 15 - 12 and cols[axial].max() == 15 + 12
    assert not np.any((rows == 25) & (cols == 15))
    # coronal: z=6 of 10 slices (head up) → display row 40 - 1 - (6.5 * 4 - 0.5) = 13.5 → 14 after rounding
    coronal = (cols >= 64) & (cols < 124)
    assert np.median(rows[coronal]) in (13, 14)
    assert np.median(cols[coronal]) == 64 + 15
    sagittal_cols = cols[cols >= 128] - 128
    assert np.median(sagittal_cols) == 25
    # the bright voxel appears white in the axial panel at its true position
    assert tuple(rgb[25, 15]) == (255, 255, 255)


def test_view_of_lung1_nodule(lung1, tmp_path):
    rgb = render_view(lung1, (33, 359, 218), "lung")
    # axial 512x512 at 0.57 mm; coronal/sagittal 48 x 5 mm = 240 mm → 421 display rows
    assert rgb.shape[0] == 512 + 22 and rgb.shape[1] == 512 * 3 + 8
    assert tuple(rgb[359, 218]) != (0, 0, 0)
    path = save_png(rgb, tmp_path / "view.png")
    back = (mpimg.imread(path)[..., :3] * 255).round().astype(np.uint8)
    assert np.array_equal(back, rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["view.png"]
    with pytest.raises(MedfakeError, match="outside the scan"):
        orthogonal_views(lung1, (48, 0, 0))


def test_overlay_heatmap_blends_only_where_hot():
    grey = np.full((8, 8), 100, dtype=np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = overlay_heatmap(grey, heat, alpha=0.6)
    assert out.shape == (8, 8, 3)
    assert np.all(out[6:, 6:] == 100)
    assert not np.all(out[0, 0] == 100)


def test_save_png_refuses_non_uint8(tmp_path):
    with pytest.raises(MedfakeError, match="uint8"):
        save_png(np.zeros((4, 4)), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
