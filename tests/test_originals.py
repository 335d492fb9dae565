"""tools/originals_prepared.py: the canonical rows at another input, from their UTKFace originals.
Ids, labels, split and duplicate groups stay those of the table; each row's pixels are its
original's at the new size and colour; a row without an original is excluded, not dropped."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.cache import Prepared, load_prepared, save_prepared
from faceattr.dataset import FaceData
from faceattr.dedupe import pixel_sha1
from faceattr.readers import decode_image
from faceattr.split import split_hash

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:200, 0:200]
    rgb = np.stack([(xx * (1 + seed) + yy) % 256, (yy * 2 + 40 * seed) % 256, rng.integers(0, 256, (200, 200))], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_originals_keep_the_canonical_rows_split_and_count_the_missing(tmp_path):
    labels = [(25, 0, 1), (40, 1, 2), (3, 0, 0), (70, 1, 3), (33, 0, 4)]
    files = {f"UTKFace/{a}_{g}_{e}_2017011{k}.jpg.chip.jpg": _jpeg(k) for k, (a, g, e) in enumerate(labels)}
    with tarfile.open(tmp_path / "utk.tar.gz", "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    # The table: the five originals at 48x48 gray plus one row whose original is not in the archive.
    images = np.stack([decode_image(b, 48, True) for b in files.values()] + [np.full((48, 48), 7, np.uint8)])
    n = len(images)
    ids = np.array([f"row{k:05d}" for k in range(n)])
    split = np.array(["train", "train", "val", "test", "excluded", "val"])
    data = FaceData(
        images=images,
        age=np.array([a for a, _, _ in labels] + [50], np.int16),
        gender=np.array([g for _, g, _ in labels] + [1], np.int8),
        ethnicity=np.array([e for _, _, e in labels] + [0], np.int8),
        ids=ids,
        names=np.array([f"2017011{k}.jpg.chip.jpg" for k in range(n)]),
        source="table",
    )
    group = np.arange(n)
    table = tmp_path / "table"
    table.mkdir()
    manifest = {"split_hash": split_hash(ids, split), "duplicates": {"groups": 0}}
    save_prepared(table, Prepared(data=data, split=split, group=group, sha=pixel_sha1(images), manifest=manifest))

    out = tmp_path / "rgb64"
    cmd = [
        sys.executable,
        "tools/originals_prepared.py",
        "--data",
        str(table),
        "--archive",
        str(tmp_path / "utk.tar.gz"),
    ]
    done = subprocess.run([*cmd, "--size", "64", "--rgb", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 without an original (excluded)" in done.stdout
    got = load_prepared(out)
    assert got.data.images.shape == (n, 64, 64, 3)
    assert list(got.data.ids) == list(ids) and list(got.data.age) == list(data.age)
    assert list(got.split) == ["train", "train", "val", "test", "excluded", "excluded"]  # the last: no original
    for k, blob in enumerate(files.values()):
        np.testing.assert_array_equal(got.data.images[k], decode_image(blob, 64, False))
    assert got.manifest["skipped"] == {"total": 1, "no_original": 1}
    assert got.manifest["split_hash"] == split_hash(ids, got.split)
    assert list(got.sha) == list(pixel_sha1(got.data.images))
