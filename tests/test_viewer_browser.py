"""`medfake view --serve` in real headless Chromium: lung1 (8 slices as a DICOM series) loads and draws the
right grey values, the wheel changes the slice, a preset changes the pixels, a click injects with a tiny model
only near the click, undo restores, save writes a derived DICOM series and its manifest; no token → 403; a
path-traversal request gets nothing."""

from __future__ import annotations

import base64
import http.client
import json

import numpy as np
import pydicom
import pytest

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.io.tables import read_manifest
from medfake.viewer.app import build_viewer, create_viewer_app
from medfake.viewer.server import BackgroundServer, new_token

LUNG = (1500, -600)
BONE = (1800, 400)
CLICK = (4, 350, 370)  # lung1 z=33 (slice 4 of the DICOM slab), left lung parenchyma


@pytest.fixture(scope="module")
def injector(tiny_injector):
    """The session's tiny injector (16³ cubes, 60 steps on lung1's nodule): enough to paint something."""
    return tiny_injector


@pytest.fixture(scope="module")
def served(lung1_dicom, injector, tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer-out")
    volumes, editor, scorer, notes = build_viewer(lung1_dicom, models=[injector], outdir=out)
    token = new_token()
    with BackgroundServer(create_viewer_app(volumes, token, editor, scorer, notes), token) as server:
        server.out, server.volumes = out, volumes
        yield server


def grey(hu, window):
    """The page's windowing: Math.round((hu - low) * (255 / width)) in doubles, clipped to 0..255."""
    width, level = window
    return np.clip(np.floor((np.asarray(hu, np.float64) - (level - width / 2)) * (255 / width) + 0.5), 0, 255).astype(int)


PIXEL_JS = """([name, row, col]) => {
  const c = document.getElementById('canvas-' + name), L = layout(S.plane);
  const x = Math.floor((col + 0.5) * c.width / L.cols), y = Math.floor((row + 0.5) * c.height / L.rows);
  return c.getContext('2d').getImageData(x, y, 1, 1).data[0];
}"""

CANVAS_JS = """(name) => {
  const c = document.getElementById('canvas-' + name);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let text = '';
  for (let i = 0; i < d.length; i += 4) text += String.fromCharCode(d[i]);
  return {width: c.width, height: c.height, grey: btoa(text)};
}"""


def pixel(page, name, row, col):
    return page.evaluate(PIXEL_JS, [name, row, col])


def canvas(page, name, rows, cols):
    data = page.evaluate(CANVAS_JS, name)
    grey_bytes = base64.b64decode(data["grey"])
    image = np.frombuffer(grey_bytes, np.uint8).astype(np.int32).reshape(data["height"], data["width"])
    return image, data["height"] / rows, data["width"] / cols


def open_viewer(page, server):
    page.goto(server.url)
    page.wait_for_function("+document.body.dataset.renders >= 1")


def test_the_page_draws_lung1_windowed_scrolls_with_the_wheel_and_presets_change_pixels(page, served, screenshots):
    voxels = served.volumes.before
    open_viewer(page, served)
    z = int(page.evaluate("document.body.dataset.slice"))
    assert z == voxels.shape[0] // 2
    points = [(359, 218), (350, 370), (100, 256), (256, 256)]  # nodule, lung, body wall, mediastinum
    drawn = [pixel(page, "before", r, c) for r, c in points]
    assert drawn == list(grey([voxels[z, r, c] for r, c in points], LUNG))
    assert len(set(drawn)) >= 3
    page.screenshot(path=screenshots / "viewer_lung1.png")

    page.mouse.move(*centre_of(page, "before"))
    page.mouse.wheel(0, 120)
    page.wait_for_function(f"document.body.dataset.slice === '{z + 1}'")
    page.wait_for_function(f"+document.body.dataset.renders >= 2")
    assert [pixel(page, "before", r, c) for r, c in points] == list(grey([voxels[z + 1, r, c] for r, c in points], LUNG))

    page.click("button[data-preset=bone]")
    page.wait_for_function(f"document.body.dataset.window === '{BONE[0]},{BONE[1]}'")
    bone = [pixel(page, "before", r, c) for r, c in points]
    assert bone == list(grey([voxels[z + 1, r, c] for r, c in points], BONE))
    assert bone != list(grey([voxels[z + 1, r, c] for r, c in points], LUNG))

    page.click("button[data-preset=lung]")
    page.keyboard.press("c")  # coronal through the centre row, head up
    page.wait_for_function("document.body.dataset.plane === 'coronal'")
    y, nz = voxels.shape[1] // 2, voxels.shape[0]
    top, bottom = grey(voxels[0, y], LUNG), grey(voxels[nz - 1, y], LUNG)
    columns = np.flatnonzero(np.abs(top - bottom) > 40)[::40][:4]  # where a wrong flip would show
    assert len(columns) >= 2
    flip = served.volumes.info()["z_up"]
    for x in columns:
        assert pixel(page, "before", nz - 1 if flip else 0, int(x)) == top[x]
        assert pixel(page, "before", 0 if flip else nz - 1, int(x)) == bottom[x]


def centre_of(page, name):
    box = page.locator(f"#canvas-{name}").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def click_voxel(page, name, row, col, rows, cols):
    box = page.locator(f"#canvas-{name}").bounding_box()
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)


