"""What ``faceattr predict`` is given, turned into the files to read: paths, folders (their
images, recursively) and glob patterns, each input that names nothing kept with its reason."""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterable
from pathlib import Path

from faceattr.imageio import PHOTO_SUFFIXES


def expand_inputs(patterns: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]], int]:
    """Files to read from paths, folders (their images, recursively, in name order, following
    symbolic links to folders once) and globs, without repeats; (path, reason) for each input or
    folder entry that cannot be read (no such path, a broken or looping symbolic link, a folder
    that cannot be listed), so that nothing vanishes from the output and the counts; and how many
    files in the folders were passed over for not having an image suffix (a file named directly
    is always read, and fails with a reason if it is no image)."""
    files: dict[Path, None] = {}
    failed: list[tuple[str, str]] = []
    passed_over: set[Path] = set()

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found, problems = _walk(path, passed_over)
            files.update(dict.fromkeys(found))
            failed += problems
            if not found and not problems:
                failed.append((pattern, f"folder holds no image files ({', '.join(PHOTO_SUFFIXES)})"))
        elif path.exists():
            files[path] = None
        elif path.is_symlink():
            failed.append((pattern, _broken_link(path)))
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            for m in matches:
                if Path(m).is_dir():
                    found, problems = _walk(Path(m), passed_over)
                    files.update(dict.fromkeys(found))
                    failed += problems
                else:
                    files[Path(m)] = None
            if not matches:
                failed.append((pattern, "no file matches this pattern"))
        else:
            failed.append((pattern, "no such file or folder"))
    return list(files), failed, len(passed_over - set(files))


def _walk(folder: Path, passed_over: set[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files under ``folder`` in name order, and (path, reason) for what could not be
    read. A linked folder already visited (a link loop, or two links to one folder) is skipped
    with a reason rather than read twice or forever."""
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def unreadable(e: OSError) -> None:
        problems.append((e.filename or str(folder), _reason(e)))

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            problems.append((root, "a symbolic link back to a folder already read; skipped"))
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() and not path.exists():
                problems.append((str(path), _broken_link(path)))
            elif not path.is_file():
                problems.append((str(path), "not a regular file (a device, pipe or socket); skipped"))
            elif name.lower().endswith(PHOTO_SUFFIXES):
                found.append(path)
            else:
                passed_over.add(path)
    return found, problems


def _broken_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link that points to itself (a loop)"
    return f"a broken symbolic link (to {os.readlink(path)})"


def _reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied (cannot list this folder)"
    return f"cannot list this folder ({e.strerror or e})"
