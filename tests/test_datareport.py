"""Data report: every plot is a real PNG, the JSON counts match numpy, the Markdown names every class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from faceattr.datareport import PLOT_FILES, SPLIT_VALUES, write_data_report
from faceattr.dataset import FaceData
from faceattr.labels import AGE_BAND_NAMES, ETHNICITIES, GENDERS


def make_faces(rgb: bool, n: int = 60, seed: int = 0) -> tuple[FaceData, np.ndarray, np.ndarray]:
    """Random faces with three planted duplicate pairs; the last pair disagrees on gender."""
    rng = np.random.default_rng(seed)
    shape = (n, 48, 48, 3) if rgb else (n, 48, 48)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    gender = rng.integers(0, 2, n).astype(np.int8)
    ethnicity = rng.integers(0, 5, n).astype(np.int8)
    pairs = np.array([[0, 10], [1, 11], [2, 12]])
    images[pairs[:, 1]] = images[pairs[:, 0]]
    gender[pairs[:2, 1]] = gender[pairs[:2, 0]]
    ethnicity[pairs[:, 1]] = ethnicity[pairs[:, 0]]
    gender[12] = 1 - gender[2]
    data = FaceData(
        images=images,
        age=rng.integers(1, 117, n).astype(np.int16),
        gender=gender,
        ethnicity=ethnicity,
        ids=np.array([f"row{i:05d}" for i in range(n)]),
        names=np.array([f"img{i}.jpg" for i in range(n)]),
        source="synthetic",
    )
    split = rng.choice(np.array(SPLIT_VALUES), n, p=[0.6, 0.15, 0.15, 0.1])
    split[pairs[:, 1]] = split[pairs[:, 0]]
    return data, split, pairs


def assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_report_counts_match_numpy(tmp_path, rgb):
    data, split, pairs = make_faces(rgb)
    summary = {"rows": 60, "dedupe": {"groups": 3}}
    report = write_data_report(tmp_path, data, split, summary, pairs, np.array([0.0, 0.0, 0.5]))

    for name in PLOT_FILES.values():
        assert_png(tmp_path / "plots" / name)
    assert (tmp_path / "plots" / "split_distribution.csv").is_file()
    assert json.loads((tmp_path / "data_report.json").read_text()) == report
    assert {p.name for p in tmp_path.iterdir()} == {"plots", "data_report.json", "data_report.md"}

    labels = report["labels"]
    assert report["summary"] == summary
    assert labels["n"] == 60
    assert list(labels["ethnicity"].values()) == np.bincount(data.ethnicity, minlength=5).tolist()
    assert list(labels["gender"].values()) == np.bincount(data.gender, minlength=2).tolist()
    for i, eth in enumerate(ETHNICITIES):
        for j, g in enumerate(GENDERS):
            expected = int(((data.ethnicity == i) & (data.gender == j)).sum())
            assert labels["ethnicity_by_gender"][eth][g] == expected
    assert labels["age"]["median"] == float(np.median(data.age))
    assert labels["age"]["min"] == data.age.min() and labels["age"]["max"] == data.age.max()
    assert labels["age_bands"]["0-2"] == int((data.age <= 2).sum())
    assert labels["age_bands"]["70+"] == int((data.age >= 70).sum())
    assert sum(labels["age_bands"].values()) == 60

    splits = report["splits"]
    assert list(splits) == list(SPLIT_VALUES)
    for s in SPLIT_VALUES:
        assert splits[s]["n"] == int((split == s).sum())
    for key in ("ethnicity", "gender", "age_bands"):
        for cls in labels[key]:
            assert sum(splits[s][key][cls] for s in SPLIT_VALUES) == labels[key][cls]

    dups = report["duplicates"]
    assert dups["pairs"] == 3 and dups["label_conflicts"] == dups["gender_conflicts"] == 1
    assert dups["pairs_across_splits"] == 0
    assert dups["conflicts_listed"][0]["ids"] == ["row00002", "row00012"]

    md = (tmp_path / "data_report.md").read_text()
    for name in ETHNICITIES + GENDERS + AGE_BAND_NAMES:
        assert name in md
    for rel in report["plots"].values():
        assert f"]({rel})" in md


def test_report_without_duplicates(tmp_path):
    data, split, _ = make_faces(rgb=False, n=20)
    report = write_data_report(tmp_path, data, split, {}, np.zeros((0, 2), dtype=int), np.zeros(0))
    assert_png(tmp_path / "plots" / PLOT_FILES["duplicate_pairs"])
    assert report["duplicates"]["pairs"] == 0
    assert report["duplicates"]["mad"]["median"] is None
    assert "0 duplicate pairs" in (tmp_path / "data_report.md").read_text()


def test_unknown_split_value_is_named(tmp_path):
    data, split, pairs = make_faces(rgb=False, n=20)
    split[3] = "holdout"
    with pytest.raises(ValueError, match="holdout"):
        write_data_report(tmp_path, data, split, {}, pairs, np.zeros(3))
