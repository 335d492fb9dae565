"""Evaluation of a trained run on one split: predictions, bootstrap confidence intervals,
calibration (ECE, temperature scaling) and per-group (fairness) tables, as plain functions on
arrays. Every interval comes from one seeded matrix of resample weights, so a group's value and
the gap between groups are measured on the same resamples. ``faceattr.report`` renders them."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import average_precision_score

from faceattr.age import bin_labels
from faceattr.cache import Prepared, load_prepared
from faceattr.checkpoint import age_spec
from faceattr.inputerror import InputError
from faceattr.labels import AGE_BAND_NAMES, AGE_MAX, AGE_MIN, CLASS_NAMES, SPLITS
from faceattr.metrics import age_metrics, head_metrics
from faceattr.split import age_band, split_hash
from faceattr.tasks import predicted_bin
from faceattr.train import predict_outputs

N_BOOT = 1000
CI_LEVEL = 0.95
AGE_INTERVAL_COVERAGE = 0.8  # the age ranges faceattr prints should hold the true age 4 times in 5
ECE_BINS = 15
CS_MAX_YEARS = 20  # the cumulative score curve runs over k = 0..20 years
PROB_FLOOR = 1e-12  # log(0) guard: float32 softmax can underflow for very confident faces

# A weighted metric maps resample weights (B, n) and per-face arrays (n,) to one value per resample (B,).
WeightedMetric = Callable[..., np.ndarray]


@dataclass
class SplitPredictions:
    """True labels and predictions for the faces of one split, index-aligned (N faces).

    prob: head -> (N, K) class probabilities; age_pred: routing ('soft', and 'hard' for the
    two-stage head) -> (N,) years; age_bin_pred: (N,) predicted age bin (argmax of the bin
    classifier for the two-stage head, the bin of the predicted age otherwise).
    """

    ids: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray
    age: np.ndarray
    prob: dict[str, np.ndarray]
    age_pred: dict[str, np.ndarray]
    age_bin_pred: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


def resample_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Percentile-bootstrap resamples as weights: (n_boot, n) float32, row b holding how often
    each face is drawn in resample b (n draws with replacement). A weighted metric over these
    rows equals the metric over the resampled faces, computed for all rows in one matmul."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A resample that draws no face of a small group has no value: NaN, skipped by the percentiles.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_mean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Weighted mean of x (n,) under each row of w (B, n): accuracy (x = correct), MAE (x = |error|)."""
    w = np.atleast_2d(w)
    return _ratio(w @ np.asarray(x, dtype=w.dtype), w.sum(1))


