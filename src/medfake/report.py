"""A self-contained HTML report: every image embedded as base64 PNG, no external files or scripts."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2.2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #bbb;padding:.25rem .6rem;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.4rem;vertical-align:top}figcaption{font-size:.85rem;color:#555;max-width:900px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem}
.note{color:#555;font-size:.9rem}
"""


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 grey or RGB(A) array as PNG."""
    from matplotlib import image as mpimg

    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.asarray(image), format="png", cmap="gray" if np.ndim(image) == 2 else None)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class Section:
    key: str
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, text: str, cls: str = "") -> "Section":
        self.parts.append(f"<p class='{cls}'>{html.escape(text)}</p>")
        return self

    def image(self, image: np.ndarray | bytes | Path, caption: str = "") -> "Section":
        if isinstance(image, Path):
            png = image.read_bytes()
        elif isinstance(image, (bytes, bytearray)):
            png = bytes(image)
        else:
            png = png_bytes(image)
        self.parts.append(f"<figure><img src='{data_uri(png)}' alt='{html.escape(caption)}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def table(self, header: list[str], rows: list[list], cls: str = "") -> "Section":
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table class='{cls}'><tr>{head}</tr>{body}</table>")
        return self

    def code(self, obj) -> "Section":
        text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, default=str)
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        return self


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def render(title: str, sections: list[Section]) -> str:
    toc = "".join(f"<li><a href='#{s.key}'>{html.escape(s.title)}</a></li>" for s in sections)
    body = "".join(f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2>{''.join(s.parts)}</section>" for s in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>{toc}</ul>{body}</body></html>")


def write_report(path: str | Path, title: str, sections: list[Section]) -> Path:
    from medfake.io.atomic import atomic_file

    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(render(title, sections), encoding="utf-8")
    return path
