"""The shipped model's answers on the canonical validation split, packaged beside its weights
(weights/NAME.validation.npz, NAME the default model): what `faceattr audit` corrects its population estimates
with (confusion matrices of the classifier's errors). Validation only: the test split stays
for measuring the estimates (bench/audit_accuracy.py).

    python tools/validation_predictions.py --data prepared/kaggle48
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from faceattr.atomic import atomic_path
from faceattr.cache import load_prepared
from faceattr.predictor import Predictor
from faceattr.pretrained import packaged_file
from faceattr.release import CANONICAL_SPLIT
from faceattr.split import split_hash


def model_answers(predictor: Predictor, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities and ages of the model on ready 48x48 chips, as float32 arrays."""
    out = predictor.attributes(images)
    return {
        "p_gender": np.array([[f["gender"][c] for c in f["gender"]] for f in out], np.float32),
        "p_ethnicity": np.array([[f["ethnicity"][c] for c in f["ethnicity"]] for f in out], np.float32),
        "age_pred": np.array([f["age"] for f in out], np.float32),
        "age_low": np.array([f["age_range"][0] for f in out], np.float32),
        "age_high": np.array([f["age_range"][1] for f in out], np.float32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("prepared/kaggle48"), help="the canonical prepared Kaggle table")
    ap.add_argument("--out", type=Path, default=packaged_file(suffix=".onnx").with_suffix(".validation.npz"))
    args = ap.parse_args()
    prepared = load_prepared(args.data)
    if split_hash(prepared.data.ids, prepared.split) != CANONICAL_SPLIT:
        raise SystemExit(f"{args.data}: not the canonical split {CANONICAL_SPLIT}")
    val = prepared.part("val")
    answers = model_answers(Predictor.from_pretrained(), val.images)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        gender=val.gender.astype(np.int8),
        ethnicity=val.ethnicity.astype(np.int8),
        age=val.age.astype(np.int16),
        split_hash=np.array(CANONICAL_SPLIT),
        **answers,
    )
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    print(f"wrote {args.out}: {len(val)} validation faces ({len(buffer.getvalue()) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
