"""Readers that turn the supported inputs into one FaceData: the Kaggle CSV (.csv/.csv.gz/.zip),
the UTKFace originals (folder or .tar.gz, labels from file names) and a generic folder of images
with a labels CSV. Every bad row or file is reported by file, line and reason; nothing is
dropped silently."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from faceattr.atomic import atomic_path
from faceattr.dataset import FaceData
from faceattr.inputerror import InputError
from faceattr.labels import AGE_MAX

KAGGLE_COLUMNS = ("age", "ethnicity", "gender", "img_name", "pixels")
KAGGLE_SIDE = 48
MAX_REPORTED = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# UTKFace names are AGE_GENDER_RACE_DATETIME.jpg.chip.jpg; the real download has a name with a
# space before ".jpg" and one without the dot, so only the three leading fields are anchored.
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_\d+")
PIXELS_OK = re.compile(r"[0-9]+(?:\s+[0-9]+)*")


@dataclass(frozen=True)
class Problem:
    """One rejected row or file: where it is and why it was rejected."""

    file: str
    line: int  # 1-based line in a CSV; 0 for a problem with a whole file (an archive member)
    reason: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def check_problems(problems: list[Problem], total_rows: int, skip_bad: bool) -> None:
    """Raise InputError listing the first problems unless the caller chose to skip bad rows."""
    if not problems or skip_bad:
        return
    shown = [p.where() + f": {p.reason}" for p in problems[:MAX_REPORTED]]
    more = len(problems) - len(shown)
    tail = f" (and {more} more)" if more else ""
    raise InputError(
        "\n".join(shown) + f"\n{len(problems)} bad row(s) of {total_rows}{tail}; fix them or pass --skip-bad to "
        "write them to rejected.csv and go on"
    )


def write_rejected(problems: list[Problem], path: Path) -> Path:
    """Write rejected rows (file, line, reason) to a CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "line", "reason"])
        for p in problems:
            w.writerow([p.file, p.line, p.reason])
    return path


def _parse_label(value: str, name: str, low: int, high: int) -> tuple[int | None, str | None]:
    value = value.strip()
    if not re.fullmatch(r"-?[0-9]+", value):
        return None, f"{name} {value!r} is not an integer (expected {low}..{high})"
    v = int(value)
    if not low <= v <= high:
        return None, f"{name} {v} out of range (expected {low}..{high})"
    return v, None


@contextlib.contextmanager
def _open_csv_text(path: Path) -> Iterator[Iterator[str]]:
    """Open a .csv, .csv.gz or a .zip holding exactly one .csv, as text.

    In a .zip, macOS metadata (``__MACOSX/`` and ``._name`` files) is ignored.

    utf-8-sig drops the byte-order mark Excel writes; undecodable bytes become surrogates so
    the row holding them can be reported by line instead of failing the whole file.
    """
    name = path.name.lower()
    text = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}
    with contextlib.ExitStack() as stack:
        if name.endswith(".zip"):
            try:
                zf = stack.enter_context(zipfile.ZipFile(path))
            except zipfile.BadZipFile:
                raise InputError(f"{path}: not a valid .zip file") from None
            members = [m for m in zf.namelist() if m.lower().endswith(".csv") and not _macos_metadata(m)]
            if len(members) != 1:
                raise InputError(f"{path}: expected exactly one .csv inside the .zip, found {len(members)}")
            raw = stack.enter_context(zf.open(members[0]))
        elif name.endswith(".gz"):
            raw = stack.enter_context(gzip.open(path, "rb"))
        else:
            raw = stack.enter_context(open(path, "rb"))
        yield bounded_lines(stack.enter_context(io.TextIOWrapper(raw, **text)), path)


MAX_LINE_CHARS = 1_000_000  # a 48x48 Kaggle row is about 10,000 characters


