"""Synthetic inputs shared by the data tests: a Kaggle-format table whose pixels carry the labels
and planted duplicates, and a tiny UTKFace-style folder and .tar.gz with the irregular names of
the real download. Everything is seeded and written under pytest's tmp folders."""

from __future__ import annotations

import gzip
import json
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIDE = 48
KAGGLE_HEADER = "age,ethnicity,gender,img_name,pixels"


@dataclass
class SyntheticFaces:
    """Faces and labels as the reader should return them, plus the planted duplicate pairs.

    images: uint8 (N, 48, 48). exact_pairs / near_pairs: int (P, 2), row indices, i < j.
    """

    images: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray
    names: np.ndarray
    exact_pairs: np.ndarray
    near_pairs: np.ndarray


@dataclass
class KaggleFile(SyntheticFaces):
    path: Path = Path()


def synthesize_faces(n: int = 300, seed: int = 0, n_exact: int = 4, n_near: int = 4) -> SyntheticFaces:
    """Faces a tiny model can learn: brightness follows ethnicity, stripe orientation follows
    gender, the size of a central blob follows age; noise keeps unrelated faces far apart
    (mean abs diff ~15). Exact copies and near copies (noise within +-3) get conflicting labels."""
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    ethnicity = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    age = rng.integers(20, 40, n)  # two age bands, so the split's strata are not all tiny
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.where(gender[:, None, None] == 0, np.sin(yy / 2.0 + phase), np.sin(xx / 2.0 + phase))
    radius = 6 + (age[:, None, None] - 20) / 2
    blob = ((yy - 24) ** 2 + (xx - 24) ** 2 < radius**2).astype(np.float32)
    base = 50 + 30 * ethnicity[:, None, None] + 35 * stripes + 30 * blob
    images = np.clip(base + rng.normal(0, 12, (n, SIDE, SIDE)), 0, 255).round().astype(np.uint8)

    rows = rng.choice(n, 2 * (n_exact + n_near), replace=False)
    src, dst = rows[: n_exact + n_near], rows[n_exact + n_near :]
    for k, (a, b) in enumerate(zip(src, dst)):
        if k < n_exact:
            images[b] = images[a]
            age[b] = age[a] + 5 if age[a] < 30 else age[a] - 5
        else:
            jitter = rng.integers(-3, 4, (SIDE, SIDE))
            images[b] = np.clip(images[a].astype(int) + jitter, 0, 255).astype(np.uint8)
            gender[b] = 1 - gender[a]
            ethnicity[b] = ethnicity[a]
    pairs = np.sort(np.stack([src, dst], 1), axis=1)
    names = np.array([f"2017011{k:010d}.jpg.chip.jpg" for k in range(n)])
    return SyntheticFaces(
        images=images,
        age=age.astype(np.int16),
        gender=gender.astype(np.int8),
        ethnicity=ethnicity.astype(np.int8),
        names=names,
        exact_pairs=pairs[:n_exact],
        near_pairs=pairs[n_exact:],
    )


def kaggle_row(age: object, ethnicity: object, gender: object, name: str, image: np.ndarray | str) -> str:
    """One data line of the Kaggle table (no newline); ``image`` may be a ready pixel string."""
    pixels = image if isinstance(image, str) else " ".join(map(str, image.ravel().tolist()))
    return f"{age},{ethnicity},{gender},{name},{pixels}"


def write_table(path: Path, lines: list[str]) -> Path:
    """Write text lines as .csv, .csv.gz or a .zip holding one .csv, chosen by the suffix."""
    text = "".join(line + "\n" for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("age_gender.csv", text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.fixture(scope="session")
def synthetic_faces() -> SyntheticFaces:
    return synthesize_faces()


@pytest.fixture
def make_kaggle_csv(tmp_path: Path, synthetic_faces: SyntheticFaces) -> Callable[..., KaggleFile]:
    """Factory: ``make_kaggle_csv(suffix='.csv'|'.csv.gz'|'.zip', n=300, seed=0)`` writes the table."""

    def make(suffix: str = ".csv", n: int = 300, seed: int = 0, name: str = "age_gender") -> KaggleFile:
        faces = synthetic_faces if (n, seed) == (300, 0) else synthesize_faces(n, seed)
        lines = [KAGGLE_HEADER] + [
            kaggle_row(a, e, g, nm, img)
            for a, e, g, nm, img in zip(faces.age, faces.ethnicity, faces.gender, faces.names, faces.images)
        ]
        path = write_table(tmp_path / f"{name}{suffix}", lines)
        return KaggleFile(**vars(faces), path=path)

    return make


@dataclass
class UTKFolder:
    """A UTKFace-style input: the folder, the same files as UTKFace/ inside a .tar.gz, the labels
    of the usable files by name, and the names that must be skipped."""

    folder: Path
    tarball: Path
    labels: dict[str, tuple[int, int, int]]
    unlabelled: list[str]
    corrupt: list[str]


UTK_IRREGULAR = {
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1),
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, 0),
}
UTK_UNLABELLED = "39_1_20170116174525125.jpg.chip.jpg"
UTK_CORRUPT = "30_1_3_20170119180000000.jpg.chip.jpg"


