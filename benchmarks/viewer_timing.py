"""The web viewer's speed in headless Chromium on a 512 x 512 x 300 CT (lung1's 48 slices repeated along z):
first render after the page opens, server time of a slice (Server-Timing), the page's time per wheel step,
and the click-inject round trip with a cpu-small injector (a couple of training steps: speed, not quality).
Targets (issue #14): first render <= 2 s, slice <= 50 ms server time, click-inject <= 1 s.
Prints and saves benchmarks/results/viewer_timing.json (+ run record); `--screenshots DIR` also saves PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medfake.data.samples import sample_path
from medfake.io import load_scan
from medfake.runinfo import write_run_record
from medfake.viewer.actions import Editor, load_models
from medfake.viewer.app import create_viewer_app
from medfake.viewer.server import BackgroundServer, new_token
from medfake.viewer.volumes import VolumeSet

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
SLICES = 300
WHEEL_STEPS = 20


def big_scan():
    lung1 = load_scan(sample_path("lung1"))
    voxels = np.resize(lung1.voxels, (SLICES,) + lung1.shape[1:])
    return lung1.with_voxels(voxels, spacing=(1.0,) + lung1.spacing[1:])


def cpu_small_injector(root: Path) -> Path:
    from medfake.tamper.model import TrainConfig
    from medfake.tamper.train import train
    from medfake.tamper.trainset import AugmentConfig, TrainsetConfig, build_trainset

    data = build_trainset("inject", [sample_path("lung1")], root / "set", seed=0,
                          coords=sample_path("lung1").parent / "annotations.csv",
                          config=TrainsetConfig("inject", augment=AugmentConfig(rotation_step_deg=180)))
    config = TrainConfig.resolve("inject", "cpu-small", batch_size=2, steps=2, val_every=2, snapshot_every=2,
                                 checkpoint_every=2)
    return train(data, root / "run", config, show_progress=False)


def measure(page, server, scan) -> dict:
    start = time.perf_counter()
    page.goto(server.url)
    page.wait_for_function("+document.body.dataset.renders >= 1", timeout=120_000)
    first = time.perf_counter() - start
    box = page.locator("#canvas-before").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    steps = []
    for _ in range(WHEEL_STEPS):
        renders = page.evaluate("+document.body.dataset.renders")
        t0 = time.perf_counter()
        page.mouse.wheel(0, 120)
        page.wait_for_function(f"+document.body.dataset.renders > {renders}")
        steps.append(time.perf_counter() - t0)
    server_ms = page.evaluate("""performance.getEntriesByType('resource')
        .filter(e => e.name.includes('/api/slice/before/'))
        .flatMap(e => e.serverTiming.filter(t => t.name === 'slice').map(t => t.duration))""")
    z = int(page.evaluate("document.body.dataset.slice"))
    page.check("input[value=inject]")
    lung = np.argwhere(scan.voxels[z, 300:400, 320:420] < -800)
    row, col = (lung[len(lung) // 2] + (300, 320)).tolist()
    t0 = time.perf_counter()
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / 512, box["y"] + (row + 0.5) * box["height"] / 512)
    page.wait_for_function("document.body.dataset.edits === '1'", timeout=120_000)
    renders = page.evaluate("+document.body.dataset.renders")
    page.wait_for_function(f"+document.body.dataset.renders >= {renders}")
    inject = time.perf_counter() - t0
    return {"first_render_s": first, "wheel_step_s_median": statistics.median(steps),
            "slice_server_ms_median": statistics.median(server_ms), "slice_server_ms_max": max(server_ms),
            "slice_requests": len(server_ms), "click_inject_round_trip_s": inject}


def main() -> dict:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    scan = big_scan()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = load_models([cpu_small_injector(tmp)])
        volumes = VolumeSet.build(scan, editable=True)
        editor = Editor(volumes, tmp / "big.nrrd", models, tmp / "out")
        token = new_token()
        with BackgroundServer(create_viewer_app(volumes, token, editor), token) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1700, "height": 1000})
            timings = measure(page, server, scan)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.screenshots / "viewer_timing.png")
            browser.close()
    out = {"scan_shape": list(scan.shape), "browser": "Debian chromium, headless", "load_average_1min": os.getloadavg()[0],
           "cpu_count": os.cpu_count(), "targets": {"first_render_s": 2.0, "slice_server_ms": 50.0,
                                                    "click_inject_round_trip_s": 1.0}, **timings}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "viewer_timing.json").write_text(json.dumps(out, indent=1))
    write_run_record(RESULTS, {"benchmark": "viewer_timing"}, name="viewer_timing.run.json")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
