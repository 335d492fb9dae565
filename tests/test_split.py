"""Split: no duplicate group crosses splits, val/test keep one face per group, fractions and
ethnicity shares hold, the seed decides, and the split file round-trips and refuses other input."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from faceattr.dataset import FaceData
from faceattr.dedupe import find_duplicates, pixel_sha1
from faceattr.inputerror import InputError
from faceattr.labels import EXCLUDED, SPLITS
from faceattr.split import (
    SPLIT_COLUMNS,
    age_band,
    make_split,
    read_split_csv,
    split_hash,
    write_split_csv,
)


def to_facedata(sf) -> FaceData:
    n = len(sf.images)
    return FaceData(
        sf.images, sf.age, sf.gender, sf.ethnicity, np.array([f"row{k:05d}" for k in range(n)]), sf.names, "s"
    )


@pytest.fixture(scope="module")
def big() -> tuple[FaceData, np.ndarray]:
    """3000 label-only faces (1x1 images) with skewed ethnicity and ~12% of faces in groups of 2-4."""
    n = 3000
    rng = np.random.default_rng(7)
    group = np.arange(n)
    for start in range(0, 360, 4):
        group[start : start + rng.integers(2, 5)] = start
    group = np.unique(group, return_inverse=True)[1]
    data = FaceData(
        images=np.zeros((n, 1, 1), np.uint8),
        age=rng.integers(1, 100, n).astype(np.int16),
        gender=rng.integers(0, 2, n).astype(np.int8),
        ethnicity=rng.choice(5, n, p=[0.45, 0.2, 0.15, 0.15, 0.05]).astype(np.int8),
        ids=np.array([f"row{k:05d}" for k in range(n)]),
        names=np.array([f"{k}.jpg" for k in range(n)]),
        source="labels only",
    )
    return data, group


def check_leak_free(split: np.ndarray, group: np.ndarray) -> None:
    """No group has kept faces in two splits; in val/test exactly its lowest row is kept."""
    assert set(split.tolist()) <= {*SPLITS, EXCLUDED}
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        kept = split[rows][split[rows] != EXCLUDED]
        assert len(set(kept.tolist())) == 1, f"group {g} rows {rows} split {split[rows]}"
        if kept[0] == "train":
            assert (split[rows] == "train").all()
        else:
            assert split[rows[0]] == kept[0] and (split[rows[1:]] == EXCLUDED).all()


def group_split(split: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The split of every face's group (excluded faces count for their group's split)."""
    first = {}
    for g, s in zip(group, split):
        if s != EXCLUDED:
            first[g] = s
    return np.array([first[g] for g in group])


def test_fixture_split_is_leak_free(synthetic_faces):
    data = to_facedata(synthetic_faces)
    dup = find_duplicates(data.images)
    split = make_split(data, dup.group, seed=0)
    assert split.shape == (300,) and split.dtype.kind == "U"
    check_leak_free(split, dup.group)
    for a, b in np.concatenate([synthetic_faces.exact_pairs, synthetic_faces.near_pairs]):
        assert group_split(split, dup.group)[a] == group_split(split, dup.group)[b]
    counts = {s: int((split == s).sum()) for s in SPLITS}
    assert 190 <= counts["train"] <= 225 and 30 <= counts["val"] <= 60 and 30 <= counts["test"] <= 60


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_big_split_is_leak_free_and_respects_fractions(big, seed):
    data, group = big
    split = make_split(data, group, fractions=(0.6, 0.25, 0.15), seed=seed)
    check_leak_free(split, group)
    held_out = group_split(split, group) != "train"
    assert (split == EXCLUDED).sum() == held_out.sum() - len(np.unique(group[held_out]))
    shares = [(group_split(split, group) == s).mean() for s in SPLITS]
    np.testing.assert_allclose(shares, [0.6, 0.25, 0.15], atol=0.02)


