"""`medfake reader-study serve`: one case after another for a named reader; every answer saved at once.

The app knows the study's public side only (`Study`): it never reads the key. Image ids in requests are
looked up in cases.json before any file is opened; reader names are checked against a strict pattern.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from medfake.errors import MedfakeError
from medfake.viewer.server import add_security, add_static
from medfake.viewer.study import Study, check_reader
from medfake.viewer.volumes import as_int16, geometry, plane_slice


class ImageCache:
    """The last few study images in memory (a reader scrolls one case at a time)."""

    def __init__(self, study: Study, size: int = 4):
        self.study, self.size = study, size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, image_id: str):
        from medfake.io import load_scan

        with self.lock:
            if image_id not in self.items:
                scan = load_scan(self.study.image_path(image_id))
                self.items[image_id] = (scan, as_int16(scan.voxels))
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            self.items.move_to_end(image_id)
            return self.items[image_id]


def create_study_app(study: Study, token: str):
    from fastapi import Body, FastAPI
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_security(app, token)
    add_static(app, "reader.html", token)
    images = ImageCache(study)

    def refused(exc: MedfakeError):
        return JSONResponse({"error": exc.one_line()}, status_code=400)

    @app.get("/api/progress/{reader}")
    def progress(reader: str):
        try:
            return study.progress(check_reader(reader))
        except MedfakeError as exc:
            return refused(exc)

    @app.get("/api/case/{reader}/{case_id}")
    def case(reader: str, case_id: str):
        try:
            check_reader(reader)
        except MedfakeError as exc:
            return refused(exc)
        if case_id not in study.cases:
            return PlainTextResponse("not found", status_code=404)
        entry = study.cases[case_id]
        described = [{"id": i, **geometry(images.get(i)[0])} for i in entry["images"]]
        return {"id": case_id, "layout": entry["layout"], "images": described,
                "position": study.order(reader).index(case_id) + 1, "total": len(study.case_ids)}

    @app.get("/api/image/{image_id}/{index}")
    def image_slice(image_id: str, index: int):
        try:
            _, voxels = images.get(image_id)
            values = plane_slice(voxels, "axial", index)
        except (KeyError, IndexError):
            return PlainTextResponse("not found", status_code=404)
        return Response(values.astype("<i2").tobytes(), media_type="application/octet-stream",
                        headers={"X-Rows": str(values.shape[0]), "X-Cols": str(values.shape[1])})

    @app.post("/api/answer")
    def answer(body: dict = Body(...)):
        try:
            return study.record(check_reader(body.get("reader")), str(body.get("case")), list(body.get("images") or []))
        except MedfakeError as exc:
            return refused(exc)

    return app
