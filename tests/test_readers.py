"""Readers: every supported input gives the faces and labels it holds, and every bad row or file
is reported with its file, line and reason (or skipped and returned with --skip-bad)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import KAGGLE_HEADER, face_picture, kaggle_row, write_table
from faceattr.inputerror import InputError
from faceattr.readers import MAX_REPORTED, decode_image, parse_utk_name, read_any, read_image_folder, read_kaggle_csv
from faceattr.readers import read_utkface as _read_utkface

PIXELS = " ".join(["7"] * 2304)
GOOD = kaggle_row(25, 1, 0, "a.jpg.chip.jpg", PIXELS)


def read_utkface(path, **kw):
    return _read_utkface(path, workers=1, **kw)


def table_with(tmp_path, bad: dict[int, str], n: int = 10, name: str = "faces.csv", header: str = KAGGLE_HEADER):
    """A table of n good rows where data row k (file line k + 2) is replaced by bad[k]."""
    lines = [header] + [bad.get(k, GOOD) for k in range(n)]
    return write_table(tmp_path / name, lines)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".zip"])
def test_kaggle_reads_every_format(make_kaggle_csv, suffix):
    kf = make_kaggle_csv(suffix)
    data, problems = read_kaggle_csv(kf.path)
    assert problems == []
    assert data.images.shape == (300, 48, 48) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, kf.images)
    np.testing.assert_array_equal(data.age, kf.age)
    np.testing.assert_array_equal(data.gender, kf.gender)
    np.testing.assert_array_equal(data.ethnicity, kf.ethnicity)
    np.testing.assert_array_equal(data.names, kf.names)
    assert data.ids[0] == "row00000" and data.ids[299] == "row00299"
    assert data.source == str(kf.path)
    _, _, kind = read_any(kf.path)
    assert kind == "kaggle"


def test_kaggle_accepts_crlf_blank_lines_and_reordered_columns(tmp_path):
    row = "1,20,a.jpg," + PIXELS + ",0"  # gender, age, img_name, pixels, ethnicity
    path = tmp_path / "win.csv"
    path.write_bytes(("gender,age,img_name,pixels,ethnicity\r\n" + row + "\r\n\r\n" + row + "\r\n").encode())
    data, problems = read_kaggle_csv(path)
    assert problems == [] and len(data) == 2
    assert data.gender.tolist() == [1, 1] and data.age.tolist() == [20, 20] and data.ethnicity.tolist() == [0, 0]
    assert data.ids.tolist() == ["row00000", "row00001"]


BAD_ROWS = {
    "wrong pixel count": (kaggle_row(25, 1, 0, "x.jpg", " ".join(["7"] * 2303)), "pixels: 2303 values, expected 2304"),
    "too many pixels": (kaggle_row(25, 1, 0, "x.jpg", PIXELS + " 7"), "pixels: 2305 values, expected 2304"),
    "non-integer pixel": (kaggle_row(25, 1, 0, "x.jpg", "7 ab" + PIXELS[3:]), "pixels: non-integer value 'ab'"),
    "float pixel": (kaggle_row(25, 1, 0, "x.jpg", "7.5" + PIXELS[1:]), "pixels: non-integer value '7.5'"),
    "negative pixel": (kaggle_row(25, 1, 0, "x.jpg", "-1" + PIXELS[1:]), "pixels: non-integer value '-1'"),
    "pixel over 255": (
        kaggle_row(25, 1, 0, "x.jpg", PIXELS[:-1] + "256"),
        "pixels: value 256 out of range (expected 0..255)",
    ),
    "empty pixels": (kaggle_row(25, 1, 0, "x.jpg", ""), "pixels: empty"),
    "age zero": (kaggle_row(0, 1, 0, "x.jpg", PIXELS), "age 0 out of range (expected 1..116)"),
    "age 117": (kaggle_row(117, 1, 0, "x.jpg", PIXELS), "age 117 out of range (expected 1..116)"),
    "age text": (kaggle_row("old", 1, 0, "x.jpg", PIXELS), "age 'old' is not an integer (expected 1..116)"),
    "gender 2": (kaggle_row(25, 1, 2, "x.jpg", PIXELS), "gender 2 out of range (expected 0..1)"),
    "gender float": (kaggle_row(25, 1, "1.0", "x.jpg", PIXELS), "gender '1.0' is not an integer (expected 0..1)"),
    "ethnicity 5": (kaggle_row(25, 5, 0, "x.jpg", PIXELS), "ethnicity 5 out of range (expected 0..4)"),
    "ethnicity -1": (kaggle_row(25, -1, 0, "x.jpg", PIXELS), "ethnicity -1 out of range (expected 0..4)"),
    "ethnicity empty": (kaggle_row(25, "", 0, "x.jpg", PIXELS), "ethnicity '' is not an integer (expected 0..4)"),
    "extra field": (GOOD + ",extra", "6 fields, expected 5"),
    "missing field": ("25,1,0," + PIXELS, "4 fields, expected 5"),
}


@pytest.mark.parametrize("bad_row, reason", BAD_ROWS.values(), ids=BAD_ROWS.keys())
@pytest.mark.parametrize("suffix", [".csv", ".zip"])
def test_kaggle_bad_row_names_file_line_and_reason(tmp_path, bad_row, reason, suffix):
    path = table_with(tmp_path, {4: bad_row}, name="faces" + suffix)
    with pytest.raises(InputError) as info:
        read_kaggle_csv(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}:6: {reason}"
    assert lines[1].startswith("1 bad row(s) of 10;") and "--skip-bad" in lines[1]

    data, problems = read_kaggle_csv(path, skip_bad=True)
    assert len(data) == 9 and "row00004" not in data.ids and data.ids[4] == "row00005"
    assert [(p.file, p.line, p.reason) for p in problems] == [(str(path), 6, reason)]
    assert data.skipped == {"bad_rows": 1}


def test_kaggle_row_with_several_problems_lists_every_reason(tmp_path):
    path = table_with(tmp_path, {0: kaggle_row(0, 9, 0, "x.jpg", PIXELS)})
    with pytest.raises(InputError, match=r":2: age 0 out of range .*; ethnicity 9 out of range"):
        read_kaggle_csv(path)


def test_kaggle_reports_first_20_problems_in_line_order_and_the_total(tmp_path):
    # Pixel problems are found in a second pass; the report must still be in line order.
    bad = {k: BAD_ROWS["pixel over 255" if k % 2 else "age zero"][0] for k in range(5, 30)}
    path = table_with(tmp_path, bad, n=40)
    with pytest.raises(InputError) as info:
        read_kaggle_csv(path)
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_REPORTED + 1
    assert [line.split(": ")[0] for line in lines[:-1]] == [f"{path}:{k + 2}" for k in range(5, 25)]
    assert lines[-1].startswith("25 bad row(s) of 40 (and 5 more);")

    data, problems = read_kaggle_csv(path, skip_bad=True)
    assert len(data) == 15 and len(problems) == 25
    assert [p.line for p in problems] == [k + 2 for k in range(5, 30)]
    assert data.ids.tolist() == [f"row{k:05d}" for k in [*range(5), *range(30, 40)]]


def test_kaggle_skip_bad_keeps_good_rows_unchanged(make_kaggle_csv, tmp_path):
    kf = make_kaggle_csv(".csv")
    lines = kf.path.read_text().splitlines()
    lines[11] = BAD_ROWS["wrong pixel count"][0]  # data row 10
    lines[21] = BAD_ROWS["gender 2"][0]  # data row 20
    path = write_table(tmp_path / "mixed.csv.gz", lines)
    data, problems = read_kaggle_csv(path, skip_bad=True)
    keep = np.setdiff1d(np.arange(300), [10, 20])
    np.testing.assert_array_equal(data.images, kf.images[keep])
    np.testing.assert_array_equal(data.age, kf.age[keep])
    assert [p.line for p in problems] == [12, 22]


WHOLE_FILE = {
    "missing column": (
        lambda p: table_with(p, {}, header="age,ethnicity,img_name,pixels"),
        ":1: missing column(s) gender (expected age,ethnicity,gender,img_name,pixels",
    ),
    "empty file": (lambda p: write_table(p / "faces.csv", []), ": the file is empty"),
    "empty gz": (lambda p: write_table(p / "faces.csv.gz", []), ": the file is empty"),
    "header only": (
        lambda p: write_table(p / "faces.csv", [KAGGLE_HEADER]),
        ": the file has a header but no data rows",
    ),
    "binary file": (
        lambda p: _write_bytes(p / "faces.csv", np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()),
        ": not a text CSV file (could not decode as UTF-8)",
    ),
    "png named csv": (lambda p: _write_png(p / "faces.csv"), ": not a text CSV file"),
    "gz that is not gzip": (
        lambda p: _write_bytes(p / "faces.csv.gz", b"age,gender\n1,2\n"),
        ": corrupt compressed file",
    ),
    "truncated gz": (lambda p: _truncated_gz(p), ": corrupt compressed file"),
    "zip without csv": (
        lambda p: _zip(p, {"readme.txt": "hello"}),
        ": expected exactly one .csv inside the .zip, found 0",
    ),
    "zip with two csv": (
        lambda p: _zip(p, {"a.csv": KAGGLE_HEADER, "b.csv": KAGGLE_HEADER}),
        ": expected exactly one .csv inside the .zip, found 2",
    ),
    "not a zip": (lambda p: _write_bytes(p / "faces.zip", b"plain text"), ": not a valid .zip file"),
    "zip with only macOS metadata": (
        lambda p: _zip(p, {"__MACOSX/age_gender.csv": KAGGLE_HEADER, "._age_gender.csv": KAGGLE_HEADER}),
        ": expected exactly one .csv inside the .zip, found 0",
    ),
    "zip with a bad CRC": (lambda p: _bad_crc_zip(p), ": corrupt compressed file (Bad CRC-32"),
    "nonexistent": (lambda p: p / "missing.csv", ": no such file"),
}


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _write_png(path):
    face_picture(np.random.default_rng(0), 0, 0).save(path, format="PNG")
    return path


def _truncated_gz(tmp_path):
    full = write_table(tmp_path / "full.csv.gz", [KAGGLE_HEADER] + [GOOD] * 20)
    return _write_bytes(tmp_path / "faces.csv.gz", full.read_bytes()[:-200])


def _bad_crc_zip(tmp_path):
    """A stored (uncompressed) .zip whose CSV has one pixel changed after the CRC was written."""
    path = _zip(tmp_path, {"faces.csv": "\n".join([KAGGLE_HEADER] + [GOOD] * 3) + "\n"})
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"7 7 7")] = ord("8")
    return _write_bytes(path, bytes(raw))


def _zip(tmp_path, members: dict[str, str]):
    path = tmp_path / "faces.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


@pytest.mark.parametrize("make, message", WHOLE_FILE.values(), ids=WHOLE_FILE.keys())
def test_kaggle_bad_file_names_file_and_reason(tmp_path, make, message):
    path = make(tmp_path)
    for skip_bad in (False, True):
        with pytest.raises(InputError) as info:
            read_any(path, skip_bad=skip_bad)
        assert str(info.value).startswith(str(path) + message)
        assert "\n" not in str(info.value)


def test_zip_ignores_macos_metadata(tmp_path):
    rows = "\n".join([KAGGLE_HEADER, GOOD, GOOD]) + "\n"
    path = _zip(tmp_path, {"__MACOSX/._faces.csv": "\x00\x05", "._faces.csv": "\x00\x05", "faces.csv": rows})
    data, problems = read_any(path)[:2]
    assert len(data) == 2 and problems == []


def test_kaggle_rejects_size_and_rgb_options(make_kaggle_csv):
    kf = make_kaggle_csv(".csv")
    for options in ({"size": 64}, {"gray": False}):
        with pytest.raises(InputError, match="48x48 grayscale"):
            read_any(kf.path, **options)


def test_read_any_names_unknown_inputs(tmp_path):
    path = tmp_path / "faces.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=rf"^{path}: unknown input"):
        read_any(path)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'gone.tar.gz'}: no such file or folder"):
        read_any(tmp_path / "gone.tar.gz")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("26_1_3_20170119193419876.jpg.chip.jpg", (26, 1, 3)),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", (24, 0, 1)),
        ("55_0_0_20170116232725357jpg.chip.jpg", (55, 0, 0)),
        ("part1/116_1_4_20170112213001988.jpg", (116, 1, 4)),
        ("39_1_20170116174525125.jpg.chip.jpg", "name lacks AGE_GENDER_RACE_ labels"),
        ("0_1_2_20170116174525125.jpg", "age 0 out of range (expected 1..116)"),
        ("30_2_2_20170116174525125.jpg", "gender 2 out of range (expected 0..1)"),
        ("30_1_5_20170116174525125.jpg", "ethnicity 5 out of range (expected 0..4)"),
    ],
)
def test_parse_utk_name(name, expected):
    assert parse_utk_name(name) == expected


@pytest.mark.parametrize("source", ["folder", "tarball"])
@pytest.mark.parametrize("size, gray", [(48, True), (64, False)], ids=["48gray", "64rgb"])
def test_utkface_reads_folder_and_tarball(utk_folder, source, size, gray):
    path = getattr(utk_folder, source)
    data, problems = read_utkface(path, size=size, gray=gray, skip_bad=True)
    n = len(utk_folder.labels)
    assert n == 18
    assert data.images.shape == ((n, size, size) if gray else (n, size, size, 3))
    assert data.images.dtype == np.uint8
    names = sorted(utk_folder.labels)
    # ids are paths from the folder or archive root: the tarball holds the files under UTKFace/.
    root = "UTKFace/" if source == "tarball" else ""
    assert data.ids.tolist() == [root + name for name in names] and data.names.tolist() == names
    labels = np.array([utk_folder.labels[k] for k in names])
    assert data.age.tolist() == labels[:, 0].tolist()
    assert data.gender.tolist() == labels[:, 1].tolist()
    assert data.ethnicity.tolist() == labels[:, 2].tolist()
    assert data.skipped == {"unlabelled_names": 1, "undecodable": 1}

    assert len(problems) == 2
    by_reason = {p.reason.split(" (")[0]: p for p in problems}
    assert by_reason["name lacks AGE_GENDER_RACE_ labels"].file.endswith(utk_folder.unlabelled[0])
    assert by_reason["cannot decode image"].file.endswith(utk_folder.corrupt[0])
    assert all(p.file.startswith(str(path)) and p.line == 0 for p in problems)

    k = names.index("24_0_1_20170116220224657 .jpg.chip.jpg")
    expected = decode_image((utk_folder.folder / names[k]).read_bytes(), size, gray)
    np.testing.assert_array_equal(data.images[k], expected)
    _, _, kind = read_any(path, size=size, gray=gray, skip_bad=True)
    assert kind == "utkface"


def test_utkface_undecodable_image_stops_unless_skip_bad(utk_folder):
    for path in (utk_folder.folder, utk_folder.tarball):
        for read in (read_utkface, read_any):
            with pytest.raises(InputError) as info:
                read(path)
            lines = str(info.value).splitlines()
            where, reason = lines[0].split(": ", 1)
            assert where.startswith(f"{path}/") and where.endswith(utk_folder.corrupt[0])
            assert reason.startswith("cannot decode image") and utk_folder.unlabelled[0] not in str(info.value)
            assert lines[1].startswith("1 bad row(s) of 20;") and "--skip-bad" in lines[1]


def test_utkface_folder_and_tarball_agree_and_pool_matches_serial(utk_folder):
    folder, _ = read_utkface(utk_folder.folder, skip_bad=True)
    tarball, _ = read_utkface(utk_folder.tarball, skip_bad=True)
    pooled, _ = _read_utkface(utk_folder.folder, workers=2, chunk=5, skip_bad=True)
    for other in (tarball, pooled):
        np.testing.assert_array_equal(other.images, folder.images)
        np.testing.assert_array_equal(other.names, folder.names)
        np.testing.assert_array_equal(other.age, folder.age)
    np.testing.assert_array_equal(pooled.ids, folder.ids)
    assert tarball.ids.tolist() == ["UTKFace/" + i for i in folder.ids.tolist()]


def test_utkface_same_name_in_two_subfolders_keeps_both(tmp_path):
    rng = np.random.default_rng(0)
    for sub, gender in (("part2", 1), ("part1", 0)):
        (tmp_path / sub).mkdir()
        face_picture(rng, gender, 2).save(tmp_path / sub / "30_0_2_20170116000000000.jpg.chip.jpg", format="JPEG")
    data, problems = read_utkface(tmp_path)
    assert problems == [] and len(data) == 2
    assert data.ids.tolist() == [
        "part1/30_0_2_20170116000000000.jpg.chip.jpg",
        "part2/30_0_2_20170116000000000.jpg.chip.jpg",
    ]
    assert data.names.tolist() == ["30_0_2_20170116000000000.jpg.chip.jpg"] * 2
    assert not np.array_equal(data.images[0], data.images[1])


def test_decode_image_is_gray_then_box_resize():
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    buf = Image.fromarray(image)
    raw = io.BytesIO()
    buf.save(raw, format="PNG")
    gray = decode_image(raw.getvalue(), 48, True)
    expected = np.asarray(buf.convert("L").resize((48, 48), Image.BOX))
    np.testing.assert_array_equal(gray, expected)
    assert decode_image(raw.getvalue(), 96, False).tolist() == image.tolist()


def test_utkface_errors(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none'}: no such file or folder"):
        read_utkface(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=rf"^{empty}: no image files found"):
        read_utkface(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "20_0_0_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=rf"^{broken}/20_0_0_1.jpg: cannot decode image"):
        read_utkface(broken)
    with pytest.raises(InputError, match=rf"^{broken}: none of the 1 image files could be used"):
        read_utkface(broken, skip_bad=True)
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not a tarball")
    with pytest.raises(InputError, match=rf"^{fake}: not a readable folder or .tar/.tar.gz archive"):
        read_utkface(fake)


@pytest.fixture
def chips(tmp_path):
    """Four face chips of different sizes and the labels CSV rows for them."""
    folder = tmp_path / "chips"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k, name in enumerate(["a.png", "b.jpg", "c.png", "sub/d.png"]):
        face_picture(rng, k % 2, k, size=40 + 10 * k).save(folder / name)
    return folder


def test_image_folder_reads_labels_and_empty_cells_as_unknown(chips, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender,ethnicity\na.png,25,0,1\nb.jpg,,1,\nc.png,70,,4\nsub/d.png, 3 ,1,0\n")
    data, problems = read_image_folder(chips, labels, size=32)
    assert problems == []
    assert data.images.shape == (4, 32, 32)
    assert data.ids.tolist() == ["a.png", "b.jpg", "c.png", "sub/d.png"]
    assert data.names.tolist() == ["a.png", "b.jpg", "c.png", "d.png"]
    assert data.age.tolist() == [25, -1, 70, 3]
    assert data.gender.tolist() == [0, 1, -1, 1]
    assert data.ethnicity.tolist() == [1, -1, 4, 0]
    np.testing.assert_array_equal(data.images[1], decode_image((chips / "b.jpg").read_bytes(), 32, True))

    rgb, _, kind = read_any(chips, size=48, gray=False, labels=labels)
    assert kind == "folder" and rgb.images.shape == (4, 48, 48, 3)


def test_image_folder_bad_rows(chips, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender,ethnicity\na.png,25,0,1\nmissing.png,30,1,1\nb.jpg,200,0,1\nc.png,40,x,2\n")
    (chips / "bad.png").write_bytes(b"garbage")
    with labels.open("a") as f:
        f.write("bad.png,20,0,0\n")
    with pytest.raises(InputError) as info:
        read_image_folder(chips, labels)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{labels}:3: file 'missing.png' not found in {chips}"
    assert lines[1] == f"{labels}:4: age 200 out of range (expected 1..116)"
    assert lines[2] == f"{labels}:5: gender 'x' is not an integer (expected 0..1)"
    assert lines[3].startswith(f"{labels}:6: file 'bad.png': cannot decode image")
    assert lines[4].startswith("4 bad row(s) of 5;")

    data, problems = read_image_folder(chips, labels, skip_bad=True)
    assert data.ids.tolist() == ["a.png"] and [p.line for p in problems] == [3, 4, 5, 6]


def test_image_folder_errors(chips, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,age\na.png,3\n")
    with pytest.raises(InputError, match=rf"^{labels}:1: missing column file"):
        read_image_folder(chips, labels)
    labels.write_text("")
    with pytest.raises(InputError, match=rf"^{labels}: the file is empty"):
        read_image_folder(chips, labels)
    labels.write_text("file,age,gender,ethnicity\n")
    with pytest.raises(InputError, match=rf"^{labels}: the file has a header but no data rows"):
        read_image_folder(chips, labels)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'nope.csv'}: no such file"):
        read_image_folder(chips, tmp_path / "nope.csv")
    with pytest.raises(InputError, match=rf"^{labels}: not a folder"):
        read_image_folder(labels, labels)


def _one_row(age: int = 30, name: bytes = b"x.jpg") -> bytes:
    return f"{age},0,1,".encode() + name + b"," + " ".join(["7"] * 2304).encode() + b"\n"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfage,ethnicity,gender,img_name,pixels\n" + _one_row())
    data, problems = read_kaggle_csv(path)
    assert len(data) == 1 and problems == []


def test_one_undecodable_byte_is_a_row_problem_not_a_file_failure(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"age,ethnicity,gender,img_name,pixels\n" + _one_row() + _one_row(name=b"caf\xe9.jpg") + _one_row()
    )
    with pytest.raises(InputError, match=r"latin1.csv:3: img_name: not valid UTF-8"):
        read_kaggle_csv(path)
    data, problems = read_kaggle_csv(path, skip_bad=True)
    assert len(data) == 2 and [p.line for p in problems] == [3]
