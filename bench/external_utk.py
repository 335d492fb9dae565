"""Does prediction on photos match the 48x48 numbers? Runs the full photo path (MTCNN detection
-> similarity warp onto the UTKFace template -> gray, area resize to 48 -> model) on the UTKFace
originals (200x200 JPEGs) of the canonical test split, and compares it with the model on the same
faces' 48x48 Kaggle pixels: detection rate, gender and ethnicity accuracy, age MAE, and how far the
re-aligned chips are from the Kaggle pixels (framing).

Kaggle rows are mapped to UTKFace files as tools/compare_prepared.py pairs them: the SHA-1 of the
file read at 48x48 gray (faceattr.readers.decode_image) equals the row's pixel SHA-1; among files
with the same pixels, the one whose name ends with the row's img_name and has its labels wins.

nice -n 19 python bench/external_utk.py --model runs/age/age-two_stage --out results/external_utk.json

A model with another input (RGB, 64 px) is compared with its own dataset faces: --faces names the
prepared table of the same canonical rows at its input (tools/originals_prepared.py); the rows are
still paired with their files through the 48x48 gray table (--data). The keys that name kaggle48
then refer to those faces ("dataset_faces" in the result says which).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.align import TEMPLATE, align_face, similarity_transform
from faceattr.atomic import write_json
from faceattr.cache import load_prepared
from faceattr.imageio import load_image
from faceattr.labels import CLASS_NAMES
from faceattr.metrics import head_metrics
from faceattr.originals import match_rows, utk_files
from faceattr.predictor import Predictor, load_predictor


def detect_all(
    predictor: Predictor, files: dict[str, bytes], matched: list[str | None], cache: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (N, 5, 2) of the main face of each matched chip (NaN where none) and the number
    of faces found (N,), from ``cache`` when it holds the same files."""
    names = np.array([m or "" for m in matched])
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if np.array_equal(z["names"], names) and float(z["min_score"]) == predictor.detector_options["min_score"]:
                return z["landmarks"], z["n_faces"]
    landmarks = np.full((len(matched), 5, 2), np.nan)
    n_faces = np.zeros(len(matched), int)
    for i, name in enumerate(matched):
        if name is None:
            continue
        faces = predictor.detector.detect(load_image(files[name]))
        n_faces[i] = len(faces)
        if faces:
            # A chip holds one main face; a smaller one (a face in the background) is not it.
            landmarks[i] = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).landmarks
    if cache is not None:
        min_score = predictor.detector_options["min_score"]
        np.savez(cache, names=names, landmarks=landmarks, n_faces=n_faces, min_score=min_score)
    return landmarks, n_faces


