"""What ``faceattr predict`` is given, turned into the files to read: paths, folders (their
images, recursively) and glob patterns, each input that names nothing kept with its reason."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from faceattr.imageio import PHOTO_SUFFIXES


def expand_inputs(patterns: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]], int]:
    """Files to read from paths, folders (their images, recursively, in name order) and globs,
    without repeats; (input, reason) for each input that names nothing; and how many files in
    the folders were passed over for not having an image suffix (a file named directly is
    always read, and fails with a reason if it is no image)."""
    files: dict[Path, None] = {}
    missing: list[tuple[str, str]] = []
    passed_over: set[Path] = set()

    def add_folder(folder: Path) -> int:
        found = []
        for f in folder.rglob("*"):
            if f.is_file():
                if f.name.lower().endswith(PHOTO_SUFFIXES):
                    found.append(f)
                else:
                    passed_over.add(f)
        files.update(dict.fromkeys(sorted(found)))
        return len(found)

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            if not add_folder(path):
                missing.append((pattern, f"folder holds no image files ({', '.join(PHOTO_SUFFIXES)})"))
        elif path.exists():
            files[path] = None
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            for m in matches:
                if Path(m).is_dir():
                    add_folder(Path(m))
                else:
                    files[Path(m)] = None
            if not matches:
                missing.append((pattern, "no file matches this pattern"))
        else:
            missing.append((pattern, "no such file or folder"))
    return list(files), missing, len(passed_over - set(files))