def bounded_lines(f: io.TextIOBase, path: Path, limit: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a text file, refusing one longer than ``limit`` characters as soon as its
    first ``limit`` are read: a file with no line breaks (a binary blob, a truncated dump) ends
    with one line of error instead of being read whole into memory first."""
    for number, line in enumerate(iter(lambda: f.readline(limit + 1), ""), 1):
        if len(line) > limit:
            raise InputError(
                f"{path}:{number}: a line longer than {limit:,} characters; expected a CSV with one face per line"
            )
        yield line


def _macos_metadata(member: str) -> bool:
    """Finder's zip adds __MACOSX/ folders and ._name resource forks beside the real files."""
    return member.startswith("__MACOSX/") or member.rsplit("/", 1)[-1].startswith("._")


def _undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\x00" in text


def read_kaggle_csv(path: str | Path, skip_bad: bool = False) -> tuple[FaceData, list[Problem]]:
    """Read the Kaggle ``age_gender.csv`` table (48x48 grayscale pixels as a string).

    Returns the faces of every valid row and the list of problems. Without ``skip_bad`` any
    problem raises InputError naming file, line and reason for the first 20 problems.
    ids are ``row{N:05d}`` with N the 0-based data row, stable for the same file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    label = str(path)
    problems: list[Problem] = []
    rows: list[tuple[int, int, int, int, int, str, str]] = []
    total = 0
    csv.field_size_limit(1 << 24)
    try:
        with _open_csv_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{label}: the file is empty (expected a header {','.join(KAGGLE_COLUMNS)})")
            if _undecodable(",".join(header)):
                raise InputError(f"{label}: not a text CSV file (could not decode as UTF-8)")
            header = [h.strip() for h in header]
            missing = [c for c in KAGGLE_COLUMNS if c not in header]
            if missing:
                raise InputError(
                    f"{label}:1: missing column(s) {', '.join(missing)} "
                    f"(expected {','.join(KAGGLE_COLUMNS)}, found {','.join(header)[:200]})"
                )
            col = {c: header.index(c) for c in KAGGLE_COLUMNS}
            width = len(header)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                total += 1
                index = total - 1
                if len(row) != width:
                    problems.append(Problem(label, line, f"{len(row)} fields, expected {width}"))
                    continue
                if _undecodable(row[col["img_name"]]):
                    problems.append(Problem(label, line, "img_name: not valid UTF-8 text"))
                    continue
                reasons = []
                age, r = _parse_label(row[col["age"]], "age", 1, AGE_MAX)
                reasons.append(r)
                gender, r = _parse_label(row[col["gender"]], "gender", 0, 1)
                reasons.append(r)
                eth, r = _parse_label(row[col["ethnicity"]], "ethnicity", 0, 4)
                reasons.append(r)
                pixels = row[col["pixels"]].strip()
                if not PIXELS_OK.fullmatch(pixels):
                    bad = next((t for t in pixels.split() if not t.isdigit()), "")
                    reasons.append(f"pixels: non-integer value {bad[:20]!r}" if bad else "pixels: empty")
                reasons = [r for r in reasons if r]
                if reasons:
                    problems.append(Problem(label, line, "; ".join(reasons)))
                    continue
                rows.append((line, index, age, gender, eth, row[col["img_name"]], pixels))
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a text CSV file (could not decode as UTF-8)") from None
    except (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise InputError(f"{label}: corrupt compressed file ({e})") from None
    except csv.Error as e:
        raise InputError(f"{label}: not a valid CSV file ({e})") from None
    if total == 0:
        raise InputError(f"{label}: the file has a header but no data rows")

    expected = KAGGLE_SIDE * KAGGLE_SIDE
    images = np.zeros((len(rows), KAGGLE_SIDE, KAGGLE_SIDE), np.uint8)
    keep = np.ones(len(rows), bool)
    for k, (line, *_labels, pixels) in enumerate(rows):
        # np.fromstring in text mode parses a whole row in C; the regex above guaranteed digits
        # separated by blanks, so the value count is exact.
        values = np.fromstring(pixels, dtype=np.float64, sep=" ")
        if len(values) != expected:
            problems.append(Problem(label, line, f"pixels: {len(values)} values, expected {expected}"))
        elif values.max() > 255:
            problems.append(Problem(label, line, f"pixels: value {values.max():.0f} out of range (expected 0..255)"))
        else:
            images[k] = values.reshape(KAGGLE_SIDE, KAGGLE_SIDE)
            continue
        keep[k] = False
    problems.sort(key=lambda p: p.line)
    check_problems(problems, total, skip_bad)
    rows = [r for r, k in zip(rows, keep) if k]
    images = images[keep]
    data = FaceData(
        images=images,
        age=np.array([r[2] for r in rows], np.int16),
        gender=np.array([r[3] for r in rows], np.int8),
        ethnicity=np.array([r[4] for r in rows], np.int8),
        ids=np.array([f"row{r[1]:05d}" for r in rows]),
        names=np.array([r[5] for r in rows]),
        source=label,
        skipped={"bad_rows": len(problems)},
    )
    return data, problems


def parse_utk_name(name: str) -> tuple[int, int, int] | str:
    """Labels (age, gender, ethnicity) from a UTKFace file name, or the reason it has none."""
    base = os.path.basename(name)
    m = UTK_NAME.match(base)
    if not m:
        return "name lacks AGE_GENDER_RACE_ labels"
    age, gender, eth = (int(g) for g in m.groups())
    if not 1 <= age <= AGE_MAX:
        return f"age {age} out of range (expected 1..{AGE_MAX})"
    if gender not in (0, 1):
        return f"gender {gender} out of range (expected 0..1)"
    if not 0 <= eth <= 4:
        return f"ethnicity {eth} out of range (expected 0..4)"
    return age, gender, eth


def decode_image(data: bytes, size: int, gray: bool) -> np.ndarray:
    """Decode image bytes, convert to gray or RGB, then area-resize to size x size.

    Grayscale first, then a box (area) resize: the recipe the Kaggle table was built with.
    """
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L" if gray else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BOX)
        return np.asarray(im, dtype=np.uint8)


def _decode_many(job: tuple[list[tuple[str, bytes]], int, bool]) -> list[tuple[str, np.ndarray | str]]:
    items, size, gray = job
    out: list[tuple[str, np.ndarray | str]] = []
    for name, data in items:
        try:
            out.append((name, decode_image(data, size, gray)))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            out.append((name, f"cannot decode image ({type(e).__name__}: {str(e)[:80]})"))
    return out


def _iter_utk_files(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
                yield p.relative_to(path).as_posix(), p.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name.removeprefix("./"), f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InputError(f"{path}: not a readable folder or .tar/.tar.gz archive ({e})") from None


def read_utkface(
    path: str | Path, size: int = 48, gray: bool = True, workers: int = 2, chunk: int = 256, skip_bad: bool = False
) -> tuple[FaceData, list[Problem]]:
    """Read UTKFace originals from a folder or a .tar(.gz), labels parsed from file names.

    Files whose names lack the three labels are always skipped and returned as problems (with
    their count). Images that cannot be decoded raise InputError listing them, unless
    ``skip_bad``, which skips and returns them too. ids are the paths relative to the folder or
    archive root (``UTKFace/1_0_0_x.jpg.chip.jpg``), so equal names in two subfolders stay
    apart; faces are sorted by that path so ids and order are stable; names are base names.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    label = str(path)
    unlabelled: list[Problem] = []
    labelled: list[tuple[str, bytes, tuple[int, int, int]]] = []
    seen = 0
    for name, data in _iter_utk_files(path):
        seen += 1
        parsed = parse_utk_name(name)
        if isinstance(parsed, str):
            unlabelled.append(Problem(f"{label}/{name}", 0, parsed))
            continue
        labelled.append((name, data, parsed))
    if seen == 0:
        raise InputError(f"{label}: no image files found (expected {', '.join(IMAGE_SUFFIXES)})")
    labelled.sort(key=lambda t: t[0])
    labels = {t[0]: t[2] for t in labelled}
    jobs = [([(n, d) for n, d, _ in labelled[i : i + chunk]], size, gray) for i in range(0, len(labelled), chunk)]
    decoded: list[tuple[str, np.ndarray | str]] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_decode_many, jobs):
                decoded.extend(part)
    else:
        for job in jobs:
            decoded.extend(_decode_many(job))
    good = [(n, img) for n, img in decoded if not isinstance(img, str)]
    undecodable = [Problem(f"{label}/{n}", 0, img) for n, img in decoded if isinstance(img, str)]
    check_problems(undecodable, seen, skip_bad)
    if not good:
        raise InputError(f"{label}: none of the {seen} image files could be used")
    data = FaceData(
        images=np.stack([img for _, img in good]),
        age=np.array([labels[n][0] for n, _ in good], np.int16),
        gender=np.array([labels[n][1] for n, _ in good], np.int8),
        ethnicity=np.array([labels[n][2] for n, _ in good], np.int8),
        ids=np.array([n for n, _ in good]),
        names=np.array([n.rsplit("/", 1)[-1] for n, _ in good]),
        source=label,
        skipped={"unlabelled_names": len(unlabelled), "undecodable": len(undecodable)},
    )
    return data, unlabelled + undecodable


