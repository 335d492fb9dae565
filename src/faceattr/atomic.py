"""Atomic file writes: write to a temp file beside the target, then rename over it, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj: dict, path: str | Path) -> Path:
    """Write JSON atomically; numpy scalars and arrays and paths are written as plain values."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=jsonable)
        f.write("\n")
    return path


def jsonable(value: object) -> object:
    """``json.dump``'s fallback: numpy values as Python ones, paths as strings."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":  # np.generic and np.ndarray
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
