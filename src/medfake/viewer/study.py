"""A blinded reader study (Becker et al. 2019; CT-GAN's trials): build the reading set, store the answers.

STUDY/ holds
- `cases.json`: what the readers see: cases (a single image, or a side-by-side pair) naming opaque image ids;
- `images/<id>.npz`: the voxels and geometry only (no file name, no DICOM header that says DERIVED);
- `key.json`: the sealed key (which image is tampered, where, whether it shows a nodule); the serve app
  never opens it, and `cases.json` records its SHA-256 so a changed key is noticed at analysis;
- `answers/<reader>.jsonl`: one line per answered case, appended and synced to disk at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medfake.errors import MedfakeError
from medfake.io import load_scan, save_scan
from medfake.io.atomic import atomic_dir
from medfake.runinfo import write_run_record

CASES, KEY, IMAGES, ANSWERS = "cases.json", "key.json", "images", "answers"
READER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
RATING = range(1, 6)


@dataclass
class Source:
    """One image of the study before blinding: a scan path and its truth."""

    path: Path
    tampered: bool
    rows: list  # manifest rows (tampered only)
    original: Path | None = None


def tampered_sources(manifest: Path) -> list[Source]:
    """One Source per tampered output the manifest names (rows of one output grouped)."""
    from medfake.io.tables import read_manifest

    groups: dict[str, list] = defaultdict(list)
    for row in read_manifest(manifest):
        if row.output:
            groups[row.output].append(row)
    sources = []
    for output, rows in groups.items():
        path = Path(output) if Path(output).is_absolute() else manifest.parent / output
        if not path.exists():
            raise MedfakeError(f"the manifest names {output}, which does not exist", manifest)
        sources.append(Source(path, True, rows, Path(rows[0].scan) if rows[0].scan else None))
    if not sources:
        raise MedfakeError("the manifest names no tampered output", manifest)
    return sources


def choose_cases(genuine: list[Path], tampered: list[Source], pairs: int, singles: int, rng) -> list[dict]:
    """Pairs: a tampered output beside its original. Singles: half tampered (rounded down), half genuine.
    No tampered output is used twice; nothing is drawn with replacement."""
    n_tampered, n_genuine = singles // 2, singles - singles // 2
    if pairs + n_tampered > len(tampered):
        raise MedfakeError(f"{pairs} pair(s) and {n_tampered} tampered single(s) need {pairs + n_tampered} "
                           f"tampered scans; the manifest names {len(tampered)}")
    if n_genuine > len(genuine):
        raise MedfakeError(f"{singles} single(s) need {n_genuine} genuine scans; --genuine gives {len(genuine)}")
    order = rng.permutation(len(tampered))
    paired, single_t = [tampered[i] for i in order[:pairs]], [tampered[i] for i in order[pairs:pairs + n_tampered]]
    cases = []
    for source in paired:
        if source.original is None or not source.original.exists():
            raise MedfakeError(f"the original of {source.path.name} ({source.original}) is not readable for a pair")
        images = [source, Source(source.original, False, [])]
        cases.append({"layout": "pair", "sources": [images[i] for i in rng.permutation(2)]})
    cases += [{"layout": "single", "sources": [s]} for s in single_t]
    cases += [{"layout": "single", "sources": [Source(genuine[i], False, [])]}
              for i in rng.choice(len(genuine), n_genuine, replace=False)]
    return [cases[i] for i in rng.permutation(len(cases))]


def nodule_count(path: Path, scan, table) -> int | None:
    from medfake.data.cohort import locations_for

    return None if table is None else len(locations_for(path, scan, table))


def image_truth(source: Source, scan, table) -> dict:
    """Tampered or not, where, and whether the image shows a nodule (None when no --nodules table says)."""
    base = nodule_count(source.original or source.path, scan, table) if source.tampered else nodule_count(source.path, scan, table)
    injected = sum(r.action == "inject" for r in source.rows)
    removed = sum(r.action == "remove" for r in source.rows)
    if base is None:
        shows = True if injected else None
    else:
        shows = base + injected - removed > 0
    world = [[r.world_x, r.world_y, r.world_z] for r in source.rows]
    return {"source": str(source.path), "tampered": source.tampered,
            "actions": sorted({r.action for r in source.rows}), "locations_world": world,
            "locations_zyx": [[int(v) for v in scan.world_to_voxel(w)] for w in world],
            "original": str(source.original) if source.original else None, "shows_nodule": shows}


def make_study(genuine: list[Path], manifest: Path, out: Path, pairs: int = 0, singles: int = 0, seed: int = 0,
               nodules: Path | None = None, progress=None) -> dict:
    """Build STUDY (refuses an existing folder: answers must never be overwritten)."""
    from medfake.io.tables import read_locations

    if pairs < 0 or singles < 0 or pairs + singles == 0:
        raise MedfakeError("ask for at least one case (--pairs N and/or --singles M)")
    if out.exists():
        raise MedfakeError("the study folder exists already (a study is never overwritten)", out)
    rng = np.random.default_rng(seed)
    table = read_locations(nodules) if nodules else None
    cases = choose_cases(list(genuine), tampered_sources(Path(manifest)), pairs, singles, rng)
    ids: dict[str, str] = {}
    key_images, public_images = {}, {}
    task = progress.add_task("images", total=sum(len(c["sources"]) for c in cases)) if progress else None
    with atomic_dir(out) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / ANSWERS).mkdir()
        for case in cases:
            for source in case["sources"]:
                if str(source.path) not in ids:
                    image_id = f"img-{rng.integers(16 ** 8):08x}"
                    scan = load_scan(source.path)
                    save_scan(scan.with_voxels(scan.voxels, meta={}), tmp / IMAGES / f"{image_id}.npz", format="npz")
                    ids[str(source.path)] = image_id
                    key_images[image_id] = image_truth(source, scan, table)
                    public_images[image_id] = {"shape": list(scan.shape)}
                if task is not None:
                    progress.advance(task)
        public = [{"id": f"case-{k + 1:02d}", "layout": c["layout"], "images": [ids[str(s.path)] for s in c["sources"]]}
                  for k, c in enumerate(cases)]
        key = {"images": key_images, "cases": public, "manifest": str(manifest), "nodules": str(nodules) if nodules else None}
        key_text = json.dumps(key, indent=1)
        (tmp / KEY).write_text(key_text)
        (tmp / CASES).write_text(json.dumps({"version": 1, "seed": seed, "cases": public, "images": public_images,
                                             "key_sha256": hashlib.sha256(key_text.encode()).hexdigest()}, indent=1))
        write_run_record(tmp, {"genuine": [str(g) for g in genuine], "tampered": str(manifest), "pairs": pairs,
                               "singles": singles, "nodules": str(nodules) if nodules else None}, seed)
    return {"cases": len(public), "images": len(key_images), "pairs": pairs, "singles": singles}


# --- reading ---------------------------------------------------------------------------------------------

class Study:
    """The public side of a study folder (cases, images, answers); never the key."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / CASES
        if not path.exists():
            raise MedfakeError("not a reader-study folder (no cases.json; build one with `reader-study make`)", folder)
        data = json.loads(path.read_text())
        self.seed = int(data["seed"])
        self.cases = {c["id"]: c for c in data["cases"]}
        self.case_ids = [c["id"] for c in data["cases"]]
        self.shapes = {k: tuple(v["shape"]) for k, v in data["images"].items()}
        self.key_sha256 = data.get("key_sha256")

    def image_path(self, image_id: str) -> Path:
        if image_id not in self.shapes:  # only ids from cases.json reach the file system
            raise KeyError(image_id)
        return self.folder / IMAGES / f"{image_id}.npz"

    def order(self, reader: str) -> list[str]:
        """Each reader gets their own fixed random order of the cases."""
        rng = np.random.default_rng([self.seed, zlib.crc32(reader.encode())])
        return [self.case_ids[i] for i in rng.permutation(len(self.case_ids))]

    def answers_path(self, reader: str) -> Path:
        return self.folder / ANSWERS / f"{check_reader(reader)}.jsonl"

    def answers(self, reader: str) -> dict[str, dict]:
        """{case id: the reader's last answer}; a torn last line (power cut) is ignored."""
        path = self.answers_path(reader)
        out = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue
                out[answer["case"]] = answer
        return out

    def readers(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / ANSWERS).glob("*.jsonl"))

    def progress(self, reader: str) -> dict:
        order, done = self.order(reader), self.answers(reader)
        remaining = [c for c in order if c not in done]
        nxt = remaining[0] if remaining else None
        return {"reader": reader, "total": len(order), "done": len(order) - len(remaining), "next": nxt,
                "position": order.index(nxt) + 1 if nxt else None}

    def record(self, reader: str, case_id: str, images: list[dict]) -> dict:
        """Validate and append one answer, flushed and synced before returning."""
        case = self.cases.get(case_id)
        if case is None:
            raise MedfakeError(f"unknown case '{case_id}'")
        if [i.get("image") for i in images] != case["images"]:
            raise MedfakeError("the answer must rate every image of the case, in order")
        clean = [self._rating(case_id, item) for item in images]
        line = json.dumps({"case": case_id, "images": clean,
                           "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        path = self.answers_path(reader)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return self.progress(reader)

    def _rating(self, case_id: str, item: dict) -> dict:
        try:
            malignancy, manipulation = int(item["malignancy"]), int(item["manipulation"])
        except (KeyError, TypeError, ValueError):
            raise MedfakeError(f"{case_id}: both ratings (1-5) are needed") from None
        if malignancy not in RATING or manipulation not in RATING:
            raise MedfakeError(f"{case_id}: ratings run from 1 to 5")
        click = item.get("click")
        if click is not None:
            shape = self.shapes[item["image"]]
            try:
                click = [int(v) for v in click]
            except (TypeError, ValueError):
                raise MedfakeError(f"{case_id}: the click must be z, y, x") from None
            if len(click) != 3 or not all(0 <= v < n for v, n in zip(click, shape)):
                raise MedfakeError(f"{case_id}: the click lies outside the image")
        return {"image": item["image"], "malignancy": malignancy, "manipulation": manipulation, "click": click}


def check_reader(name: str) -> str:
    if not isinstance(name, str) or not READER_NAME.match(name):
        raise MedfakeError("a reader name is 1-40 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name
