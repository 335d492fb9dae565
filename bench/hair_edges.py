"""How much a model reads gender from hair at the chip's edges: the split's faces at the model's
input, scored as they are and with their side and top bands painted one flat grey (hair tied back
against a plain wall, as in studio portraits), with the recall of adult men and adult women.

A model that reads the face keeps its recall when the bands go; one that reads long hair at the
edges loses women. The framed copies are made here, once, with fixed band widths (no randomness);
training's frame augmentation (``faceattr.augment``, ``frame_p``) draws its own widths and fill.
Val decides, test only reports. Each run replaces its model's entry (one per --name and split).

python bench/hair_edges.py --name utkface64rgb-v5 --model pretrained --data prepared/orig64rgb --split val
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from faceattr.atomic import write_json
from faceattr.cache import load_prepared
from faceattr.inputerror import InputError
from faceattr.predictor import load_predictor

# (left/right band, top band) as fractions of the side; the grey is a mid-light studio wall.
FRAMES = {
    "none": (0.0, 0.0),
    "sides 10 %": (0.10, 0.0),
    "sides 15 %, top 10 %": (0.15, 0.10),
    "sides 20 %, top 15 %": (0.20, 0.15),
}
WALL = 153
ADULT = 18


def framed(images: np.ndarray, side: float, top: float) -> np.ndarray:
    """uint8 faces (N, H, W[, C]) with their left, right and top bands set to WALL."""
    out = images.copy()
    h, w = out.shape[1:3]
    s, t = round(side * w), round(top * h)
    if s:
        out[:, :, :s] = WALL
        out[:, :, w - s :] = WALL
    out[:, :t] = WALL
    return out


def recall_by_sex(p_female: np.ndarray, gender: np.ndarray, age: np.ndarray) -> dict:
    """Accuracy over all faces, recall of adult men and women, and the mean p(female) of adult women."""
    right = (p_female > 0.5) == (gender == 1)
    men, women = (gender == 0) & (age >= ADULT), (gender == 1) & (age >= ADULT)

    def mean(values: np.ndarray) -> float | None:  # None, not NaN, for an empty group
        return round(float(values.mean()), 4) if values.size else None

    return {
        "gender_acc": mean(right),
        "adult_men_recall": mean(right[men]),
        "adult_women_recall": mean(right[women]),
        "adult_women_mean_p_female": mean(p_female[women]),
        "adult_men": int(men.sum()),
        "adult_women": int(women.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="the model's name in the result file")
    ap.add_argument("--model", default="pretrained", help="run folder, checkpoint, .onnx file or packaged name")
    ap.add_argument("--data", type=Path, required=True, help="prepared faces at the model's input")
    ap.add_argument("--split", choices=["val", "test"], default="val", help="val decides, test only reports")
    ap.add_argument("--out", type=Path, default=Path("results/hair_edges.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    try:
        prepared = load_prepared(args.data)
        predictor = load_predictor(None if args.model == "pretrained" else args.model)
    except InputError as e:
        sys.exit(str(e))
    part = prepared.data.subset(prepared.split == args.split)
    if predictor.size != part.size or predictor.gray != (part.channels == 1):
        sys.exit(
            f"--data {args.data}: its faces are {part.size} px with {part.channels} channel(s); the model "
            f"takes {predictor.size} px {'gray' if predictor.gray else 'RGB'}"
        )
    rows = {}
    for label, (side, top) in FRAMES.items():
        answers = predictor.attributes(framed(part.images, side, top))
        p_female = np.array([a["gender"]["female"] for a in answers])
        rows[label] = recall_by_sex(p_female, part.gender, part.age)
    result = {
        "model": args.model,
        "split": args.split,
        "data": str(args.data),
        "frames": rows,
        "wall_grey": WALL,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    try:
        doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    except ValueError:
        sys.exit(f"{args.out}: not a JSON result file; move it away or name another --out")
    doc.setdefault("models", {})[f"{args.name}/{args.split}"] = result
    write_json(doc, args.out)
    for label, r in rows.items():
        print(f"{args.name}/{args.split} {label}: {r}")


if __name__ == "__main__":
    main()
