"""Compute the dlib teacher's embedding once for every training face of a prepared table (from
its UTKFace original), fit the linear probes, and cache both for distillation
(``faceattr.teacher``; the training config's ``teacher`` key points at the cache).

- Training faces: the embedding of the original, and probe answers cross-fitted over 5 folds.
- A seeded sample of validation and test faces (``--eval-faces`` each): answers of probes fitted
  on all training faces, scored into ``--results`` (the teacher's own probe, on the originals).
- Faces whose original is not in the archive or where no face is detected get ``has = False``
  and are counted.

Needs the teacher extra (``pip install -e '.[teacher]'``); about 80 ms of one core per face.

python tools/teacher_cache.py --data prepared/kaggle48 --out prepared/teacher-dlib.npz --results results/teacher_dlib.json
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import f1_score

from faceattr.atomic import write_json
from faceattr.cache import load_prepared
from faceattr.originals import match_rows, utk_files
from faceattr.teacher import EMBED_DIM, cross_fitted, fit_probes, write_cache

_worker: dict = {}


def _init() -> None:
    from faceattr.align import FaceDetector
    from faceattr.teacher import DlibTeacher

    _worker["detector"] = FaceDetector(threads=1)
    _worker["teacher"] = DlibTeacher()


def _embed(jpeg: bytes | None) -> np.ndarray | None:
    """The teacher's embedding of the largest face MTCNN finds in a JPEG (None: none found)."""
    if jpeg is None:
        return None
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    faces = _worker["detector"].detect(image)
    if not faces:
        return None
    face = max(faces, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    return _worker["teacher"].embed(np.asarray(image), face.box)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    ap.add_argument("--archive", type=Path, default=Path("../shared/data/UTKFace.tar.gz"))
    ap.add_argument("--out", type=Path, default=Path("prepared/teacher-dlib.npz"))
    ap.add_argument("--results", type=Path, default=Path("results/teacher_dlib.json"))
    ap.add_argument("--eval-faces", type=int, default=600, help="validation and test faces scored, each")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-train", type=int, default=0, help="only this many training faces (a smoke run)")
    args = ap.parse_args()
    started = time.perf_counter()
    prepared = load_prepared(args.data)
    rng = np.random.default_rng(args.seed)
    rows = np.flatnonzero(prepared.split == "train")
    if args.limit_train:
        rows = np.sort(rng.choice(rows, args.limit_train, replace=False))
    for split in ("val", "test"):
        part = np.flatnonzero(prepared.split == split)
        rows = np.concatenate([rows, np.sort(rng.choice(part, min(args.eval_faces, len(part)), replace=False))])
    data = prepared.data.subset(rows)
    files = utk_files(args.archive)
    matched = match_rows(data, prepared.sha[rows], files)
    print(f"{len(rows)} faces, {sum(m is None for m in matched)} without an original", file=sys.stderr)
    with ProcessPoolExecutor(args.workers, initializer=_init) as pool:
        embs = list(pool.map(_embed, [files[m] if m else None for m in matched], chunksize=64))
    has = np.array([e is not None for e in embs])
    emb = np.stack([e if e is not None else np.zeros(EMBED_DIM, np.float32) for e in embs])
    split = prepared.split[rows]
    gender, ethnicity, age = (np.asarray(a) for a in (data.gender, data.ethnicity, data.age))

    train = (split == "train") & has
    answers = {
        "gender_prob": np.zeros((len(rows), 2)),
        "ethnicity_prob": np.zeros((len(rows), 5)),
        "age": np.zeros(len(rows)),
    }
    for key, value in cross_fitted(emb[train], gender[train], ethnicity[train], age[train], 5, args.seed).items():
        answers[key][train] = value
    probes = fit_probes(emb[train], gender[train], ethnicity[train], age[train], args.seed)
    scored = {}
    for name in ("train", "val", "test"):
        mask = (split == name) & has
        if name != "train":
            for key, value in probes.predict(emb[mask]).items():
                answers[key][mask] = value
        pe = answers["ethnicity_prob"][mask].argmax(1)
        scored[name] = {
            "faces": int((split == name).sum()),
            "embedded": int(mask.sum()),
            "gender_acc": round(float((answers["gender_prob"][mask].argmax(1) == gender[mask]).mean()), 4),
            "ethnicity_acc": round(float((pe == ethnicity[mask]).mean()), 4),
            "ethnicity_macro_f1": round(
                float(f1_score(ethnicity[mask], pe, labels=list(range(5)), average="macro")), 4
            ),
            "age_mae": round(float(np.abs(answers["age"][mask] - age[mask]).mean()), 3),
        }
    scored["train"]["note"] = "cross-fitted (5 folds): each face scored by probes that never saw it"
    meta = {
        "teacher": "dlib_face_recognition_resnet_model_v1 + shape_predictor_5_face_landmarks (face-recognition-models 0.3.0)",
        "data": str(args.data),
        "split_manifest": prepared.manifest.get("split_file", ""),
    }
    write_cache(
        args.out,
        {
            "ids": data.ids,
            "has": has,
            "embedding": emb.astype(np.float16),
            "gender_prob": answers["gender_prob"].astype(np.float32),
            "ethnicity_prob": answers["ethnicity_prob"].astype(np.float32),
            "age": answers["age"].astype(np.float32),
        },
        meta,
    )
    result = {
        **meta,
        "input": "UTKFace originals (200x200 RGB), MTCNN box, dlib 5-point alignment to its 150x150 chip",
        "probes": "standardised embedding; logistic regression (C=0.5) for gender and ethnicity, ridge (alpha=10) for age",
        "missing": {
            "no_original": int(sum(m is None for m in matched)),
            "no_face": int(sum(m is not None and e is None for m, e in zip(matched, embs))),
        },
        "scores": scored,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    write_json(result, args.results)
    print(result["scores"], result["missing"], result["seconds"])


if __name__ == "__main__":
    main()
