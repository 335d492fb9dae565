"""Classification metrics for the gender and ethnicity heads, computed with scikit-learn from
true labels and predicted probabilities, returned as plain JSON-ready dicts."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from faceattr.dataset import ETHNICITIES, GENDERS

CLASS_NAMES = {"gender": GENDERS, "ethnicity": ETHNICITIES}


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
