"""The out-of-domain yardstick: one model, scored in one run on

- the canonical split's 48x48 faces (in domain; --split test reports, --split val decides), or
  with --canonical the same rows at the model's own input (tools/originals_prepared.py);
- UTK-C: the same split's UTKFace originals under the fixed corruption suite of
  faceattr.corruptions (10 corruptions x 3 severities, seeded per photo), through the whole
  photo path (detect, align, classify), on --per-cell photos drawn once (seeded);
- the studio portraits of ../shared/data/frl244 (self-reported labels);

with gender accuracy, ethnicity accuracy and macro-F1, age MAE, the signed age error per decade
of true age, and accuracy on the 9 FairFace age groups (and the detection rate on photos).
Each run replaces its model's entry in results/wild.json (one entry per --name and split).

python bench/wild.py --name reference48 --model pretrained --split test --out results/wild.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import f1_score

from faceattr.atomic import write_json
from faceattr.cache import load_prepared
from faceattr.corruptions import ALSO_IN_TRAINING, CORRUPTIONS, SEVERITIES, corrupt, photo_seed
from faceattr.labels import AGE_MAX
from faceattr.metrics import decade_errors
from faceattr.originals import match_rows, utk_files
from faceattr.predictor import load_predictor
from faceattr.quantify import FAIRFACE_AGE_EDGES, age_group_of


def scores(gender, ethnicity, age, pred: list[dict | None]) -> dict:
    """Metrics over the faces with an answer (pred None: no face found); labels -1 unknown."""
    found = np.array([p is not None for p in pred])
    out = {"n": int(len(pred)), "found": round(float(found.mean()), 4) if len(pred) else None}
    if not found.any():
        return out
    p = [x for x in pred if x is not None]
    g, e, a = np.asarray(gender)[found], np.asarray(ethnicity)[found], np.asarray(age, float)[found]
    pg = np.array([max(x["gender"], key=x["gender"].get) == "female" for x in p]).astype(int)
    names = list(p[0]["ethnicity"])
    pe = np.array([names.index(max(x["ethnicity"], key=x["ethnicity"].get)) for x in p])
    pa = np.array([x["age"] for x in p])
    known_g, known_e, known_a = g >= 0, e >= 0, a > 0
    out["gender_acc"] = round(float((pg == g)[known_g].mean()), 4)
    out["ethnicity_acc"] = round(float((pe == e)[known_e].mean()), 4) if known_e.any() else None
    out["ethnicity_macro_f1"] = (
        round(float(f1_score(e[known_e], pe[known_e], labels=list(range(5)), average="macro", zero_division=0)), 4)
        if known_e.any()
        else None
    )
    if known_a.any():
        err = pa[known_a] - a[known_a]
        out["age_mae"] = round(float(np.abs(err).mean()), 3)
        out["age_signed_error_by_decade"] = decade_errors(pa[known_a], a[known_a])["signed_error_by_decade"]
        groups_true = age_group_of(a[known_a], FAIRFACE_AGE_EDGES)
        groups_pred = age_group_of(pa[known_a], FAIRFACE_AGE_EDGES)
        out["age_group_acc"] = round(float((groups_true == groups_pred).mean()), 4)
    return out


def first_face(faces) -> dict | None:
    """The largest face's answers (a labelled photo shows one person)."""
    if not faces:
        return None
    f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return {"gender": f.gender, "ethnicity": f.ethnicity, "age": f.age}


