"""Which frl244 studio portraits each model gets wrong on gender, with its p(female) for each, and
which wrong photos all the models share: a model that fixes a different handful of photos is
noise on 244 photos; one that fixes the shared core has learned something.

python bench/frl244_errors.py --model utkface64rgb-v5=pretrained --model reference48=reference48
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

from faceattr.atomic import write_json
from faceattr.inputerror import InputError
from faceattr.predictor import load_predictor
from wild import first_face  # the yardstick's choice of face in a labelled photo: the largest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=MODEL",
        help="a name and a run folder, checkpoint, .onnx file or packaged name (repeatable)",
    )
    ap.add_argument("--frl", type=Path, default=Path("../shared/data/frl244"))
    ap.add_argument("--out", type=Path, default=Path("results/frl244_errors.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    pairs = {}
    for given in args.model:
        name, sep, model = given.partition("=")
        if not sep or not name or not model or name in pairs:
            sys.exit(f"--model {given!r}: expected NAME=MODEL with a name not given before")
        pairs[name] = model
    labels = args.frl / "labels.csv"
    try:
        with open(labels, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"file", "gender", "person"} - set(rows[0] if rows else {})
    except OSError as e:
        sys.exit(f"{labels}: cannot read ({e.strerror})")
    if missing:
        sys.exit(f"{labels}: expected columns file, gender and person; missing {', '.join(sorted(missing))}")
    unlabelled = [r["file"] for r in rows if r["gender"] not in ("0", "1")]
    rows = [r for r in rows if r["gender"] in ("0", "1")]  # skipped, and counted in the result
    models = {}
    for name, model in pairs.items():
        try:
            predictor = load_predictor(None if model == "pretrained" else model)
        except InputError as e:
            sys.exit(f"--model {name}={model}: {e}")
        wrong, missed = {}, []
        for r in rows:
            face = first_face(predictor.predict(str(args.frl / r["file"])))
            if face is None:
                missed.append(r["file"])
            elif (face["gender"]["female"] > 0.5) != (r["gender"] == "1"):
                true = "female" if r["gender"] == "1" else "male"
                wrong[r["file"]] = {"true": true, "p_female": round(float(face["gender"]["female"]), 3)}
        models[name] = {"model": model, "photos": len(rows), "no_face": missed, "gender_wrong": wrong}
    shared = sorted(set.intersection(*(set(m["gender_wrong"]) for m in models.values())))
    result = {
        "models": models,
        "wrong_in_every_model": shared,
        "people_wrong_in_every_model": len({r["person"] for r in rows if r["file"] in shared}),
        "skipped_without_gender": unlabelled,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    write_json(result, args.out)
    for name, m in models.items():
        print(f"{name}: {len(m['gender_wrong'])} of {m['photos']} wrong on gender, {len(m['no_face'])} without a face")
    print(f"wrong in every model: {len(shared)} photos of {result['people_wrong_in_every_model']} people")


if __name__ == "__main__":
    main()