def face_picture(rng: np.random.Generator, gender: int, ethnicity: int, size: int = 60) -> Image.Image:
    """An RGB picture whose colour follows ethnicity and stripe orientation follows gender."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((yy if gender == 0 else xx) / 3.0)
    colour = np.array([60 + 35 * ethnicity, 200 - 30 * ethnicity, 120])
    rgb = colour + 40 * stripes[..., None] + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def utk_folder(tmp_path_factory: pytest.TempPathFactory) -> UTKFolder:
    """20 image files: 16 regular (2 of them PNG), the 2 irregular names of the real download,
    one name without the race field and one .jpg of random bytes; plus a README to ignore."""
    root = tmp_path_factory.mktemp("utk")
    folder = root / "UTKFace"
    folder.mkdir()
    rng = np.random.default_rng(1)
    labels: dict[str, tuple[int, int, int]] = {}
    for k in range(16):
        age, gender, eth = int(rng.integers(1, 90)), k % 2, k % 5
        suffix = ".png" if k in (3, 11) else ".jpg.chip.jpg"
        labels[f"{age}_{gender}_{eth}_201701161{k:08d}{suffix}"] = (age, gender, eth)
    labels.update(UTK_IRREGULAR)
    for name, (_, gender, eth) in labels.items():
        face_picture(rng, gender, eth).save(folder / name, format="PNG" if name.endswith(".png") else "JPEG")
    face_picture(rng, 1, 0).save(folder / UTK_UNLABELLED, format="JPEG")
    (folder / UTK_CORRUPT).write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (folder / "README.txt").write_text("not an image\n")
    tarball = root / "UTKFace.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="UTKFace")
    return UTKFolder(folder, tarball, labels, [UTK_UNLABELLED], [UTK_CORRUPT])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained two-stage run (gender + ethnicity + age, width 8, 2 epochs) in the layout of
    ``faceattr run``: ROOT/data (prepared) and ROOT/age (the run folder, returned). Shared by
    the evaluation and report tests; 24x24 faces whose brightness follows gender, stripe period
    ethnicity and blob size age."""
    from faceattr.cache import Prepared, save_prepared
    from faceattr.config import resolve_config
    from faceattr.dataset import FaceData
    from faceattr.split import split_hash
    from faceattr.train import train

    rng = np.random.default_rng(0)
    n, side = 480, 24
    gender = rng.integers(0, 2, n)
    ethnicity = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    age = rng.integers(1, 80, n)
    yy, xx = np.mgrid[0:side, 0:side]
    stripes = 50 * np.sin(yy[None] * (0.5 + 0.3 * ethnicity[:, None, None]) + 0.05 * xx[None])
    blob = ((yy - 12) ** 2 + (xx - 12) ** 2)[None] < (2 + age[:, None, None] / 10) ** 2
    base = 80 + 60 * gender[:, None, None] + stripes + 40 * blob
    images = np.clip(base + rng.normal(0, 12, (n, side, side)), 0, 255).astype(np.uint8)
    data = FaceData(
        images=images,
        age=age.astype(np.int16),
        gender=gender.astype(np.int8),
        ethnicity=ethnicity.astype(np.int8),
        ids=np.array([f"f{k}" for k in range(n)]),
        names=np.array([f"f{k}.jpg" for k in range(n)]),
        source="synthetic",
    )
    split = np.array(["train"] * 300 + ["val"] * 90 + ["test"] * 90)
    root = tmp_path_factory.mktemp("tiny_run")
    manifest = {
        "input": {"path": "synthetic", "kind": "kaggle", "sha256": "0" * 64},
        "faces_read": n,
        "skipped": {"total": 0},
        "duplicates": {"exact_pairs": 0, "near_pairs": 0, "groups": 0, "largest_group": 0},
        "split": {"train": 300, "val": 90, "test": 90, "excluded": 0},
    }
    manifest["split_hash"] = split_hash(data.ids, split)
    (root / "data").mkdir()
    save_prepared(root / "data", Prepared(data=data, split=split, group=np.arange(n), sha=data.ids, manifest=manifest))
    cfg = resolve_config(
        overrides={
            "name": "tiny-age",
            "tasks": ["gender", "ethnicity", "age"],
            "age_head": "two_stage",
            "stem": "s2pool",
            "width": 8,
            "epochs": 2,
            "batch_size": 32,
            "device": "cpu",
            "warmup_epochs": 0.5,
            "lr": 3e-3,
            "threads": 1,
        }
    )
    train(cfg, root / "data", root / "age", log=lambda *_: None)
    return root / "age"


def _write_fake_section(folder: Path, figure: str = "fig/one.png") -> None:
    """An index.json as the explain/clusters tools write it, with one small PNG figure; the
    title and text carry characters HTML must escape."""
    (folder / "fig").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "fig" / "one.png")
    index = {
        "title": "Grad-CAM <maps>",
        "text": ["Where the model looks.", "Second paragraph & more."],
        "figures": [{"path": figure, "caption": "heat maps of ten faces"}],
    }
    (folder / "index.json").write_text(json.dumps(index))


@pytest.fixture
def fake_section() -> Callable[..., None]:
    """``fake_section(folder, figure='fig/one.png')`` writes an index.json section into folder."""
    return _write_fake_section


@pytest.fixture(scope="session")
def tiny_report(tiny_run: Path) -> dict:
    """``evaluate_run`` on the tiny run with every default (test split, data found from the run,
    RUN/report), after a fake RUN/explain/index.json; returns the metrics."""
    from faceattr.report import evaluate_run

    _write_fake_section(tiny_run / "explain")
    return evaluate_run(tiny_run, log=lambda *_: None, n_boot=200)


@pytest.fixture(scope="session")  # session, like the tiny run: checked (and skipped) before it is trained
def browser():
    """Debian's headless chromium through Playwright. Skipped when /usr/bin/chromium is missing,
    unless FACEATTR_REQUIRE_BROWSER=1 (CI), where a missing browser fails the test."""
    import os

    from faceattr.browser import CHROMIUM, launch

    if not Path(CHROMIUM).is_file():
        if os.environ.get("FACEATTR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FACEATTR_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); set FACEATTR_REQUIRE_BROWSER=1 to fail instead")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()