def read_image_folder(
    folder: str | Path, labels_csv: str | Path, size: int = 48, gray: bool = True, skip_bad: bool = False
) -> tuple[FaceData, list[Problem]]:
    """Read a folder of face chips with a labels CSV (columns ``file,age,gender,ethnicity``).

    ``file`` is relative to the folder. A label cell may be empty (unknown: stored as -1), so an
    external set with only some labels still loads. Bad rows and unreadable images are problems.
    """
    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    if not labels_csv.is_file():
        raise InputError(f"{labels_csv}: no such file")
    label = str(labels_csv)
    problems: list[Problem] = []
    kept: list[tuple[str, np.ndarray, int, int, int]] = []
    total = 0
    try:
        with _open_csv_text(labels_csv) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise InputError(f"{label}: the file is empty (expected a header file,age,gender,ethnicity)")
            if "file" not in [h.strip() for h in reader.fieldnames]:
                raise InputError(f"{label}:1: missing column file (expected file,age,gender,ethnicity)")
            limits = {"age": (1, AGE_MAX), "gender": (0, 1), "ethnicity": (0, 4)}
            for row in reader:
                total += 1
                line = reader.line_num
                row = {(k or "").strip(): (v or "") for k, v in row.items()}
                values, reasons = {}, []
                for name, (low, high) in limits.items():
                    cell = row.get(name, "").strip()
                    if cell == "":
                        values[name] = -1
                        continue
                    v, r = _parse_label(cell, name, low, high)
                    values[name] = -1 if v is None else v
                    if r:
                        reasons.append(r)
                image_path = folder / row["file"].strip()
                if not reasons:
                    try:
                        img = decode_image(image_path.read_bytes(), size, gray)
                    except FileNotFoundError:
                        reasons.append(f"file {row['file']!r} not found in {folder}")
                    except (UnidentifiedImageError, OSError, ValueError) as e:
                        reasons.append(f"file {row['file']!r}: cannot decode image ({type(e).__name__})")
                if reasons:
                    problems.append(Problem(label, line, "; ".join(reasons)))
                    continue
                kept.append((row["file"].strip(), img, values["age"], values["gender"], values["ethnicity"]))
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a text CSV file (could not decode as UTF-8)") from None
    except (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise InputError(f"{label}: corrupt compressed file ({e})") from None
    except csv.Error as e:
        raise InputError(f"{label}: not a valid CSV file ({e})") from None
    if total == 0:
        raise InputError(f"{label}: the file has a header but no data rows")
    check_problems(problems, total, skip_bad)
    if not kept:
        raise InputError(f"{label}: none of the {total} rows could be used")
    data = FaceData(
        images=np.stack([k[1] for k in kept]),
        age=np.array([k[2] for k in kept], np.int16),
        gender=np.array([k[3] for k in kept], np.int8),
        ethnicity=np.array([k[4] for k in kept], np.int8),
        ids=np.array([k[0] for k in kept]),
        names=np.array([os.path.basename(k[0]) for k in kept]),
        source=label,
        skipped={"bad_rows": len(problems)},
    )
    return data, problems


def read_any(
    path: str | Path, size: int = 48, gray: bool = True, skip_bad: bool = False, labels: str | Path | None = None
) -> tuple[FaceData, list[Problem], str]:
    """Pick the reader from the input: a labels CSV means a generic folder, a CSV/.gz/.zip table
    means the Kaggle format, anything else (folder, .tar, .tar.gz) means UTKFace originals.

    Returns (data, problems, kind) with kind one of 'kaggle', 'utkface', 'folder'.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if labels is not None:
        data, problems = read_image_folder(path, labels, size=size, gray=gray, skip_bad=skip_bad)
        return data, problems, "folder"
    if name.endswith((".tar", ".tar.gz", ".tgz")) or path.is_dir():
        data, problems = read_utkface(path, size=size, gray=gray, skip_bad=skip_bad)
        return data, problems, "utkface"
    if name.endswith((".csv", ".csv.gz", ".zip", ".gz")):
        if size != KAGGLE_SIDE or not gray:
            raise InputError(
                f"{path}: the Kaggle table holds 48x48 grayscale faces; --size/--rgb apply to UTKFace originals only"
            )
        data, problems = read_kaggle_csv(path, skip_bad=skip_bad)
        return data, problems, "kaggle"
    raise InputError(
        f"{path}: unknown input (expected a Kaggle .csv/.csv.gz/.zip, a UTKFace folder or .tar.gz, "
        "or a folder with --labels CSV)"
    )