def hide_overlays(page):
    """No crosshair (mouse off the canvases) and no markers, so the canvases show image pixels only."""
    page.mouse.move(1, 1)
    page.uncheck("#show-truth")


def changed_rows_cols(page, name, reference, rows, cols):
    image, sy, sx = canvas(page, name, rows, cols)
    ys, xs = np.nonzero(image != reference)
    return ys / sy, xs / sx


def test_click_inject_changes_only_near_the_click_undo_restores_and_save_writes_derived_dicom(page, served, screenshots):
    before = served.volumes.before
    z, row, col = CLICK
    assert before[z, row, col] < -700  # lung parenchyma
    rows, cols = before.shape[1:]
    open_viewer(page, served)
    page.fill("#slider", str(z))
    page.dispatch_event("#slider", "input")
    page.wait_for_function(f"document.body.dataset.slice === '{z}'")
    flat_diff = int(grey(0, (400, 0)))
    first = page.evaluate("+document.body.dataset.renders")
    page.check("input[value=inject]")
    click_voxel(page, "before", row, col, rows, cols)
    page.wait_for_function("document.body.dataset.edits === '1'", timeout=60_000)
    page.wait_for_function(f"+document.body.dataset.renders > {first}")
    hide_overlays(page)

    changed_z = np.nonzero((served.volumes.after != before).any(axis=(1, 2)))[0]
    assert z in changed_z
    ys, xs = changed_rows_cols(page, "diff", flat_diff, rows, cols)
    assert len(ys) > 50  # the injection shows in the difference image...
    spacing = served.volumes.scan.spacing[1]
    assert np.hypot(ys - row, xs - col).max() * spacing < 20.0  # ...and only within 20 mm of the click
    before_canvas = canvas(page, "before", rows, cols)[0]
    ys, xs = changed_rows_cols(page, "after", before_canvas, rows, cols)
    assert len(ys) > 20 and np.hypot(ys - row, xs - col).max() * spacing < 20.0
    page.screenshot(path=screenshots / "viewer_injected.png")

    page.click("#undo")
    page.wait_for_function("document.body.dataset.edits === '0'")
    page.wait_for_function(f"document.getElementById('message').textContent.startsWith('undone')")
    page.wait_for_timeout(200)
    assert np.array_equal(served.volumes.after, before)
    assert len(changed_rows_cols(page, "diff", flat_diff, rows, cols)[0]) == 0

    click_voxel(page, "before", row, col, rows, cols)
    page.wait_for_function("document.body.dataset.edits === '1'", timeout=60_000)
    page.click("#save")
    page.wait_for_function("document.body.dataset.saved")
    saved = served.out / page.evaluate("document.body.dataset.saved")
    manifest = read_manifest(served.out / "manifest.csv")
    assert [(m.action, m.output) for m in manifest] == [("inject", str(saved))]
    assert manifest[0].voxel_z == z  # the mouse lands on whole CSS pixels: within a voxel of the aim in-plane
    assert abs(manifest[0].voxel_y - row) <= 1 and abs(manifest[0].voxel_x - col) <= 1
    assert json.loads(manifest[0].parameters)["seed"] == 0
    written = load_scan(saved)
    assert np.array_equal(written.voxels, served.volumes.after)
    header = pydicom.dcmread(sorted(saved.iterdir())[0], stop_before_pixels=True)
    assert "DERIVED" in header.ImageType and "medfake tamper: inject" in header.DerivationDescription


