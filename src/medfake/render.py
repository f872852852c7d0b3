"""Shared picture helpers: CT windows, orthogonal views through a point, heat-map overlays, PNG output.

Every function returns or takes plain uint8 RGB arrays (rows, columns, 3), so callers can stack them.
Panels are resampled to square display pixels, so thick-slice scans keep their true proportions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from medfake.errors import MedfakeError
from medfake.io.atomic import atomic_file
from medfake.scan import Scan

NAMED_WINDOWS = {"lung": (1500.0, -600.0), "mediastinum": (350.0, 40.0), "bone": (1800.0, 400.0),
                 "brain": (80.0, 40.0)}
MARKER_RGB = (255, 40, 40)
SEPARATOR = 4


@dataclass(frozen=True)
class Window:
    """A display window: values in [level - width/2, level + width/2] map to 0..255."""

    width: float
    level: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2.0
        scaled = (np.asarray(values, dtype=np.float32) - low) * (255.0 / self.width)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def __str__(self) -> str:
        return f"W{self.width:g}/L{self.level:g}"


def window(spec: str | Window | None, values: np.ndarray | None = None) -> Window:
    """`lung` (W1500/L-600), `mediastinum` (W350/L40), `bone`, `brain`, `W,L` numbers, or `auto`
    (1st-99th percentile of `values`, for MR)."""
    if isinstance(spec, Window):
        return spec
    text = (spec or "auto").strip().lower()
    if text in NAMED_WINDOWS:
        return Window(*NAMED_WINDOWS[text])
    if text == "auto":
        if values is None:
            raise MedfakeError("window 'auto' needs the image values")
        flat = np.asarray(values).ravel()
        low, high = np.percentile(flat[:: max(1, flat.size // 2_000_000)], [1, 99])
        return Window(max(float(high - low), 1e-6), float(low + high) / 2.0)
    try:
        width, level = (float(part) for part in text.split(","))
    except ValueError:
        raise MedfakeError(f"window must be {', '.join(NAMED_WINDOWS)}, auto or W,L numbers, not '{spec}'") from None
    if width <= 0:
        raise MedfakeError(f"window width must be positive, got {width:g}")
    return Window(width, level)


def resolve_window(scan: Scan, spec: str | Window | None) -> Window:
    """`spec` as a Window; None means lung for CT and the data's 1st-99th percentiles otherwise."""
    if spec is None:
        spec = "lung" if scan.modality == "CT" else "auto"
    return window(spec, scan.voxels)


def to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, dtype=np.uint8)[..., None], 3, axis=2)


def square_pixels(image: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float, order: int = 1) -> np.ndarray:
    """Resample a 2-D image so that one output pixel is `pixel_mm` on both axes."""
    zoom = (row_mm / pixel_mm, col_mm / pixel_mm)
    if np.allclose(zoom, 1.0):
        return image
    return ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)


def draw_cross(rgb: np.ndarray, row: float, col: float, arm: int = 12, gap: int = 4,
               color: Sequence[int] = MARKER_RGB) -> np.ndarray:
    """A cross-hair with an open centre (the marked voxel stays visible)."""
    out = rgb.copy()
    r, c = int(round(row)), int(round(col))
    height, width = out.shape[:2]
    for d in range(gap, arm + 1):
        for rr, cc in ((r - d, c), (r + d, c), (r, c - d), (r, c + d)):
            if 0 <= rr < height and 0 <= cc < width:
                out[rr, cc] = color
    return out


def orthogonal_views(scan: Scan, zyx: Sequence[float], window: str | Window | None = None,
                     marker: bool = True, max_size: int = 512) -> np.ndarray:
    """Axial, coronal and sagittal slices through voxel `zyx`, side by side, as one RGB uint8 image
    (only the axial panel for a single-slice scan).

    Panels use square display pixels (true proportions for anisotropic spacing); superior is up in the
    coronal and sagittal panels when the scan's z axis points to the head. A red cross-hair marks the point."""
    point = scan.require_inside(zyx, "view point")
    win = resolve_window(scan, window)
    sz, sy, sx = scan.spacing
    nz, ny, nx = scan.shape
    pixel_mm = max(min(sy, sx), max(nz * sz, ny * sy, nx * sx) / max_size)
    head_up = scan.direction[2, 2] > 0
    z, y, x = point
    planes = [  # (image rows, cols), row spacing, col spacing, marker row, marker col, flip rows
        (scan.voxels[z], sy, sx, y, x, False),
        (scan.voxels[:, y, :], sz, sx, z, x, head_up),
        (scan.voxels[:, :, x], sz, sy, z, y, head_up),
    ]
    if nz == 1:  # a single slice has no coronal or sagittal view worth showing
        planes = planes[:1]
    panels = []
    for image, row_mm, col_mm, mark_row, mark_col, flip in planes:
        grey = square_pixels(win.apply(image), row_mm, col_mm, pixel_mm)
        rows = image.shape[0]
        row = (mark_row + 0.5) * grey.shape[0] / rows - 0.5
        col = (mark_col + 0.5) * grey.shape[1] / image.shape[1] - 0.5
        if flip:
            grey, row = grey[::-1], grey.shape[0] - 1 - row
        rgb = to_rgb(grey)
        panels.append(draw_cross(rgb, row, col) if marker else rgb)
    return hstack(panels)