def scores(labels: dict[str, np.ndarray], pred: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """Gender and ethnicity accuracy, ethnicity macro-F1 and age MAE of the faces in ``mask``."""
    out = {"n": int(mask.sum())}
    for task in ("gender", "ethnicity"):
        m = head_metrics(labels[task][mask].astype(np.int64), pred[task][mask], CLASS_NAMES[task])
        out[f"{task}_accuracy"] = round(m["accuracy"], 4)
        if task == "ethnicity":
            out["ethnicity_macro_f1"] = round(m["macro_f1"], 4)
    if "age" in pred:
        out["age_mae"] = round(float(np.abs(pred["age"][mask] - labels["age"][mask]).mean()), 3)
    return out


def as_arrays(faces_attrs: list[dict]) -> dict[str, np.ndarray]:
    out = {
        "gender": np.array([[a["gender"][c] for c in CLASS_NAMES["gender"]] for a in faces_attrs]),
        "ethnicity": np.array([[a["ethnicity"][c] for c in CLASS_NAMES["ethnicity"]] for a in faces_attrs]),
    }
    if faces_attrs and faces_attrs[0]["age"] is not None:
        out["age"] = np.array([a["age"] for a in faces_attrs])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=Path("../shared/data/UTKFace.tar.gz"))
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"), help="the canonical prepared Kaggle table")
    p.add_argument(
        "--model", default="runs/age/age-two_stage", help="run folder, checkpoint, .onnx file or `pretrained`"
    )
    p.add_argument("--backend", choices=["onnx", "torch"], help="default: onnx for pretrained/.onnx, else torch")
    p.add_argument("--every", type=int, default=1, help="only every N-th test face (default 1: all)")
    p.add_argument(
        "--faces",
        type=Path,
        help="prepared table of the same rows at the model's input (default: --data); e.g. prepared/orig64rgb",
    )
    p.add_argument("--out", type=Path, default=Path("results/external_utk.json"))
    p.add_argument("--examples", type=Path, help="PNG: the dataset face next to the re-aligned chip, for 24 faces")
    p.add_argument(
        "--detections", type=Path, help="NPZ cache of the detections (model-independent): reused if it exists"
    )
    args = p.parse_args()
    start = time.time()

    prepared = load_prepared(args.data)
    mask = prepared.split == "test"
    test, test_sha = prepared.data.subset(mask), prepared.sha[mask]
    faces = prepared if args.faces is None else load_prepared(args.faces)
    if not np.array_equal(faces.data.ids, prepared.data.ids) or not np.array_equal(faces.split, prepared.split):
        raise SystemExit(f"{args.faces}: not the rows and split of {args.data} (expected the same canonical rows)")
    inputs = faces.data.images[mask]  # the model's dataset faces, row for row with `test`
    if args.every > 1:  # a stride, not the first N: the split is sorted by age
        keep = np.arange(len(test)) % args.every == 0
        test, test_sha, inputs = test.subset(keep), test_sha[keep], inputs[keep]
    files = utk_files(args.archive)
    matched = match_rows(test, test_sha, files)
    has_file = np.array([m is not None for m in matched])
    t_match = time.time() - start

    predictor = load_predictor(None if str(args.model) == "pretrained" else args.model, args.backend)
    want = (predictor.size, predictor.size) if predictor.gray else (predictor.size, predictor.size, 3)
    if inputs.shape[1:] != want:
        sys.exit(
            f"{args.faces or args.data}: faces of shape {inputs.shape[1:]}, the model reads {want}; "
            "pass --faces with the rows prepared at its input (tools/originals_prepared.py)"
        )
    n = len(test)
    t0 = time.time()
    landmarks, n_faces = detect_all(predictor, files, matched, args.detections)
    detected = n_faces > 0
    chips = np.zeros_like(inputs)
    warp_scale, warp_angle, warp_shift = (np.full(n, np.nan) for _ in range(3))
    for i in np.flatnonzero(detected):
        chips[i] = predictor.chip(align_face(load_image(files[matched[i]]), landmarks[i]))
        m = similarity_transform(landmarks[i], TEMPLATE)
        warp_scale[i] = np.sqrt(abs(np.linalg.det(m[:, :2])))
        warp_angle[i] = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
        warp_shift[i] = np.hypot(*(m[:, :2] @ [100, 100] + m[:, 2] - [100, 100]))  # where the chip centre moves
    t_detect = time.time() - t0

    labels = {"gender": test.gender, "ethnicity": test.ethnicity, "age": test.age.astype(float)}
    kaggle = as_arrays(predictor.attributes(inputs))
    photo = {k: np.zeros_like(v) for k, v in kaggle.items()}
    if detected.any():
        got = as_arrays(predictor.attributes(chips[detected]))
        for k in photo:
            photo[k][detected] = got[k]
    # The --no-detect path on the same JPEGs must give the Kaggle pixels exactly.
    direct = np.stack([predictor.chip(load_image(files[m])) if m else inputs[i] for i, m in enumerate(matched)])
    diff = np.abs(chips.astype(float) - inputs.astype(float)).reshape(n, -1).mean(1)[detected]

    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model": str(args.model),
        "backend": predictor.backend,
        "dataset_faces": str(args.faces or args.data),
        "test_faces": n,
        "matched_to_utkface_file": int(has_file.sum()),
        "detected": int(detected.sum()),
        "detection_rate": round(float(detected.sum() / max(1, has_file.sum())), 4),
        "missed": sorted(m for m, d in zip(matched, detected) if m and not d),
        "faces_per_chip": {str(k): int((n_faces[has_file] == k).sum()) for k in sorted(set(n_faces[has_file]))},
        "min_score": predictor.detector_options["min_score"],
        "kaggle48_all": scores(labels, kaggle, np.ones(n, bool)),
        "kaggle48_detected": scores(labels, kaggle, detected),
        "photo_path_detected": scores(labels, photo, detected),
        "no_detect_path_equals_kaggle_pixels": bool(np.array_equal(direct, inputs)),
        "framing": {
            "mean_abs_pixel_diff_vs_kaggle_48": {
                "median": round(float(np.median(diff)), 2),
                "p90": round(float(np.percentile(diff, 90)), 2),
            },
            "warp_scale_median_p10_p90": np.round(np.nanpercentile(warp_scale, [50, 10, 90]), 3).tolist(),
            "warp_rotation_deg_abs_median_p90": np.round(np.nanpercentile(np.abs(warp_angle), [50, 90]), 2).tolist(),
            "warp_centre_shift_px_of_200_median_p90": np.round(np.nanpercentile(warp_shift, [50, 90]), 2).tolist(),
        },
        "agreement_photo_vs_kaggle48_detected": {
            "gender": round(float((photo["gender"].argmax(1) == kaggle["gender"].argmax(1))[detected].mean()), 4),
            "ethnicity": round(
                float((photo["ethnicity"].argmax(1) == kaggle["ethnicity"].argmax(1))[detected].mean()), 4
            ),
            **(
                {"age_mean_abs_diff": round(float(np.abs(photo["age"] - kaggle["age"])[detected].mean()), 3)}
                if "age" in kaggle
                else {}
            ),
        },
        # Wall-clock on whatever else the machine was running; not a speed benchmark.
        "seconds": {"match": round(t_match, 1), "detect_align": round(t_detect, 1), "total": 0.0},
    }
    d, k = result["photo_path_detected"], result["kaggle48_detected"]
    result["photo_minus_kaggle48"] = {
        key: round(d[key] - k[key], 4) for key in ("gender_accuracy", "ethnicity_accuracy", "age_mae") if key in d
    }
    result["seconds"]["total"] = round(time.time() - start, 1)
    write_json(result, args.out)
    print({key: result[key] for key in ("detection_rate", "kaggle48_detected", "photo_path_detected")})
    print(result["framing"], result["photo_minus_kaggle48"])
    if args.examples:
        idx = np.flatnonzero(detected)[:: max(1, detected.sum() // 24)][:24]
        pairs = [np.concatenate([inputs[i], chips[i]], 1) for i in idx]
        rows = [np.concatenate(pairs[r : r + 6], 1) for r in range(0, len(pairs) - len(pairs) % 6, 6)]
        Image.fromarray(np.concatenate(rows, 0)).resize((6 * 96 * 2, len(rows) * 96), Image.NEAREST).save(args.examples)


if __name__ == "__main__":
    main()
