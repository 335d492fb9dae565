"""The canonical faces at another input: each row of a prepared 48x48 table (its id, labels, split
and duplicate group) gets the pixels of its UTKFace original (200x200 RGB) at --size, in RGB
(--rgb) or gray. The canonical split is kept exactly, so a variant trained on the result is
measured on the same faces as the reference, and the teacher cache (keyed by row id) still
applies. Rows whose original is not in the archive are excluded and counted, never dropped.

Why not ``faceattr prepare UTKFace.tar.gz --split-file``: a split file pins each face's pixels,
and the archive's files are other pixels than the table's rows (and a few files have no row).

python tools/originals_prepared.py --data prepared/kaggle48 --size 48 --rgb --out prepared/orig48rgb
python tools/originals_prepared.py --data prepared/kaggle48 --size 64 --rgb --out prepared/orig64rgb
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from faceattr import __version__
from faceattr.cache import Prepared, load_prepared, save_prepared
from faceattr.dataset import FaceData
from faceattr.dedupe import pixel_sha1
from faceattr.folders import replacing_folder
from faceattr.labels import EXCLUDED, SPLITS
from faceattr.originals import match_rows, utk_files
from faceattr.prepare import file_fingerprint
from faceattr.readers import decode_image
from faceattr.split import split_hash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("prepared/kaggle48"), help="the canonical prepared table")
    ap.add_argument("--archive", type=Path, default=Path("../shared/data/UTKFace.tar.gz"))
    ap.add_argument("--size", type=int, required=True, help="side of the square faces")
    ap.add_argument("--rgb", action="store_true", help="keep colour (default gray)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    started = time.perf_counter()
    table = load_prepared(args.data)
    files = utk_files(args.archive)
    matched = match_rows(table.data, table.sha, files)
    gray = not args.rgb
    shape = (args.size, args.size) if gray else (args.size, args.size, 3)
    images = np.zeros((len(matched), *shape), np.uint8)
    for k, name in enumerate(matched):
        if name is not None:
            images[k] = decode_image(files[name], args.size, gray)
    missing = np.array([m is None for m in matched])
    split = np.where(missing, EXCLUDED, table.split)  # a str dtype wide enough for "excluded"
    d = table.data
    data = FaceData(
        images=images,
        age=d.age,
        gender=d.gender,
        ethnicity=d.ethnicity,
        ids=d.ids,
        names=d.names,
        source=str(args.archive),
    )
    counts = {s: int((split == s).sum()) for s in (*SPLITS, EXCLUDED)}
    manifest = {
        "faceattr_version": __version__,
        "input": {"path": str(args.archive), "kind": "utkface-originals", "sha256": file_fingerprint(args.archive)},
        "rows_from": {"path": str(args.data), "split_hash": table.manifest.get("split_hash")},
        "options": {"size": args.size, "gray": gray},
        "faces_read": len(data),
        "skipped": {"total": int(missing.sum()), "no_original": int(missing.sum())},
        "duplicates": table.manifest.get("duplicates"),
        "split": counts,
        "split_hash": split_hash(d.ids, split),
        "image_shape": list(images.shape[1:]),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    with replacing_folder(args.out) as tmp:
        save_prepared(
            tmp, Prepared(data=data, split=split, group=table.group, sha=pixel_sha1(images), manifest=manifest)
        )
    print(
        f"wrote {args.out}: {len(data)} rows at {args.size}px {'gray' if gray else 'RGB'}, {int(missing.sum())} without "
        f"an original (excluded); split {counts}; {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
