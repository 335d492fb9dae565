"""``faceattr prepare`` end to end through ``cli.main``: the folder it writes, the cache round
trip, reproducibility, bad input (exit 2, one message, nothing written), --skip-bad,
--split-file, UTKFace input and ``python -m faceattr --version``."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import KAGGLE_HEADER, face_picture, kaggle_row, write_table
from faceattr import __version__
from faceattr.cache import load_prepared
from faceattr.cli import main
from faceattr.datareport import PLOT_FILES
from faceattr.dedupe import pixel_sha1
from faceattr.inputerror import InputError
from faceattr.prepare import prepare
from faceattr.split import SPLITS

OUTPUTS = {"data.npz", "manifest.json", "split.csv", "duplicates.csv", "data_report.md", "data_report.json", "plots"}


def folder_state(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory, synthetic_faces) -> Path:
    sf = synthetic_faces
    lines = [KAGGLE_HEADER] + [
        kaggle_row(a, e, g, n, img) for a, e, g, n, img in zip(sf.age, sf.ethnicity, sf.gender, sf.names, sf.images)
    ]
    return write_table(tmp_path_factory.mktemp("input") / "age_gender.csv.gz", lines)


@pytest.fixture(scope="module")
def bad_csv(kaggle_csv) -> Path:
    """The same table with data rows 5 and 40 broken (file lines 7 and 42)."""
    with gzip.open(kaggle_csv, "rt") as f:
        lines = f.read().splitlines()
    lines[6] = lines[6].rsplit(" ", 1)[0]  # 2303 pixels
    lines[41] = "0," + lines[41].split(",", 1)[1]  # age 0
    return write_table(kaggle_csv.with_name("bad.csv"), lines)


@pytest.fixture(scope="module")
def first_run(kaggle_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "prepared"
    summary = out.parent / "summary.json"
    assert main(["prepare", str(kaggle_csv), "--out", str(out), "--summary", str(summary)]) == 0
    return out


def test_prepare_writes_the_whole_folder(first_run, synthetic_faces):
    out = first_run
    assert {p.name for p in out.iterdir()} == OUTPUTS
    assert leftovers(out) == []
    for name in PLOT_FILES.values():
        assert (out / "plots" / name).stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["faces_read"] == 300 and manifest["image_shape"] == [48, 48]
    assert manifest["input"]["kind"] == "kaggle" and manifest["skipped"]["total"] == 0
    assert manifest["duplicates"]["exact_pairs"] == 4 and manifest["duplicates"]["near_pairs"] == 8
    assert sum(manifest["split"].values()) == 300
    report = json.loads((out / "data_report.json").read_text())
    assert report["n"] == 300
    assert "White" in (out / "data_report.md").read_text()
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["command"].startswith("faceattr ") and summary["split_hash"] == manifest["split_hash"]

    rows = read_csv(out / "duplicates.csv")
    planted = np.concatenate([synthetic_faces.exact_pairs, synthetic_faces.near_pairs])
    assert {(r["id_a"], r["id_b"]) for r in rows} == {(f"row{a:05d}", f"row{b:05d}") for a, b in planted}


def test_load_prepared_round_trip(first_run, synthetic_faces):
    prepared = load_prepared(first_run)
    data = prepared.data
    np.testing.assert_array_equal(data.images, synthetic_faces.images)
    np.testing.assert_array_equal(data.age, synthetic_faces.age)
    np.testing.assert_array_equal(data.gender, synthetic_faces.gender)
    np.testing.assert_array_equal(data.ethnicity, synthetic_faces.ethnicity)
    np.testing.assert_array_equal(data.names, synthetic_faces.names)
    assert data.ids.tolist() == [f"row{k:05d}" for k in range(300)]
    np.testing.assert_array_equal(prepared.sha, pixel_sha1(synthetic_faces.images))
    rows = read_csv(first_run / "split.csv")
    assert prepared.split.tolist() == [r["split"] for r in rows]
    assert prepared.group.tolist() == [int(r["group"]) for r in rows]
    assert sum(len(prepared.part(s)) for s in SPLITS) + (prepared.split == "excluded").sum() == 300
    assert prepared.manifest == json.loads((first_run / "manifest.json").read_text())


def test_not_a_prepared_folder(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path}: not a prepared data folder"):
        load_prepared(tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _truncate(d / "data.npz"), r"data.npz: truncated or corrupt \("),
        (lambda d: _drop_array(d / "data.npz", "sha"), r"data.npz: missing array\(s\) sha; run faceattr prepare again"),
        (lambda d: _truncate(d / "manifest.json"), r"manifest.json: not valid JSON \("),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), r"manifest.json: expected a JSON object, got list"),
    ],
    ids=["truncated npz", "missing array", "truncated manifest", "manifest not an object"],
)
def test_damaged_prepared_folder_is_one_line_error(first_run, tmp_path, damage, message):
    folder = tmp_path / "damaged"
    shutil.copytree(first_run, folder)
    damage(folder)
    with pytest.raises(InputError, match=rf"^{folder}/{message}") as info:
        load_prepared(folder)
    assert "\n" not in str(info.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_array(path: Path, name: str) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != name}
    np.savez_compressed(path, **arrays)


def test_prepare_twice_gives_identical_files(first_run, kaggle_csv, tmp_path):
    out = tmp_path / "again"
    assert main(["prepare", str(kaggle_csv), "--out", str(out)]) == 0
    for name in ("split.csv", "duplicates.csv"):
        assert (out / name).read_bytes() == (first_run / name).read_bytes()
    # Preparing into an existing folder replaces it whole.
    (out / "stale.txt").write_text("from an earlier run")
    assert main(["prepare", str(kaggle_csv), "--out", str(out), "--seed", "1"]) == 0
    assert {p.name for p in out.iterdir()} == OUTPUTS and leftovers(out) == []
    assert (out / "split.csv").read_bytes() != (first_run / "split.csv").read_bytes()


def test_bad_input_exits_2_and_writes_nothing(bad_csv, first_run, tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["prepare", str(bad_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == f"faceattr prepare: error: {bad_csv}:7: pixels: 2303 values, expected 2304"
    assert lines[1] == f"{bad_csv}:42: age 0 out of range (expected 1..116)"
    assert lines[2].startswith("2 bad row(s) of 300;") and len(lines) == 3
    assert "Traceback" not in err
    assert not out.exists() and leftovers(out) == []

    earlier = tmp_path / "earlier"
    shutil.copytree(first_run, earlier)
    before = folder_state(earlier)
    assert main(["prepare", str(bad_csv), "--out", str(earlier)]) == 2
    assert folder_state(earlier) == before and leftovers(earlier) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "{missing}: no such file"),
        (["{csv}", "--size", "64"], "{csv}: the Kaggle table holds 48x48 grayscale faces"),
        (["{csv}", "--fractions", "0.5,0.5,0.5"], "split fractions (0.5, 0.5, 0.5): expected three non-negative"),
        (["{csv}", "--split-file", "{missing}"], "{missing}: no such split file"),
    ],
)
def test_bad_options_exit_2_with_one_message(kaggle_csv, tmp_path, capsys, args, message):
    names = {"csv": kaggle_csv, "missing": tmp_path / "missing.csv"}
    out = tmp_path / "out"
    assert main(["prepare", *(a.format(**names) for a in args), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"faceattr prepare: error: {message.format(**names)}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_argparse_rejects_malformed_fractions(kaggle_csv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", str(kaggle_csv), "--fractions", "0.7,0.3"])
    assert info.value.code == 2
    assert "expected three comma-separated numbers" in capsys.readouterr().err


def test_skip_bad_writes_rejected_csv(bad_csv, tmp_path):
    out = tmp_path / "skipped"
    assert main(["prepare", str(bad_csv), "--out", str(out), "--skip-bad"]) == 0
    rows = read_csv(out / "rejected.csv")
    assert [(r["file"], r["line"]) for r in rows] == [(str(bad_csv), "7"), (str(bad_csv), "42")]
    assert rows[0]["reason"] == "pixels: 2303 values, expected 2304"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["faces_read"] == 298 and manifest["skipped"]["total"] == 2
    ids = load_prepared(out).data.ids
    assert "row00005" not in ids and "row00040" not in ids and len(ids) == 298


def test_split_file_pins_the_split(first_run, kaggle_csv, bad_csv, tmp_path, capsys):
    out = tmp_path / "pinned"
    split_file = first_run / "split.csv"
    assert main(["prepare", str(kaggle_csv), "--out", str(out), "--seed", "9", "--split-file", str(split_file)]) == 0
    assert (out / "split.csv").read_bytes() == split_file.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["split_file"] == str(split_file)
    assert manifest["split_hash"] == json.loads((first_run / "manifest.json").read_text())["split_hash"]

    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["prepare", str(bad_csv), "--out", str(other), "--skip-bad", "--split-file", str(split_file)]) == 2
    assert f"{split_file}: the split file lists 300 faces, the input has 298" in capsys.readouterr().err
    assert not other.exists()


def test_prepare_utkface_tarball_rgb(utk_folder, tmp_path):
    out = tmp_path / "utk"
    # 18 faces: the default 0.15 test share would round to an empty test split, an error now.
    args = ["prepare", str(utk_folder.tarball), "--out", str(out), "--size", "64", "--rgb", "--skip-bad"]
    assert main([*args, "--fractions", "0.5,0.25,0.25"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "utkface" and manifest["image_shape"] == [64, 64, 3]
    assert manifest["skipped"] == {"total": 2, "unlabelled_names": 1, "undecodable": 1}
    assert len(read_csv(out / "rejected.csv")) == 2
    assert load_prepared(out).data.images.shape == (18, 64, 64, 3)


def test_python_m_faceattr_version():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "faceattr", "--version"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0 and result.stdout.strip() == f"faceattr {__version__}"


def test_out_dot_refuses_to_replace_a_foreign_folder(kaggle_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["prepare", str(kaggle_csv), "--out", "."]) == 2
    assert "is the current folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_out_into_an_empty_folder_works(kaggle_csv, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    assert main(["prepare", str(kaggle_csv), "--out", str(work)]) == 0
    assert (work / "manifest.json").is_file()


def test_folder_with_unknown_labels_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "chips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,age,gender,ethnicity"]
    for k in range(8):
        face_picture(rng, k % 2, k % 5).save(folder / f"{k}.png")
        rows.append(f"{k}.png,{20 + k},{k % 2}," + ("" if k == 2 else str(k % 5)))
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    assert main(["prepare", str(folder), "--labels", str(labels), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "1 face(s) lack a label (first: 2.png)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def quiet(*_args) -> None:
    pass


def test_every_row_skipped_is_no_usable_faces(tmp_path):
    path = write_table(tmp_path / "bad.csv", [KAGGLE_HEADER, kaggle_row(0, 1, 0, "a.jpg", "1 2 3")])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"^{path}: no usable faces \(1 rejected\)"):
        prepare(path, out, skip_bad=True, log=quiet)
    assert not out.exists() and leftovers(out) == []


@pytest.mark.parametrize("fractions, empty", [((0.85, 0.0, 0.15), "val split is"), ((0.9, 0.1, 0.0), "test split is")])
def test_empty_val_or_test_split_is_an_error(kaggle_csv, tmp_path, fractions, empty):
    out = tmp_path / "out"
    shown = ",".join(map(str, fractions))
    with pytest.raises(InputError, match=rf"^--fractions {shown}: the {empty} empty \(300 faces\)"):
        prepare(kaggle_csv, out, fractions=fractions, log=quiet)
    assert not out.exists() and leftovers(out) == []


def chips_with_labels(tmp_path: Path, n: int = 30, repeat: int | None = None) -> tuple[Path, Path]:
    """n face chips and their labels CSV; ``repeat`` lists chip 0 a second time at that row."""
    folder = tmp_path / "chips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,age,gender,ethnicity"]
    for k in range(n):
        face_picture(rng, k % 2, k % 2).save(folder / f"{k}.png")
        rows.append(f"{k}.png,25,{k % 2},{k % 2}")  # two strata, so val and test get faces
    if repeat is not None:
        rows.insert(repeat + 1, rows[1])
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels


def test_labels_csv_is_part_of_the_input_fingerprint(tmp_path):
    folder, labels = chips_with_labels(tmp_path)
    summary = prepare(folder, tmp_path / "out", labels=labels, log=quiet)
    fingerprint = summary["input"]
    assert fingerprint["kind"] == "folder" and fingerprint["labels"] == str(labels)
    assert fingerprint["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["input"] == fingerprint

    labels.write_text(labels.read_text().replace("\n0.png,25,", "\n0.png,26,"))
    again = prepare(folder, tmp_path / "out", labels=labels, log=quiet)["input"]
    assert again["sha256"] == fingerprint["sha256"] and again["labels_sha256"] != fingerprint["labels_sha256"]


def test_duplicate_ids_are_an_error(tmp_path):
    folder, labels = chips_with_labels(tmp_path, repeat=5)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"^{labels}: id '0.png' appears more than once"):
        prepare(folder, out, labels=labels, log=quiet)
    assert not out.exists()