class TeacherProbe:
    """The distillation teacher's own answers, scored like a model: MTCNN finds the face, dlib
    embeds it (``faceattr.teacher``), and the linear probes fitted on the cached embeddings of
    the training faces answer (``--model teacher:CACHE.npz``). It has no 48x48 input, so its
    canonical row is its probe on the originals (results/teacher_dlib.json)."""

    backend = "dlib"
    size = 0
    gray = False

    def __init__(self, cache: Path, prepared) -> None:
        from faceattr.align import FaceDetector
        from faceattr.teacher import DlibTeacher, fit_probes

        with np.load(cache) as z:
            where = {str(i): n for n, i in enumerate(prepared.data.ids)}
            rows = np.array([where.get(str(i), -1) for i in z["ids"]])
            keep = z["has"] & (rows >= 0) & (prepared.split[np.maximum(rows, 0)] == "train")
            emb, rows = z["embedding"][keep].astype(np.float32), rows[keep]
        d = prepared.data
        self.probes = fit_probes(emb, d.gender[rows], d.ethnicity[rows], d.age[rows])
        self.detector, self.teacher = FaceDetector(), DlibTeacher()

    def predict(self, source) -> list:
        from types import SimpleNamespace

        from faceattr.imageio import load_image
        from faceattr.labels import CLASS_NAMES

        image = load_image(source) if isinstance(source, str) else Image.fromarray(source)
        faces = []
        for det in self.detector.detect(image):
            p = self.probes.predict(self.teacher.embed(np.asarray(image), det.box)[None])
            faces.append(
                SimpleNamespace(
                    box=det.box,
                    gender=dict(zip(CLASS_NAMES["gender"], p["gender_prob"][0].tolist())),
                    ethnicity=dict(zip(CLASS_NAMES["ethnicity"], p["ethnicity_prob"][0].tolist())),
                    age=float(p["age"][0]),
                )
            )
        return faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="the model's name in results/wild.json")
    ap.add_argument(
        "--model",
        default="pretrained",
        help="run folder, checkpoint, .onnx file, `pretrained`, or teacher:CACHE.npz (the teacher's probes)",
    )
    ap.add_argument("--split", choices=["val", "test"], default="test", help="val decides, test only reports")
    ap.add_argument("--data", type=Path, default=Path("prepared/kaggle48"), help="the canonical prepared table")
    ap.add_argument(
        "--canonical",
        type=Path,
        help="the same rows at the model's input (tools/originals_prepared.py), for a model whose input is not --data's",
    )
    ap.add_argument("--archive", type=Path, default=Path("../shared/data/UTKFace.tar.gz"))
    ap.add_argument("--frl", type=Path, default=Path("../shared/data/frl244"))
    ap.add_argument("--per-cell", type=int, default=300, help="photos per corruption and severity (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/wild.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    prepared = load_prepared(args.data)
    if args.model.startswith("teacher:"):
        predictor = TeacherProbe(Path(args.model.split(":", 1)[1]), prepared)
    else:
        predictor = load_predictor(None if args.model == "pretrained" else args.model)
    mask = prepared.split == args.split
    part, sha = prepared.data.subset(mask), prepared.sha[mask]
    result: dict = {"model": args.model, "split": args.split, "backend": predictor.backend}
    if predictor.size:  # the teacher's probes (size 0) read the originals, not a model input
        result["input"] = f"{predictor.size} px {'gray' if predictor.gray else 'RGB'}"
    trained = Path(args.model) / "metrics.json"
    if trained.is_file():  # a run folder: what training it cost, and what it changed from the defaults
        m = json.loads(trained.read_text())
        result["training"] = {
            "epochs_run": m.get("epochs_run"),
            "train_minutes": m.get("train_minutes"),
            "device": m.get("device"),
            "config": {
                k: m["config"][k]
                for k in (
                    "width",
                    "stem",
                    "epochs",
                    "augment",
                    "seed",
                    "teacher",
                    "teacher_embed_weight",
                    "teacher_soft_weight",
                    "age_balance",
                    "init_from",
                    "lr",
                )
                if k in m.get("config", {})
            },
        }

    print("canonical faces ...", file=sys.stderr)
    canon = part
    if args.canonical is not None:
        other = load_prepared(args.canonical)
        if not np.array_equal(other.data.ids, prepared.data.ids):
            sys.exit(f"--canonical {args.canonical}: its rows are not those of --data {args.data}")
        canon = other.data.subset(other.split == args.split)  # rows without an original are excluded there
        result["canonical_data"] = str(args.canonical)
    if predictor.size == canon.size and predictor.gray == (canon.channels == 1):
        answers = predictor.attributes(canon.images)
        result["canonical"] = scores(canon.gender, canon.ethnicity, canon.age, answers)
    else:  # another input: the canonical faces go through the photo path instead (UTK-C clean row)
        result["canonical"] = None

    print("UTK-C ...", file=sys.stderr)
    files = utk_files(args.archive)
    matched = match_rows(part, sha, files)
    have = np.flatnonzero([m is not None for m in matched])
    pick = np.sort(np.random.default_rng(args.seed).choice(have, min(args.per_cell, len(have)), replace=False))
    labels = part.gender[pick], part.ethnicity[pick], part.age[pick]
    originals = [np.asarray(Image.open(io.BytesIO(files[matched[i]])).convert("RGB")) for i in pick]
    keys = [matched[i] for i in pick]

    def run(images) -> dict:
        return scores(*labels, [first_face(predictor.predict(im)) for im in images])

    utkc = {"clean": run(originals)}
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            images = [
                corrupt(im, name, severity, photo_seed(args.seed, k, name, severity)) for im, k in zip(originals, keys)
            ]
            utkc[f"{name}/{severity}"] = run(images)
    cells = [v for k, v in utkc.items() if k != "clean"]
    utkc["mean_over_corruptions"] = {
        metric: round(float(np.mean([c[metric] for c in cells if c.get(metric) is not None])), 4)
        for metric in ("found", "gender_acc", "ethnicity_acc", "ethnicity_macro_f1", "age_mae", "age_group_acc")
    }
    result["utk_c"] = utkc

    print("frl244 ...", file=sys.stderr)
    rows = list(csv.DictReader(open(args.frl / "labels.csv")))

    def code(value: str) -> int:
        return int(value) if value != "" else -1

    frl_answers = [first_face(predictor.predict(str(args.frl / r["file"]))) for r in rows]
    result["frl244"] = scores(
        [code(r["gender"]) for r in rows],
        [code(r["ethnicity"]) for r in rows],
        [float(r["age"]) if r["age"] else 0.0 for r in rows],
        frl_answers,
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc.setdefault("variants", {})[f"{args.name}/{args.split}"] = result
    doc["yardstick"] = {
        "utk_c": f"{len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities on {len(pick)} seeded photos of the split",
        "corruptions_also_in_training": list(ALSO_IN_TRAINING),
        "age_groups": "FairFace: 0-2, 3-9, 10-19, ..., 60-69, 70+",
        "signed_error": "mean of predicted - true age, by decade of true age",
        "max_age": AGE_MAX,
    }
    write_json(doc, args.out)
    m = result["utk_c"]["mean_over_corruptions"]
    print(f"{args.name}/{args.split}: canonical {result['canonical']}; UTK-C mean {m}; frl244 {result['frl244']}")


if __name__ == "__main__":
    main()
