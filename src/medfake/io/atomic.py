"""Write outputs all-or-nothing: into a temporary sibling, renamed into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from medfake.errors import MedfakeError


def _default_mode(is_dir: bool) -> int:
    """mkdtemp/mkstemp create private (0700/0600) entries; outputs should follow the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def check_destination(dest: Path, overwrite: bool) -> None:
    if dest.exists() and dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise MedfakeError("destination folder is not empty (use --overwrite)", dest)
    if dest.exists() and dest.is_file() and not overwrite:
        raise MedfakeError("destination file exists (use --overwrite)", dest)


@contextlib.contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `dest`; on success it replaces `dest`, on error it vanishes."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    tmp.chmod(_default_mode(True))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to `dest` (same suffixes); renamed onto `dest` on success."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".partial{suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(_default_mode(False))
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def unused_name(outdir: Path, base: str) -> Path:
    """`outdir/base`, or `base_2`, `base_3`… when an output of that stem (any suffix) is already there."""
    outdir = Path(outdir)
    taken = {p.name.split(".")[0] for p in outdir.iterdir()} if outdir.exists() else set()
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return outdir / name