def weighted_macro_f1(w: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 over all ``n_classes`` (a class never true nor predicted scores 0, as
    scikit-learn's ``f1_score(labels=range(K), zero_division=0)``), per row of w (B, n)."""
    w = np.atleast_2d(w)
    k = n_classes
    cell = np.asarray(y, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64)
    one_hot = np.zeros((len(cell), k * k), dtype=w.dtype)
    one_hot[np.arange(len(cell)), cell] = 1
    cm = (w @ one_hot).reshape(-1, k, k)  # (B, true, pred) weighted confusion matrices
    tp = np.diagonal(cm, axis1=1, axis2=2)
    den = cm.sum(1) + cm.sum(2)  # 2 tp + fp + fn
    f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
    return np.where(w.sum(1) > 0, f1.mean(1), np.nan)


def weighted_roc_auc(w: np.ndarray, score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties counted half) of ``score`` for the positive class y == 1,
    per row of w (B, n). Faces are sorted once; each resample only re-weights them."""
    w = np.atleast_2d(w)
    order = np.argsort(score, kind="stable")
    s, positive = np.asarray(score)[order], np.asarray(y)[order] == 1
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # one block per distinct score
    ws = w[:, order]
    pos = np.add.reduceat(ws * positive, starts, axis=1).astype(np.float64)
    neg = np.add.reduceat(ws * ~positive, starts, axis=1).astype(np.float64)
    neg_below = np.cumsum(neg, 1) - neg
    return _ratio((pos * (neg_below + 0.5 * neg)).sum(1), pos.sum(1) * neg.sum(1))


def percentile_ci(boot: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    """The percentile interval of bootstrap values (B,), NaNs (empty resamples) left out."""
    boot = np.asarray(boot, dtype=float)
    if not np.isfinite(boot).any():
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(boot, [tail, 100 - tail])
    return [float(lo), float(hi)]


def estimate(metric: WeightedMetric, weights: np.ndarray, *arrays: np.ndarray) -> tuple[dict, np.ndarray]:
    """``({'value': point estimate, 'ci': [lo, hi]}, bootstrap values (B,))`` of a weighted metric
    on per-face arrays (n,) with resample weights (B, n)."""
    n = len(arrays[0])
    value = float(metric(np.ones((1, n)), *arrays)[0])
    boot = metric(weights, *arrays)
    return {"value": None if np.isnan(value) else value, "ci": percentile_ci(boot)}, boot


def largest_gap(values: dict[str, float | None], boot: dict[str, np.ndarray] | None = None) -> dict | None:
    """The largest difference between groups (best minus worst value, whatever the metric's
    direction) and which groups give it; with each group's bootstrap values (B,) on the same
    resamples, also its 95 % interval. None with fewer than two groups that have a value."""
    known = {g: v for g, v in values.items() if v is not None and np.isfinite(v)}
    if len(known) < 2:
        return None
    hi, lo = max(known, key=known.get), min(known, key=known.get)
    out = {"value": known[hi] - known[lo], "max_group": hi, "min_group": lo, "ci": None}
    if boot is not None:
        stack = np.stack([boot[g] for g in known])  # (G, B)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no face of any group
            gaps = np.nanmax(stack, 0) - np.nanmin(stack, 0)
        out["ci"] = percentile_ci(gaps)
    return out


def reliability(prob: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability diagram data: equal-width confidence bins over [0, 1] with each
    bin's face count, mean confidence and accuracy (None where empty). prob (N, K), y (N,)."""
    prob = np.asarray(prob, dtype=float)
    conf, correct = prob.max(1), prob.argmax(1) == np.asarray(y)
    k = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(k, minlength=n_bins)
    conf_sum = np.bincount(k, conf, minlength=n_bins)
    acc_sum = np.bincount(k, correct.astype(float), minlength=n_bins)
    nonempty = count > 0

    def per_bin(total: np.ndarray) -> list[float | None]:
        return [float(t / c) if c else None for t, c in zip(total, count)]

    return {
        "edges": np.linspace(0, 1, n_bins + 1).tolist(),
        "count": count.tolist(),
        "confidence": per_bin(conf_sum),
        "accuracy": per_bin(acc_sum),
        "ece": float(np.abs(acc_sum - conf_sum)[nonempty].sum() / max(len(conf), 1)),
    }


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the face-weighted mean gap between accuracy and confidence over equal-width
    confidence bins (Guo et al. 2017). 0 for a calibrated model. prob (N, K), y (N,)."""
    return reliability(prob, y, n_bins)["ece"]


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(prob) / T): the probabilities the logits / T would give (log-probs differ
    from the logits by a per-face constant, which softmax ignores). prob (N, K)."""
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), PROB_FLOOR, None))
    return softmax(logp / temperature, axis=1)


