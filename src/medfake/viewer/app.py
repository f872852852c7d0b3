"""`medfake view --serve`: the viewer's web app (FastAPI) over a VolumeSet, an optional Editor and Scorer.

Routes (all behind the token): `/` the page, `/static/NAME`, `/api/info`, `/api/slice/VOLUME/PLANE/INDEX`
(raw bytes; `Server-Timing` says how long the server took), and with a model or detector
`/api/edit`, `/api/undo`, `/api/save`, `/api/score`.
"""

from __future__ import annotations

import time
from pathlib import Path

from medfake.errors import MedfakeError
from medfake.viewer.server import add_security, add_static
from medfake.viewer.volumes import VolumeSet


def create_viewer_app(volumes: VolumeSet, token: str, editor=None, scorer=None, notes: list[str] | None = None):
    from fastapi import Body, FastAPI
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_security(app, token)
    add_static(app, "viewer.html", token)

    def refused(exc: Exception, status: int = 400):
        text = exc.one_line() if isinstance(exc, MedfakeError) else str(exc)
        return JSONResponse({"error": text}, status_code=status)

    @app.get("/api/info")
    def info():
        return {**volumes.info(), "actions": editor.actions if editor else [], "detector": scorer is not None,
                "notes": notes or [], **(editor.state() if editor else {"edits": 0, "edit_markers": []})}

    @app.get("/api/slice/{name}/{plane}/{index}")
    def slice_(name: str, plane: str, index: int):
        start = time.perf_counter()
        try:
            data, (rows, cols) = volumes.slice_bytes(name, plane, index)
        except (KeyError, IndexError):
            return PlainTextResponse("not found", status_code=404)
        took = (time.perf_counter() - start) * 1000
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Rows": str(rows), "X-Cols": str(cols), "Server-Timing": f"slice;dur={took:.2f}"})

    def point(body: dict) -> tuple[int, int, int]:
        try:
            return tuple(int(body[k]) for k in ("z", "y", "x"))
        except (KeyError, TypeError, ValueError):
            raise MedfakeError("the request needs integer z, y, x") from None

    if editor is not None:
        @app.post("/api/edit")
        def edit(body: dict = Body(...)):
            start = time.perf_counter()
            try:
                state = editor.apply(str(body.get("action")), point(body))
            except MedfakeError as exc:
                return refused(exc)
            return {**state, "seconds": time.perf_counter() - start}

        @app.post("/api/undo")
        def undo():
            try:
                return editor.undo()
            except MedfakeError as exc:
                return refused(exc)

        @app.post("/api/save")
        def save():
            try:
                return editor.save()
            except MedfakeError as exc:
                return refused(exc)

    if scorer is not None:
        @app.post("/api/score")
        def score(body: dict = Body(...)):
            try:
                return scorer.score(point(body))
            except MedfakeError as exc:
                return refused(exc)

    return app


def build_viewer(scan_path: Path, compare: Path | None = None, heatmap: Path | None = None,
                 manifest: Path | None = None, models=(), detector: Path | None = None,
                 outdir: Path | None = None, series: str | None = None, seed: int = 0, fmt: str = "same"):
    """Load everything named on the command line; returns (volumes, editor, scorer, notes)."""
    from medfake.io import load_scan
    from medfake.viewer.actions import Editor, Scorer, load_models, manifest_markers

    scan = load_scan(scan_path, series=series)
    other = load_scan(compare) if compare else None
    heat = load_heatmap(Path(heatmap), scan) if heatmap else None
    notes, markers = [], []
    if manifest:
        markers, warning = manifest_markers(Path(manifest), scan, [Path(scan_path)] + ([Path(compare)] if compare else []))
        notes += [warning] if warning else []
    tamper_models = load_models(models)
    volumes = VolumeSet.build(scan, other, heat, markers, editable=bool(tamper_models))
    editor = None
    if tamper_models:
        if outdir is None:
            raise MedfakeError("--model needs an output folder (-o/--out-dir) for the saved series and manifest")
        editor = Editor(volumes, Path(compare or scan_path), tamper_models, Path(outdir), seed, fmt)
    scorer = Scorer(volumes, Path(detector)) if detector else None
    return volumes, editor, scorer, notes


def load_heatmap(path: Path, scan):
    """A scan on the same grid, or the `anomaly_map.npz` of `medfake detect --screen` (an array only: it
    takes the scan's geometry)."""
    import numpy as np

    from medfake.io import load_scan

    if path.name.endswith(".npz") and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if "anomaly" in data and "voxels" not in data:
                    return scan.with_voxels(np.asarray(data["anomaly"], dtype=np.float32), modality="OT",
                                            meta={"path": str(path)})
        except (ValueError, OSError) as exc:
            raise MedfakeError(f"not a readable anomaly map ({exc.__class__.__name__})", path) from None
    return load_scan(path, modality="OT")
