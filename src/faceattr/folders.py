"""Output folders that appear whole or not at all: build into a temp folder beside the target,
then swap it in with renames, so a reader (or a run killed midway) sees the old folder or the
new one, never half of one. ``faceattr prepare`` and ``faceattr evaluate`` write this way."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty temp folder beside ``out_dir``; when the block succeeds it replaces
    ``out_dir`` whole, when it fails (or is interrupted) it is deleted and ``out_dir`` kept."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp`` with two renames; the old folder is deleted afterwards."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