def test_big_split_is_stratified_by_ethnicity(big):
    data, group = big
    split = make_split(data, group, seed=0)
    overall = np.bincount(data.ethnicity, minlength=5) / len(data)
    for s in SPLITS:
        share = np.bincount(data.ethnicity[split == s], minlength=5) / (split == s).sum()
        np.testing.assert_allclose(share, overall, atol=0.02, err_msg=s)
    for s in SPLITS:  # gender too, it is part of the stratum
        assert abs(data.gender[split == s].mean() - data.gender.mean()) < 0.02


def test_seed_decides_the_split(big):
    data, group = big
    a, b = make_split(data, group, seed=3), make_split(data, group, seed=3)
    np.testing.assert_array_equal(a, b)
    c = make_split(data, group, seed=4)
    assert (a != c).mean() > 0.2
    assert split_hash(data.ids, a) == split_hash(data.ids, b) != split_hash(data.ids, c)
    assert len(split_hash(data.ids, a)) == 16


def test_zero_fraction_leaves_split_empty(big):
    data, group = big
    split = make_split(data, group, fractions=(0.8, 0.2, 0.0), seed=0)
    assert (split == "test").sum() == 0 and (split == "val").sum() > 400


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_input_errors(big, fractions):
    data, group = big
    with pytest.raises(InputError, match="expected three non-negative numbers summing to 1"):
        make_split(data, group, fractions=fractions)


def test_age_band():
    ages = np.array([1, 2, 3, 12, 13, 19, 20, 29, 30, 69, 70, 116])
    assert age_band(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 7, 8, 8]


@pytest.fixture
def written(synthetic_faces, tmp_path):
    data = to_facedata(synthetic_faces)
    dup = find_duplicates(data.images)
    split = make_split(data, dup.group, seed=0)
    sha = pixel_sha1(data.images)
    path = write_split_csv(data, sha, dup.group, split, tmp_path / "split.csv")
    return data, sha, dup.group, split, path


def test_split_csv_round_trip(written):
    data, sha, group, split, path = written
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == SPLIT_COLUMNS and len(rows) == 301
    assert rows[1][:2] == ["0", "row00000"] and rows[1][2] == sha[0]
    assert [r[-1] for r in rows[1:]] == split.tolist()
    assert [int(r[7]) for r in rows[1:]] == group.tolist()
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]
    np.testing.assert_array_equal(read_split_csv(path, data, sha), split)


def test_split_csv_applies_to_shuffled_input(written):
    data, sha, _, split, path = written
    order = np.random.default_rng(0).permutation(len(data))
    np.testing.assert_array_equal(read_split_csv(path, data.subset(order), sha[order]), split[order])


def test_split_csv_rejects_changed_pixels(written):
    data, _, _, _, path = written
    images = data.images.copy()
    images[17, 0, 0] ^= 1
    with pytest.raises(InputError, match=rf"^{path}: face row00017 has different pixels from the split file"):
        read_split_csv(path, data, pixel_sha1(images))


def test_split_csv_rejects_missing_and_extra_faces(written):
    data, sha, _, _, path = written
    lines = path.read_text().splitlines(keepends=True)
    short = path.with_name("short.csv")
    short.write_text("".join(lines[:6] + lines[7:]))  # drops row00005
    with pytest.raises(InputError, match=rf"^{short}: face row00005 of the input is not in the split file"):
        read_split_csv(short, data, sha)
    keep = np.arange(len(data)) != 5
    with pytest.raises(InputError, match=rf"^{path}: the split file lists 300 faces, the input has 299"):
        read_split_csv(path, data.subset(keep), sha[keep])


def test_split_csv_rejects_bad_files(written, tmp_path):
    data, sha, _, _, path = written
    lines = path.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(lines[:4]) + lines[4].rsplit(",", 1)[0] + ",holdout\n")
    with pytest.raises(InputError, match=rf"^{bad}:5: split 'holdout' is not one of train/val/test/excluded"):
        read_split_csv(bad, data, sha)
    bad.write_text("id,split\nrow00000,train\n")
    with pytest.raises(InputError, match=rf"^{bad}:1: missing column\(s\) pixel_sha1"):
        read_split_csv(bad, data, sha)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none.csv'}: no such split file"):
        read_split_csv(tmp_path / "none.csv", data, sha)
