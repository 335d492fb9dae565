"""Metrics, computed with scikit-learn and returned as plain JSON-ready dicts: classification
metrics for the gender and ethnicity heads, age metrics for the age head, and the validation
score that picks best.pt."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    roc_auc_score,
    root_mean_squared_error,
)

from faceattr.age import CHILD_AGE, age_to_bin, bin_labels
from faceattr.labels import ETHNICITIES, GENDERS

DECADES = 8  # 0-9, ..., 60-69, 70+


def decade_errors(pred: np.ndarray, true: np.ndarray) -> dict:
    """MAE, balanced MAE and the signed error per decade of true age (70+ pooled)."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    decade = np.minimum(true // 10, DECADES - 1).astype(int)
    present = [d for d in range(DECADES) if (decade == d).any()]
    label = {d: f"{10 * d}-{10 * d + 9}" if d < DECADES - 1 else f"{10 * d}+" for d in present}
    return {
        "mae": round(float(np.abs(pred - true).mean()), 4),
        "balanced_mae": round(float(np.mean([np.abs(pred - true)[decade == d].mean() for d in present])), 4),
        "signed_error_by_decade": {label[d]: round(float((pred - true)[decade == d].mean()), 2) for d in present},
    }


def head_metrics(y_true: np.ndarray, prob: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    y_true: int (N,); prob: float (N, K) class probabilities. Rows with label -1 (unknown)
    are ignored. Binary heads also get ROC AUC for the positive (index 1) class.
    """
    known = y_true >= 0
    y, p = y_true[known], prob[known]
    pred = p.argmax(1)
    labels = list(range(len(class_names)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(support[k])}
            for k, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }
    if len(class_names) == 2 and len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y, p[:, 1]))
    return out


def selection_score(metrics: dict) -> float:
    """Validation score for early stopping and best.pt: the mean of gender accuracy, ethnicity
    macro-F1 (so minority ethnicities count as much as the majority) and, with an age head,
    age CS@5 (share within 5 years) over the tasks present; all lie in [0, 1]."""
    parts = []
    if "gender" in metrics:
        parts.append(metrics["gender"]["accuracy"])
    if "ethnicity" in metrics:
        parts.append(metrics["ethnicity"]["macro_f1"])
    if "age" in metrics:
        parts.append(metrics["age"]["cs5"])
    return float(np.mean(parts))


def _group_mae(err: np.ndarray, mask: np.ndarray) -> dict:
    # An empty group gets mae None (JSON null) rather than NaN, which JSON cannot hold.
    n = int(mask.sum())
    return {"n": n, "mae": float(err[mask].mean()) if n else None}


def age_metrics(
    true_age: np.ndarray,
    pred_age: np.ndarray,
    edges: np.ndarray,
    pred_bin: np.ndarray | None = None,
    gender: np.ndarray | None = None,
    ethnicity: np.ndarray | None = None,
) -> dict:
    """JSON-ready age metrics: MAE, RMSE, CS@5 and MAE by true bin, gender, ethnicity, child/not.

    true_age, pred_age: (N,); edges: (K + 1,) from ``bin_edges``. With pred_bin (N,) also the
    bin accuracy, the K x K bin confusion (rows true) and the MAE of samples whose bin was
    right vs wrong. gender/ethnicity are label codes; -1 (unknown) is left out of their groups.
    """
    true_age = np.asarray(true_age, dtype=float)
    pred_age = np.asarray(pred_age, dtype=float)
    err = np.abs(pred_age - true_age)
    true_bin = age_to_bin(true_age, edges)
    out = {
        "n": int(len(true_age)),
        "mae": float(mean_absolute_error(true_age, pred_age)),
        "rmse": float(root_mean_squared_error(true_age, pred_age)),
        "cs5": float(np.mean(err <= 5)),
        "bin_edges": [int(e) for e in edges],
        "per_bin": {label: _group_mae(err, true_bin == k) for k, label in enumerate(bin_labels(edges))},
        "children": {
            f"under_{CHILD_AGE}": _group_mae(err, true_age < CHILD_AGE),
            f"{CHILD_AGE}_plus": _group_mae(err, true_age >= CHILD_AGE),
        },
    }
    if pred_bin is not None:
        pred_bin = np.asarray(pred_bin)
        right = pred_bin == true_bin
        out["bin_accuracy"] = float(accuracy_score(true_bin, pred_bin))
        out["bin_confusion"] = confusion_matrix(true_bin, pred_bin, labels=list(range(len(edges) - 1))).tolist()
        for key, mask in (("correct_bin", right), ("wrong_bin", ~right)):
            out[key] = {**_group_mae(err, mask), "share": float(mask.mean())}
    for key, codes, names in (("per_gender", gender, GENDERS), ("per_ethnicity", ethnicity, ETHNICITIES)):
        if codes is not None:
            codes = np.asarray(codes)
            out[key] = {name: _group_mae(err, codes == c) for c, name in enumerate(names)}
    return out
