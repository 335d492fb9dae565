"""Measure the landmark template of faceattr.align: where MTCNN puts the 5 landmarks in UTKFace's
200x200 aligned chips. Runs the detector on every K-th chip of the archive (name order) and takes
the median position of each landmark over the largest face of each chip.

python tools/measure_template.py ../shared/data/UTKFace.tar.gz --n 400 [--out results/template.json]
(about 30 ms a chip on one CPU core)
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.align import TEMPLATE, FaceDetector
from faceattr.atomic import write_json

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def chips(archive: Path, n: int) -> list[tuple[str, bytes]]:
    """Every K-th chip of the archive in name order, K chosen to give about ``n``."""
    with tarfile.open(archive, "r:*") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        step = max(1, len(members) // n)
        picked = members[::step][:n]
        return [(m.name, tar.extractfile(m).read()) for m in picked]


def measure(items: list[tuple[str, bytes]]) -> dict:
    detector = FaceDetector(min_score=0.0)
    points, scores, missed = [], [], []
    for name, data in items:
        faces = detector.detect(Image.open(io.BytesIO(data)).convert("RGB"))
        if not faces:
            missed.append(name)
            continue
        big = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        points.append(big.landmarks)
        scores.append(big.score)
    pts = np.array(points)  # (N, 5, 2)
    median = np.median(pts, 0)
    return {
        "chips": len(items),
        "detected": len(points),
        "missed": missed,
        "template_median": np.round(median, 2).tolist(),
        "mad": np.round(np.median(np.abs(pts - median), 0), 2).tolist(),
        "landmarks": LANDMARKS,
        "score_percentiles_1_5_50": np.round(np.percentile(scores, [1, 5, 50]), 4).tolist(),
        "max_difference_from_committed_template_px": float(np.abs(median - TEMPLATE).max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path, help="UTKFace.tar.gz (200x200 aligned chips)")
    p.add_argument("--n", type=int, default=400, help="number of chips (default 400)")
    p.add_argument("--out", type=Path, help="also write the result to this JSON file")
    args = p.parse_args()
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), **measure(chips(args.archive, args.n))}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