def raw_get(server, path: str, token: bool = True) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation of '..' or %2f)."""
    host, port = server.base.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    if token:
        path += ("&" if "?" in path else "?") + f"token={server.token}"
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def test_every_request_needs_the_token(served):
    for path in ("/", "/static/viewer.js", "/api/info", "/api/slice/before/axial/0", "/nothing"):
        assert raw_get(served, path, token=False)[0] == 403
        assert raw_get(served, path + "?token=wrong" + served.token[:-1], token=False)[0] == 403
    status, body = raw_get(served, "/api/slice/before/axial/0")
    assert status == 200 and len(body) == 2 * 512 * 512


def test_path_traversal_gets_nothing(served):
    secret = served.out.parent / "secret.txt"
    secret.write_text("root:x:0:0 secret")
    relative = "/".join([".."] * 12) + str(secret)
    for path in (f"/static/{relative}", "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", f"/static/{secret}", "/api/slice/..%2f..%2fetc%2fpasswd/axial/0",
                 f"/api/slice/{relative}/axial/0", "/static/../viewer/app.py", "/../../../../etc/passwd"):
        status, body = raw_get(served, path)
        assert status in (400, 404), path
        assert b"root:" not in body and b"secret" not in body and b"import" not in body


RGBA_JS = """(name) => {
  const c = document.getElementById('canvas-' + name);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let text = '';
  for (let i = 0; i < d.length; i++) text += String.fromCharCode(d[i]);
  return {width: c.width, height: c.height, rgba: btoa(text)};
}"""

NODULE = (4, 359, 218)  # lung1's nodule in the DICOM slab (lung1 z=33)


@pytest.fixture(scope="module")
def overlays(lung1_dicom, tmp_path_factory):
    """An anomaly map (a blob on the nodule), a manifest row naming the slab, a noise detector run."""
    from medfake.detect.config import DetectorTrainConfig
    from medfake.detect.train import train_detector
    from medfake.io.tables import ManifestRow, append_manifest

    root = tmp_path_factory.mktemp("overlays")
    scan = load_scan(lung1_dicom)
    zz, yy, xx = np.indices(scan.shape, dtype=np.float32)
    blob = np.exp(-(((yy - NODULE[1]) ** 2 + (xx - NODULE[2]) ** 2) / (2 * 15.0 ** 2)) - (zz - NODULE[0]) ** 2 / 2)
    heat = root / "anomaly_map.npz"  # as `medfake detect --screen` writes it: the array only
    np.savez_compressed(heat, anomaly=blob.astype(np.float16))
    x, y, z = scan.voxel_to_world(NODULE)
    append_manifest([ManifestRow("orig", str(lung1_dicom), x, y, z, *NODULE, "inject", "ctgan", "m", "{}", "t")],
                    root / "manifest.csv")
    run = root / "noise"
    train_detector([lung1_dicom], run, DetectorTrainConfig(method="noise", noise_patches=50), show_progress=False)
    return heat, root / "manifest.csv", run


def rgba(page, name):
    data = page.evaluate(RGBA_JS, name)
    return np.frombuffer(base64.b64decode(data["rgba"]), np.uint8).reshape(data["height"], data["width"], 4).astype(int)


def test_anomaly_map_and_ground_truth_overlays_and_detector_score_on_click(page, lung1_dicom, overlays, screenshots):
    from medfake.detect.detectors import load_detector
    from medfake.detect.screen import score_locations

    heat, manifest, run = overlays
    volumes, editor, scorer, notes = build_viewer(lung1_dicom, heatmap=heat, manifest=manifest, detector=run)
    assert notes == [] and [m.zyx for m in volumes.markers] == [NODULE]
    token = new_token()
    with BackgroundServer(create_viewer_app(volumes, token, editor, scorer, notes), token) as server:
        open_viewer(page, server)
        assert page.evaluate("document.body.dataset.slice") == str(NODULE[0])
        image = rgba(page, "before")
        scale = image.shape[1] / 512
        r, c = int((NODULE[1] + 0.5) * scale), int((NODULE[2] + 0.5) * scale)
        assert image[r, c, 0] - image[r, c, 2] > 100  # red-yellow heat on the nodule
        far = image[int(100 * scale), int(450 * scale)]
        assert far[0] == far[1] == far[2]  # grey where the map is low
        ring = image[r - 40: r + 40, c - 40: c + 40]
        assert ((ring[..., 1] > 200) & (ring[..., 0] < 150)).sum() > 20  # the green ground-truth circle
        page.screenshot(path=screenshots / "viewer_overlays.png")

        page.check("input[value=score]")
        click_voxel(page, "before", NODULE[1], NODULE[2], 512, 512)
        page.wait_for_function("document.body.dataset.score !== undefined", timeout=60_000)
        zyx = [int(v) for v in page.evaluate("document.body.dataset.scoreAt").split(",")]
        expected = score_locations(load_scan(lung1_dicom), load_detector(run), [zyx])[0][0].score
        assert float(page.evaluate("document.body.dataset.score")) == pytest.approx(expected, rel=1e-6)
        assert page.is_visible("#score-map")


def test_other_addresses_are_refused_without_the_flag_and_the_png_view_still_needs_o(lung1_dicom, capsys):
    from medfake.cli import main
    from medfake.viewer.server import check_host

    with pytest.raises(SystemExit) as exit_info:
        main(["view", str(lung1_dicom), "--serve", "--host", "0.0.0.0"])
    assert exit_info.value.code == 2 and "binds 127.0.0.1 unless you pass --allow-remote" in capsys.readouterr().err
    assert check_host("127.0.0.1", False) is None and check_host("::1", False) is None
    assert "warning" in check_host("0.0.0.0", True)
    with pytest.raises(SystemExit) as exit_info:
        main(["view", str(lung1_dicom)])
    assert exit_info.value.code == 2 and "give -o OUT.png" in capsys.readouterr().err
