"""How right are `faceattr audit`'s population estimates? Collections of --size faces are drawn
from the canonical TEST split with known, deliberately skewed make-ups (80 % male; 40 % Black;
30 % aged 60+; uniform ethnicity; the test split's own make-up), --draws times each; every
estimator (faceattr.quantify: cc, pcc, acc, pacc, em) is corrected with the packaged
VALIDATION answers, as the audit does, and scored against the drawn collection's true shares:
mean absolute error in points, and how often the 95 % interval holds the truth.

The faces are the 48x48 chips of the table (the audit's photo path adds detection and
alignment; bench/external_utk.py measures what that costs).

python bench/audit_accuracy.py --data prepared/kaggle48 --out results/audit_accuracy.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from faceattr.atomic import write_json
from faceattr.audit import load_validation, target_probs
from faceattr.cache import load_prepared
from faceattr.labels import ETHNICITIES, GENDERS
from faceattr.predictor import Predictor
from faceattr.quantify import ESTIMATORS, FAIRFACE_AGE_EDGES, FAIRFACE_AGE_GROUPS, age_group_of, estimate

# scenario -> (task whose make-up is set, {class index: share}; the other classes keep their
# relative test-split frequencies)
SCENARIOS = {
    "80% male": ("gender", {0: 0.8}),
    "40% Black": ("ethnicity", {1: 0.4}),
    "30% aged 60+": ("age_60plus", {1: 0.3}),
    "uniform ethnicity": ("ethnicity", {k: 0.2 for k in range(5)}),
    "as the test split": (None, {}),
}
TARGETS = {"gender": GENDERS, "ethnicity": ETHNICITIES, "age_group": FAIRFACE_AGE_GROUPS}


def draw(labels: np.ndarray, shares: dict[int, float], size: int, rng) -> np.ndarray:
    """Indices of ``size`` faces whose ``labels`` follow ``shares`` (unset classes in their
    natural proportions), drawn with replacement within each class."""
    classes = np.unique(labels)
    natural = {c: float((labels == c).mean()) for c in classes}
    rest = 1 - sum(shares.values())
    free = sum(natural[c] for c in classes if c not in shares)
    want = {c: shares.get(c, rest * natural[c] / free if free else 0.0) for c in classes}
    counts = rng.multinomial(size, [want[c] for c in classes])
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), n) for c, n in zip(classes, counts) if n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("prepared/kaggle48"), help="the canonical prepared table")
    ap.add_argument("--size", type=int, default=2000, help="faces per drawn collection (default 2000)")
    ap.add_argument("--draws", type=int, default=25, help="collections per scenario (default 25)")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates per estimate (default 100)")
    ap.add_argument("--out", type=Path, default=Path("results/audit_accuracy.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    test = load_prepared(args.data).part("test")
    answers = Predictor.from_pretrained().attributes(test.images)
    faces = {
        "p_gender": np.array([list(a["gender"].values()) for a in answers]),
        "p_ethnicity": np.array([list(a["ethnicity"].values()) for a in answers]),
        "age": np.array([a["age"] for a in answers]),
        "age_low": np.array([a["age_range"][0] for a in answers]),
        "age_high": np.array([a["age_range"][1] for a in answers]),
    }
    truth = {
        "gender": test.gender.astype(int),
        "ethnicity": test.ethnicity.astype(int),
        "age_group": age_group_of(test.age, FAIRFACE_AGE_EDGES),
        "age_60plus": (test.age >= 60).astype(int),
    }
    val = load_validation()
    probs = {t: target_probs(faces, t) for t in TARGETS}
    val_probs = {t: target_probs(val, t) for t in TARGETS}
    val_truth = {"gender": val["gender"], "ethnicity": val["ethnicity"], "age_group": val["age_group"]}
    rng = np.random.default_rng(0)
    results = {}
    for scenario, (task, shares) in SCENARIOS.items():
        print(f"{scenario} ...", file=sys.stderr)
        errors = {t: {e: [] for e in ESTIMATORS} for t in TARGETS}
        covered = {t: {e: [] for e in ESTIMATORS} for t in TARGETS}
        for d in range(args.draws):
            idx = draw(truth[task], shares, args.size, rng) if task else rng.choice(len(test), args.size)
            for target, names in TARGETS.items():
                true_share = np.bincount(truth[target][idx], minlength=len(names)) / len(idx)
                est = estimate(probs[target][idx], val_probs[target], val_truth[target], n_boot=args.bootstrap, seed=d)
                for name, e in est.items():
                    errors[target][name].append(np.abs(np.array(e["share"]) - true_share).mean() * 100)
                    inside = (np.array(e["low"]) <= true_share + 1e-12) & (true_share <= np.array(e["high"]) + 1e-12)
                    covered[target][name].append(inside.mean())
        results[scenario] = {
            target: {
                name: {
                    "mean_abs_error_points": round(float(np.mean(errors[target][name])), 2),
                    "max_abs_error_points": round(float(np.max(errors[target][name])), 2),
                    "coverage_95": round(float(np.mean(covered[target][name])), 3),
                }
                for name in ESTIMATORS
            }
            for target in TARGETS
        }
    overall = {
        target: {
            name: {
                "mean_abs_error_points": round(
                    float(np.mean([results[s][target][name]["mean_abs_error_points"] for s in SCENARIOS])), 2
                ),
                "coverage_95": round(float(np.mean([results[s][target][name]["coverage_95"] for s in SCENARIOS])), 3),
            }
            for name in ESTIMATORS
        }
        for target in TARGETS
    }
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "faces_per_collection": args.size,
            "draws_per_scenario": args.draws,
            "bootstrap": args.bootstrap,
            "error": "mean over classes of |estimated share - true share|, in percentage points, averaged over draws",
            "coverage": "share of (class, draw) pairs whose 95 % interval holds the true share",
            "scenarios": results,
            "overall": overall,
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.out,
    )
    for target in TARGETS:
        line = ", ".join(
            f"{n} {overall[target][n]['mean_abs_error_points']:.2f} pt / {overall[target][n]['coverage_95']:.0%}"
            for n in ESTIMATORS
        )
        print(f"{target}: {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