def nll(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    prob = np.asarray(prob, dtype=np.float64)
    return float(-np.log(np.clip(prob[np.arange(len(prob)), np.asarray(y)], PROB_FLOOR, None)).mean())


def fit_temperature(prob: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(log(prob) / T) on (prob, y); searched
    on log T in [log 0.05, log 20] so it stays positive. T > 1 softens an over-confident model."""
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), PROB_FLOOR, None))
    rows, y = np.arange(len(logp)), np.asarray(y)

    def objective(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(objective, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def calibrate(val_prob: np.ndarray, val_y: np.ndarray, prob: np.ndarray, y: np.ndarray) -> dict:
    """Temperature fitted on the validation faces, and ECE / NLL before and after it on the
    validation faces and on the evaluated split, with the evaluated split's reliability data."""
    known_val, known = val_y >= 0, y >= 0
    val_prob, val_y, prob, y = val_prob[known_val], val_y[known_val], prob[known], y[known]
    t = fit_temperature(val_prob, val_y)
    out: dict = {"temperature": t}
    for name, (p, labels) in {"val": (val_prob, val_y), "eval": (prob, y)}.items():
        scaled = apply_temperature(p, t)
        out[name] = {
            "n": int(len(labels)),
            "ece_before": expected_calibration_error(p, labels),
            "ece_after": expected_calibration_error(scaled, labels),
            "nll_before": nll(p, labels),
            "nll_after": nll(scaled, labels),
        }
    out["reliability_before"] = reliability(prob, y)
    out["reliability_after"] = reliability(apply_temperature(prob, t), y)
    return out


def checkpoint_tasks(ckpt: dict) -> list[str]:
    """The tasks a checkpoint predicts; checkpoints older than the age head record no tasks and
    predict what their class heads (and age spec) say."""
    if ckpt.get("tasks"):
        return list(ckpt["tasks"])
    heads = ckpt["model_args"]["heads"]
    return [t for t in CLASS_NAMES if t in heads] + (["age"] if ckpt.get("age") else [])


def find_data_dir(run_dir: Path, ckpt: dict, search: tuple[Path, ...] = ()) -> Path:
    """The prepared-data folder a run was trained on: the folder its checkpoint names, then
    ``RUN/data`` and ``RUN/../data`` (the layout of ``faceattr run``), then the folders under
    ``search`` (none by default: where the command runs from decides nothing); the first whose
    manifest has the checkpoint's split hash and input hash wins."""
    run_dir = Path(run_dir)
    named = (ckpt.get("data") or {}).get("dir")
    candidates = ([Path(named)] if named else []) + [run_dir / "data", run_dir.parent / "data"]
    for root in search:
        if Path(root).is_dir():
            candidates += sorted(p for p in Path(root).iterdir() if p.is_dir())
    want_input = (ckpt.get("data") or {}).get("input_sha256")
    for folder in candidates:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("split_hash") != ckpt.get("split_hash"):
            continue
        if want_input and manifest.get("input", {}).get("sha256") not in (None, want_input):
            continue
        if (folder / "data.npz").is_file():
            return folder
    raise InputError(
        f"{run_dir}: cannot find the prepared data it was trained on (split {ckpt.get('split_hash')}); "
        "pass --data PREPARED_DIR"
    )


def load_split_data(data_dir: str | Path, ckpt: dict, split: str, needs: tuple[str, ...] = ("val",)) -> Prepared:
    """The prepared data of a run, checked before any face of it is scored or shown: refused when
    ``split`` is unknown, when the folder's split is not the one the run was trained on (its test
    faces could be training faces of the model), when ``split`` or a split in ``needs`` (the
    validation faces calibration is fitted on) is empty, or when its faces are not the size and
    channels the model expects."""
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    prepared = load_prepared(data_dir)
    found, want = split_hash(prepared.data.ids, prepared.split), ckpt.get("split_hash")
    if found != want:
        raise InputError(
            f"{data_dir}: its split ({found}) differs from the one the model was trained on ({want}); "
            "use the prepared data of its training run"
        )
    for name in dict.fromkeys((split, *needs)):
        if not (prepared.split == name).any():
            raise InputError(f"{data_dir}: the {name!r} split is empty")
    shape = list(prepared.data.images.shape[1:])
    pre = ckpt["preprocessing"]
    expected = [pre["size"], pre["size"]] + ([pre["channels"]] if pre["channels"] > 1 else [])
    if shape != expected:
        raise InputError(f"{data_dir}: faces are {shape}, the model expects {expected}")
    return prepared


def predict_split(
    model: torch.nn.Module,
    ckpt: dict,
    prepared: Prepared,
    split: str,
    device: torch.device | str,
    batch_size: int = 512,
) -> SplitPredictions:
    """Run the checkpoint's model over one split and collect labels and predictions."""
    part = prepared.part(split)
    pre = ckpt["preprocessing"]
    age = age_spec(ckpt)
    out = predict_outputs(model, part.images, pre["mean"], pre["std"], device, age, batch_size)
    age_pred, age_bin = {}, None
    if age is not None:
        age_pred["soft"] = out["age"]
        if "age_hard" in out:
            age_pred["hard"] = out["age_hard"]
        age_bin = predicted_bin(out, age)
    return SplitPredictions(
        ids=part.ids,
        gender=part.gender.astype(np.int64),
        ethnicity=part.ethnicity.astype(np.int64),
        age=part.age.astype(float),
        prob={t: out[t].astype(np.float64) for t in CLASS_NAMES if t in out},
        age_pred=age_pred,
        age_bin_pred=age_bin,
    )


def _metric_specs(pred: SplitPredictions) -> dict[str, tuple[WeightedMetric, tuple[np.ndarray, ...], np.ndarray]]:
    """Headline metric name -> (weighted metric, its per-face arrays, faces it applies to)."""
    specs: dict = {}
    if "gender" in pred.prob:
        p, y = pred.prob["gender"], pred.gender
        specs["gender_accuracy"] = (weighted_mean, ((p.argmax(1) == y).astype(float),), y >= 0)
        specs["gender_roc_auc"] = (weighted_roc_auc, (p[:, 1], y), y >= 0)
    if "ethnicity" in pred.prob:
        p, y = pred.prob["ethnicity"], pred.ethnicity
        k = p.shape[1]
        specs["ethnicity_accuracy"] = (weighted_mean, ((p.argmax(1) == y).astype(float),), y >= 0)
        specs["ethnicity_macro_f1"] = (
            lambda w, yy, pp: weighted_macro_f1(w, yy, pp, k),
            (np.maximum(y, 0), p.argmax(1)),
            y >= 0,
        )
    for routing, suffix in (("soft", ""), ("hard", "_hard")):
        if routing in pred.age_pred:
            err = np.abs(pred.age_pred[routing] - pred.age)
            specs[f"age_mae{suffix}"] = (weighted_mean, (err,), np.ones(len(err), bool))
            specs[f"age_cs5{suffix}"] = (weighted_mean, ((err <= 5).astype(float),), np.ones(len(err), bool))
    return specs


FAIRNESS_METRICS = ("gender_accuracy", "ethnicity_accuracy", "ethnicity_macro_f1", "age_mae", "age_cs5")


def headline_metrics(pred: SplitPredictions, weights: np.ndarray) -> dict[str, dict]:
    """Every headline metric of the split with its bootstrap interval: name -> {value, ci}."""
    out = {}
    for name, (metric, arrays, valid) in _metric_specs(pred).items():
        out[name], _ = estimate(metric, weights[:, valid], *(a[valid] for a in arrays))
    return out


def fairness_table(
    pred: SplitPredictions,
    weights: np.ndarray,
    codes: np.ndarray,
    names: tuple[str, ...],
    skip: tuple[str, ...] = (),
) -> dict:
    """The fairness metrics per group (faces with ``codes == k`` form group ``names[k]``), each
    with its interval, and per metric the largest gap between groups with its interval.

    ``skip`` names metrics that mean nothing within these groups (ethnicity macro-F1 inside one
    ethnicity, where only one class is true)."""
    specs = {m: s for m, s in _metric_specs(pred).items() if m in FAIRNESS_METRICS and m not in skip}
    groups: dict[str, dict] = {}
    points: dict[str, dict[str, float | None]] = {m: {} for m in specs}
    boots: dict[str, dict[str, np.ndarray]] = {m: {} for m in specs}
    for k, name in enumerate(names):
        mask = np.asarray(codes) == k
        row: dict = {"n": int(mask.sum())}
        for m, (metric, arrays, valid) in specs.items():
            sel = mask & valid
            if not sel.any():
                row[m] = None
                continue
            row[m], boots[m][name] = estimate(metric, weights[:, sel], *(a[sel] for a in arrays))
            points[m][name] = row[m]["value"]
        groups[name] = row
    gaps = {m: largest_gap(points[m], boots[m]) for m in specs}
    return {"groups": groups, "gaps": gaps, "metrics": list(specs)}


def cumulative_scores(err: np.ndarray, max_years: int = CS_MAX_YEARS) -> list[float]:
    """CS@k for k = 0..max_years: the share of faces whose absolute age error is at most k years."""
    err = np.asarray(err, dtype=float)
    return [float(np.mean(err <= k)) for k in range(max_years + 1)]


def evaluate_predictions(
    pred: SplitPredictions,
    val: SplitPredictions,
    age_edges: np.ndarray | None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """All metrics of the report for one split (JSON-ready): headline metrics with bootstrap
    intervals, per-class metrics and confusion matrices (scikit-learn, via faceattr.metrics),
    calibration (temperature fitted on ``val``), age metrics with soft and hard routing, and the
    fairness tables by ethnicity, gender and age band."""
    weights = resample_weights(len(pred), n_boot, seed)
    out: dict = {
        "n": len(pred),
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": CI_LEVEL, "method": "percentile, over faces"},
        "headline": headline_metrics(pred, weights),
    }
    for task, p in pred.prob.items():
        y = getattr(pred, task)
        m = head_metrics(y, p, CLASS_NAMES[task])
        m["confusion_normalized"] = _row_normalised(m["confusion"])
        if task == "gender" and "roc_auc" in m:
            m["average_precision"] = float(average_precision_score(y[y >= 0] == 1, p[y >= 0, 1]))
        out[task] = m
    out["calibration"] = {
        task: calibrate(val.prob[task], getattr(val, task), p, getattr(pred, task)) for task, p in pred.prob.items()
    }
    out["calibration"]["bins"] = ECE_BINS
    if pred.age_pred and age_edges is not None:
        edges = np.asarray(age_edges, dtype=float)
        groups = {"gender": pred.gender, "ethnicity": pred.ethnicity}
        for routing, key in (("soft", "age"), ("hard", "age_hard_routing")):
            if routing in pred.age_pred:
                m = age_metrics(pred.age, pred.age_pred[routing], edges, pred.age_bin_pred, **groups)
                m["bin_labels"] = bin_labels(edges)
                m["bin_confusion_normalized"] = _row_normalised(m["bin_confusion"])
                m["cumulative_score"] = cumulative_scores(np.abs(pred.age_pred[routing] - pred.age))
                out[key] = m
    # Ranges need the bin the model itself predicts: the two-stage head (the one with hard routing).
    if "hard" in pred.age_pred and "hard" in val.age_pred and age_edges is not None:
        fit = fit_age_intervals(
            val.age, val.age_pred["soft"], val.age_bin_pred, len(age_edges) - 1, AGE_INTERVAL_COVERAGE
        )
        out["age_interval"] = {
            **fit,
            "fitted_on": "val",
            "check": age_interval_check(pred.age, pred.age_pred["soft"], pred.age_bin_pred, fit["half_width"]),
        }
    out["fairness"] = {
        "ethnicity": fairness_table(
            pred, weights, pred.ethnicity, CLASS_NAMES["ethnicity"], skip=("ethnicity_macro_f1",)
        ),
        "gender": fairness_table(pred, weights, pred.gender, CLASS_NAMES["gender"]),
        "age_band": fairness_table(pred, weights, age_band(pred.age), AGE_BAND_NAMES),
    }
    return out


def fit_age_intervals(
    true_age: np.ndarray, pred_age: np.ndarray, pred_bin: np.ndarray, n_bins: int, coverage: float
) -> dict:
    """Half-widths of age ranges ``prediction ± h[bin]``, one per predicted age bin, by split
    conformal prediction on held-out faces (Vovk et al.; per bin: "Mondrian"): h is the
    ceil((n + 1) * coverage)-th smallest absolute error among the n faces predicted in that bin,
    so a new face exchangeable with those falls in its range with probability >= coverage in
    each bin. Approximately here: the validation faces also chose the epoch and the
    temperatures. A bin with too few faces for that rank gets the whole age span."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    err = np.abs(np.asarray(pred_age, float) - np.asarray(true_age, float))
    pred_bin = np.asarray(pred_bin)
    half, counts = [], []
    for k in range(n_bins):
        e = np.sort(err[pred_bin == k])
        rank = int(np.ceil((len(e) + 1) * coverage))
        half.append(float(e[rank - 1]) if 0 < rank <= len(e) else float(AGE_MAX - AGE_MIN))
        counts.append(len(e))
    return {
        "coverage": coverage,
        "half_width": half,
        "n_per_bin": counts,
        "method": "split conformal per predicted bin",
    }


def age_interval_check(true_age: np.ndarray, pred_age: np.ndarray, pred_bin: np.ndarray, half_width) -> dict:
    """How often the true age falls in ``prediction ± half_width[bin]`` (clipped to 1..116, as
    faceattr prints it), overall and by age band, and how wide the ranges are."""
    true_age = np.asarray(true_age, float)
    h = np.asarray(half_width, float)[np.asarray(pred_bin)]
    lo, hi = np.clip(pred_age - h, AGE_MIN, AGE_MAX), np.clip(pred_age + h, AGE_MIN, AGE_MAX)
    inside = (true_age >= lo) & (true_age <= hi)
    bands = age_band(true_age)
    return {
        "n": int(len(true_age)),
        "coverage": float(inside.mean()) if len(inside) else None,
        "mean_width": float((hi - lo).mean()) if len(inside) else None,
        "by_age_band": {
            name: {"n": int((bands == k).sum()), "coverage": float(inside[bands == k].mean())}
            for k, name in enumerate(AGE_BAND_NAMES)
            if (bands == k).any()
        },
    }


def _row_normalised(confusion: list[list[int]]) -> list[list[float]]:
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0).tolist()
