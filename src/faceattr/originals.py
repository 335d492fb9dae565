"""The UTKFace originals (200x200 RGB JPEGs) behind the rows of a prepared 48x48 table: read
from the archive, and each row paired with its file. The benchmarks run the photo path on them
and the teacher embeddings (``faceattr.teacher``) are computed from them.

A Kaggle row is paired with a UTKFace file as tools/compare_prepared.py pairs them: the SHA-1 of
the file read at 48x48 gray (``faceattr.readers.decode_image``) equals the row's pixel SHA-1;
among files with the same pixels, the one whose name ends with the row's img_name and has its
labels wins.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from faceattr.dataset import FaceData
from faceattr.dedupe import pixel_sha1
from faceattr.readers import decode_image, parse_utk_name


def utk_files(archive: Path) -> dict[str, bytes]:
    """File name -> JPEG bytes of every .jpg in the UTKFace archive."""
    with tarfile.open(archive, "r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.endswith(".jpg")}


def match_rows(rows: FaceData, row_sha: np.ndarray, files: dict[str, bytes]) -> list[str | None]:
    """The UTKFace file of each row (None when no file has its pixels); ``row_sha`` holds the
    rows' pixel SHA-1s (``Prepared.sha``).

    A row's img_name is the file name less its label fields, so the files with the row's name
    and labels are tried first; every pairing is checked by pixel SHA-1, and rows left over are
    looked up among all files by SHA-1 alone."""
    sha_of: dict[str, str] = {}

    def sha(name: str) -> str:
        if name not in sha_of:
            sha_of[name] = pixel_sha1(decode_image(files[name], 48, True)[None])[0]
        return sha_of[name]

    by_stem: dict[str, list[str]] = {}
    for name in sorted(files):
        by_stem.setdefault(name.rsplit("/", 1)[-1].split("_", 3)[-1].replace(" ", ""), []).append(name)
    out: list[str | None] = []
    for one_sha, img_name, age, gender, eth in zip(row_sha, rows.names, rows.age, rows.gender, rows.ethnicity):
        labels = (int(age), int(gender), int(eth))
        named = [n for n in by_stem.get(str(img_name), []) if parse_utk_name(n) == labels]
        out.append(next((n for n in named if sha(n) == one_sha), None))
    if None in out:
        by_sha: dict[str, list[str]] = {}
        for name in sorted(files):
            by_sha.setdefault(sha(name), []).append(name)
        out = [m or (by_sha.get(s) or [None])[0] for m, s in zip(out, row_sha)]
    return out
