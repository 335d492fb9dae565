"""The age table of record (results/age_cpu60.json): every age model trained on the canonical
split, evaluated on its validation and test faces, with the CPU minutes each one cost.

Two ways to reuse the multitask backbone are compared at (nearly) equal CPU time:
- fine-tune: the cpu60 multitask run (gender + ethnicity), then a short fine-tune with the age
  head added (`bench/age_compare.py`); its cost is both trainings together;
- joint: all three tasks trained together from scratch (`faceattr train age` without --from)
  under the same wall-clock budget.
The default is chosen by validation MAE of the two-stage head with its fitted routing
temperature, the way `faceattr train` ships it (never by test). Each model is
also scored with test-time flipping (mean of a face and its mirror), and the two-stage head
also with a routing temperature on its bin probabilities chosen on validation; each its own row.

python bench/age_cpu60.py --data prepared/kaggle48 --base runs/cpu60 \
    --finetuned runs/age/age-two_stage runs/age/age-direct runs/age/age-dex --joint runs/age/joint-two_stage
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from faceattr.age import fit_routing_temperature, soft_route
from faceattr.atomic import write_json
from faceattr.cache import load_prepared
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.labels import CLASS_NAMES
from faceattr.metrics import age_metrics, head_metrics
from faceattr.tasks import predicted_bin
from faceattr.train import predict_outputs


def score(ckpt: dict, model, prepared, split: str, flip: bool, routing_t: float | None = None) -> dict:
    """Age metrics and gender/ethnicity accuracy of one model on one split.

    The two-stage head gets three rows: hard routing, plain soft routing (T = 1) and soft
    routing at the temperature fitted on validation (``routing_t`` None: fit it here, on
    this split, which must then be validation; for test pass the validation value in)."""
    part = prepared.part(split)
    spec = age_spec(ckpt)
    pre = ckpt["preprocessing"]
    pred = predict_outputs(model, part.images, pre["mean"], pre["std"], "cpu", spec, 512, flip=flip)
    edges = np.asarray(spec.edges)
    groups = {"gender": part.gender, "ethnicity": part.ethnicity}
    out = {t: head_metrics(getattr(part, t).astype(np.int64), pred[t], CLASS_NAMES[t]) for t in CLASS_NAMES}
    if spec.head == "two_stage":
        prob, ages = pred["age_bin_prob"], pred["age_bin_ages"]
        pred_bin = predicted_bin(pred, spec)
        if routing_t is None:
            routing_t = fit_routing_temperature(prob, ages, part.age)
        out["age_soft"] = age_metrics(part.age, soft_route(prob, ages, 1.0), edges, pred_bin, **groups)
        out["age_hard"] = age_metrics(part.age, pred["age_hard"], edges, pred_bin, **groups)
        out["age_soft_tempered"] = age_metrics(part.age, soft_route(prob, ages, routing_t), edges, pred_bin, **groups)
        out["routing_temperature"] = routing_t
    else:
        out["age"] = age_metrics(part.age, pred["age"], edges, predicted_bin(pred, spec), **groups)
    return out


def row(model: str, routing: str, flip: bool, minutes: float, val: dict, test: dict, key: str) -> dict:
    age = test[key]
    return {
        "model": model,
        "routing": routing,
        "flip_tta": flip,
        "cpu_train_minutes": round(minutes, 2),
        "val_mae": val[key]["mae"],
        "mae": age["mae"],
        "rmse": age["rmse"],
        "cs5": age["cs5"],
        "bin_accuracy": age.get("bin_accuracy"),
        "mae_children_under_13": age["children"]["under_13"]["mae"],
        "mae_correct_bin": age.get("correct_bin", {}).get("mae"),
        "mae_wrong_bin": age.get("wrong_bin", {}).get("mae"),
        "gender_acc": test["gender"]["accuracy"],
        "ethnicity_acc": test["ethnicity"]["accuracy"],
        "ethnicity_macro_f1": test["ethnicity"]["macro_f1"],
    }


def minutes(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["train_minutes"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    p.add_argument("--base", type=Path, default=Path("runs/cpu60"), help="the multitask run the fine-tunes start from")
    p.add_argument("--finetuned", type=Path, nargs="+", default=[])
    p.add_argument("--joint", type=Path, nargs="+", default=[])
    p.add_argument("--out", type=Path, default=Path("results/age_cpu60.json"))
    args = p.parse_args()
    prepared = load_prepared(args.data)
    base_minutes = minutes(args.base)
    runs = [(r, "fine-tune", base_minutes + minutes(r)) for r in args.finetuned]
    runs += [(r, "joint", minutes(r)) for r in args.joint]
    table, details = [], {}
    for run, how, cost in runs:
        ckpt = load_checkpoint(run)
        model = model_from_checkpoint(ckpt)
        head = ckpt["age"]["head"]
        for flip in (False, True):
            val = score(ckpt, model, prepared, "val", flip)
            test = score(ckpt, model, prepared, "test", flip, val.get("routing_temperature"))
            name = f"{head} ({how})"
            keys = [("-", "age")]
            if head == "two_stage":
                fitted = f"soft, T={val['routing_temperature']} (fitted on val)"
                keys = [("hard", "age_hard"), ("soft, T=1", "age_soft"), (fitted, "age_soft_tempered")]
            for routing, key in keys:
                table.append(row(name, routing, flip, cost, val, test, key))
            details[f"{run.name}{' flip' if flip else ''}"] = {"run": str(run), "val": val, "test": test}
            print(
                f"{name:28s} flip={flip!s:5s} "
                + "  ".join(f"{r['routing']} MAE {r['mae']:.2f}" for r in table[-len(keys) :])
            )
    two_stage = [
        r for r in table if r["model"].startswith("two_stage") and "fitted" in r["routing"] and not r["flip_tta"]
    ]
    default = min(two_stage, key=lambda r: r["val_mae"])["model"] if two_stage else None
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "split": "test",
            "split_hash": prepared.manifest["split_hash"],
            "base_multitask_run": str(args.base),
            "base_multitask_minutes": base_minutes,
            "default_by_validation_mae": default,
            "table": table,
            "details": details,
        },
        args.out,
    )
    print(f"default (lowest validation MAE, two-stage, fitted routing): {default}; wrote {args.out}")


if __name__ == "__main__":
    main()