def hstack(panels: list[np.ndarray], gap: int = SEPARATOR) -> np.ndarray:
    """Panels side by side on a black background, top-aligned."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    col = 0
    for panel in panels:
        out[: panel.shape[0], col: col + panel.shape[1]] = panel
        col += panel.shape[1] + gap
    return out


def overlay_heatmap(rgb_slice: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "inferno",
                    vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend a colour-mapped heat map (resized to the slice if needed) over an RGB or grey slice."""
    from matplotlib import colormaps

    base = to_rgb(rgb_slice) if rgb_slice.ndim == 2 else np.asarray(rgb_slice, dtype=np.uint8)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != base.shape[:2]:
        heat = ndimage.zoom(heat, (base.shape[0] / heat.shape[0], base.shape[1] / heat.shape[1]), order=1)
    low = float(np.min(heat)) if vmin is None else vmin
    high = float(np.max(heat)) if vmax is None else vmax
    unit = np.clip((heat - low) / (high - low), 0, 1) if high > low else np.zeros_like(heat)
    colours = colormaps[cmap](unit)[..., :3] * 255.0
    weight = alpha * unit[..., None]
    return np.clip(np.rint(base * (1 - weight) + colours * weight), 0, 255).astype(np.uint8)


def add_caption(rgb: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    """The image with a black strip of white text below it (rendered by matplotlib's Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = rgb.shape[1]
    figure = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    figure.text(0.005, 0.5, text, color="white", fontsize=9, va="center", ha="left", family="monospace")
    canvas.draw()
    strip = np.asarray(canvas.buffer_rgba())[..., :3]
    strip = strip[:height, :width]
    return np.concatenate([rgb, strip], axis=0)


def save_png(rgb: np.ndarray, path: str | Path, overwrite: bool = True) -> Path:
    """Write a uint8 grey or RGB array as PNG, atomically (temporary sibling + rename)."""
    from matplotlib import image as mpimg

    image = np.asarray(rgb)
    if image.dtype != np.uint8:
        raise MedfakeError(f"save_png expects uint8 pixels, got {image.dtype}", path)
    path = Path(path)
    with atomic_file(path, overwrite) as tmp:
        mpimg.imsave(tmp, image, format="png", cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    return path


def render_view(scan: Scan, zyx: Sequence[float], window: str | Window | None = None) -> np.ndarray:
    """`orthogonal_views` with a caption: the point in voxels and mm, its value and the window."""
    point = scan.require_inside(zyx, "view point")
    win = resolve_window(scan, window)
    x, y, z = scan.voxel_to_world(point) + 0.0  # no '-0.0' in captions
    name = Path(str((scan.path or "scan"))).name
    unit = " HU" if scan.modality == "CT" else ""
    text = (f"{name}  z,y,x={tuple(int(v) for v in point)}  x,y,z=({x:.1f}, {y:.1f}, {z:.1f}) mm  "
            f"value={float(scan.voxels[tuple(point)]):g}{unit}  {win}" +
            ("  axial | coronal | sagittal" if scan.shape[0] > 1 else "  axial"))
    return add_caption(orthogonal_views(scan, point, win), text)

def _save_figure(figure, path: Path) -> Path:
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    return path


def save_patch_grid(rows: list[np.ndarray], labels: list[str], path: Path) -> Path:
    """One row per (N, 1, P, P) array of [0, 1] patches, labelled on the left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(r) for r in rows)
    figure = Figure(figsize=(1.3 * n + 1.2, 1.4 * len(rows)), dpi=100)
    FigureCanvasAgg(figure)
    for r, (patches, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = figure.add_subplot(len(rows), n, r * n + c + 1)
            ax.axis("off")
            if c < len(patches):
                ax.imshow(np.clip(patches[c, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_title(label, fontsize=7, loc="left")
    figure.tight_layout()
    return _save_figure(figure, path)
