"""The leakage-free split: whole duplicate groups go to one split, stratified by
ethnicity x gender x age band, seeded; validation and test keep one face per group. Also the
split file (``splits/*.csv``) that pins every later number to the same faces."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from faceattr.atomic import atomic_path
from faceattr.dataset import FaceData
from faceattr.inputerror import InputError
from faceattr.labels import AGE_BANDS, EXCLUDED, SPLITS

SPLIT_COLUMNS = ("row", "id", "pixel_sha1", "img_name", "age", "gender", "ethnicity", "group", "split")


def age_band(age: np.ndarray) -> np.ndarray:
    """Index of the age band (0-2, 3-12, 13-19, 20-29, ..., 70+: ``labels.AGE_BAND_NAMES``) for each age."""
    return np.searchsorted(np.array(AGE_BANDS[1:]), age, side="right")


def make_split(
    data: FaceData, group: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> np.ndarray:
    """Assign every face to 'train', 'val', 'test' or 'excluded'.

    Groups are stratified by their representative's (first member's) ethnicity x gender x age
    band; inside each stratum the groups are shuffled with ``seed`` and cut at the cumulative
    face fractions. Training keeps all members of a group (their differing labels are real
    label noise the model has to live with); validation and test keep only the representative
    so no face is counted twice and no near-copy sits on both sides.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise InputError(f"split fractions {fractions}: expected three non-negative numbers summing to 1")
    n = len(data)
    rng = np.random.default_rng(seed)
    # Representative = lowest row index of each group, so it does not depend on hashing order.
    order = np.lexsort((np.arange(n), group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    group_ids = group[first]
    sizes = np.bincount(group, minlength=group.max() + 1)[group_ids]
    stratum = (data.ethnicity[first].astype(np.int64) * 2 + data.gender[first]) * len(AGE_BANDS) + age_band(
        data.age[first]
    )
    group_split = np.empty(len(first), dtype=np.int8)
    cuts = np.cumsum(fractions)[:2]
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        members = members[rng.permutation(len(members))]
        # Place each group by the midpoint of its face span, so big groups do not skew a cut.
        cum = np.cumsum(sizes[members]) - sizes[members] / 2
        group_split[members] = np.searchsorted(cuts, cum / sizes[members].sum(), side="right")
    split_of_group = np.empty(group.max() + 1, dtype=np.int8)
    split_of_group[group_ids] = group_split
    split = np.array(SPLITS, dtype=object)[split_of_group[group]]
    is_first = np.zeros(n, bool)
    is_first[first] = True
    split[(split != "train") & ~is_first] = EXCLUDED
    return split.astype(str)


def split_hash(ids: np.ndarray, split: np.ndarray) -> str:
    """A short fingerprint of a split assignment, stored in checkpoints and results."""
    h = hashlib.sha1()
    for i, s in zip(ids, split):
        h.update(f"{i}:{s}\n".encode())
    return h.hexdigest()[:16]


def write_split_csv(data: FaceData, sha: np.ndarray, group: np.ndarray, split: np.ndarray, path: Path) -> Path:
    """Write the per-face split file (atomically), in input order."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SPLIT_COLUMNS)
        for k in range(len(data)):
            w.writerow(
                [
                    k,
                    data.ids[k],
                    sha[k],
                    data.names[k],
                    int(data.age[k]),
                    int(data.gender[k]),
                    int(data.ethnicity[k]),
                    int(group[k]),
                    split[k],
                ]
            )
    return path


def read_split_csv(path: Path, data: FaceData, sha: np.ndarray) -> np.ndarray:
    """Apply a split file to data, matching faces by id and pixel SHA-1.

    Every face must be in the file with the same pixels, so a split can only be applied to
    the input it was made from; a mismatch is an error, not a silent re-split.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such split file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "pixel_sha1", "split") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}")
        table = {}
        for row in reader:
            if row["split"] not in (*SPLITS, EXCLUDED):
                raise InputError(
                    f"{path}:{reader.line_num}: split {row['split']!r} is not one of train/val/test/excluded"
                )
            table[row["id"]] = (row["pixel_sha1"], row["split"])
    split = np.empty(len(data), dtype=object)
    for k, (face_id, digest) in enumerate(zip(data.ids, sha)):
        entry = table.get(face_id)
        if entry is None:
            raise InputError(f"{path}: face {face_id} of the input is not in the split file")
        if entry[0] != digest:
            raise InputError(
                f"{path}: face {face_id} has different pixels from the split file (was the input changed?)"
            )
        split[k] = entry[1]
    if len(table) != len(data):
        raise InputError(f"{path}: the split file lists {len(table)} faces, the input has {len(data)}")
    return split.astype(str)
