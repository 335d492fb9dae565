"""Population estimates from a classifier that errs: the share of each class in a collection
of faces, with 95 % intervals (quantification; Forman 2008, Saerens et al. 2002).

- ``cc``: classify and count (the argmax shares);
- ``pcc``: probabilistic classify and count (the mean calibrated probability);
- ``acc``: adjusted classify and count: the counts corrected with the validation confusion
  matrix C[true, predicted] (solve C^T pi = q for the shares pi, on the simplex);
- ``pacc``: the same with the soft confusion matrix (mean probabilities per true class);
- ``em``: the EM prior-shift estimate: posteriors re-weighted to new priors until the priors
  and the mean posterior agree.

Intervals come from the bootstrap over both the audited faces and the validation faces, so
they include the uncertainty of the correction itself. Probabilities in, shares out: no
model, no I/O.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from scipy.special import ndtr

ESTIMATORS = ("cc", "pcc", "acc", "pacc", "em")
FAIRFACE_AGE_EDGES = (0, 3, 10, 20, 30, 40, 50, 60, 70)  # lower edges: 0-2, 3-9, 10-19, ..., 70+
FAIRFACE_AGE_GROUPS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
RANGE_Z = 1.2816  # an 80 % central interval spans +-1.2816 standard deviations of a normal
EM_ITERATIONS, EM_TOLERANCE = 100, 1e-6  # shares to 1e-4 points: far below any interval


def age_group_probs(age: np.ndarray, low: np.ndarray, high: np.ndarray, edges) -> np.ndarray:
    """(N, groups) probabilities of each age group, from a normal around the predicted age
    whose spread is read off the 80 % age range (so they are as wide as the model's doubt)."""
    sigma = np.maximum((np.asarray(high) - np.asarray(low)) / (2 * RANGE_Z), 0.5)[:, None]
    bounds = np.array([*edges[1:], np.inf], float)
    lower = np.array([-np.inf, *edges[1:]], float)
    z_hi = (bounds[None, :] - np.asarray(age)[:, None]) / sigma
    z_lo = (lower[None, :] - np.asarray(age)[:, None]) / sigma
    probs = ndtr(z_hi) - ndtr(z_lo)
    return probs / probs.sum(1, keepdims=True)


def age_group_of(age: np.ndarray, edges) -> np.ndarray:
    """Group index of each (true or predicted) age."""
    return np.searchsorted(np.array(edges[1:]), np.asarray(age), side="right")


def joint_probs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, Ka * Kb) probabilities of crossed classes, each face's two answers taken as
    independent; class index ia * Kb + ib."""
    return (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)


def confusion(probs: np.ndarray, truth: np.ndarray, k: int, soft: bool) -> np.ndarray:
    """C[i, j] = P(predicted j | true i) on labelled faces (soft: the mean probability of j).
    A class absent from the labelled faces gets an identity row (nothing to correct with)."""
    pred = probs if soft else np.eye(k)[probs.argmax(1)]
    sums = np.zeros((k, k))
    np.add.at(sums, truth, pred)
    counts = np.bincount(truth, minlength=k)[:, None]
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.eye(k))


def adjust(c: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Shares pi >= 0 summing to 1 that best explain the observed shares: min |C^T pi - q|."""
    k = len(observed)
    weight = 10.0  # the sum-to-one row, weighted so that it holds almost exactly
    a = np.vstack([c.T, weight * np.ones((1, k))])
    b = np.concatenate([observed, [weight]])
    pi, _ = nnls(a, b)
    total = pi.sum()
    return pi / total if total > 0 else np.full(k, 1 / k)


def em_priors(probs: np.ndarray, train_prior: np.ndarray) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM: re-weight posteriors by new / old priors until the new
    priors equal the mean re-weighted posterior."""
    old = np.maximum(train_prior, 1e-12)
    pi = probs.mean(0)
    for _ in range(EM_ITERATIONS):
        weighted = probs * (pi / old)
        weighted /= np.maximum(weighted.sum(1, keepdims=True), 1e-300)
        new = weighted.mean(0)
        if np.abs(new - pi).max() < EM_TOLERANCE:
            return new
        pi = new
    return pi


def point_estimates(probs: np.ndarray, val_probs: np.ndarray, val_truth: np.ndarray) -> dict[str, np.ndarray]:
    """Every estimator's shares (K,) for audited faces ``probs`` (N, K), corrected with the
    labelled validation faces ``val_probs`` (M, K), ``val_truth`` (M,)."""
    k = probs.shape[1]
    q_cc = np.bincount(probs.argmax(1), minlength=k) / len(probs)
    q_pcc = probs.mean(0)
    return {
        "cc": q_cc,
        "pcc": q_pcc,
        "acc": adjust(confusion(val_probs, val_truth, k, soft=False), q_cc),
        "pacc": adjust(confusion(val_probs, val_truth, k, soft=True), q_pcc),
        "em": em_priors(probs, np.bincount(val_truth, minlength=k) / len(val_truth)),
    }


def estimate(
    probs: np.ndarray,
    val_probs: np.ndarray,
    val_truth: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, list[float]]]:
    """Point estimates and bootstrap percentile intervals of every estimator: resampling the
    audited faces and, independently, the validation faces in each replicate.
    Returns estimator -> {"share": [K], "low": [K], "high": [K]}."""
    if len(probs) == 0:
        raise ValueError("no faces to estimate from")
    rng = np.random.default_rng(seed)
    point = point_estimates(probs, val_probs, val_truth)
    boots = {name: [] for name in ESTIMATORS}
    n, m = len(probs), len(val_probs)
    for _ in range(n_boot):
        a = rng.integers(0, n, n)
        v = rng.integers(0, m, m)
        for name, value in point_estimates(probs[a], val_probs[v], val_truth[v]).items():
            boots[name].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for name in ESTIMATORS:
        b = np.array(boots[name])
        out[name] = {
            "share": point[name].round(6).tolist(),
            "low": np.percentile(b, tail, axis=0).round(6).tolist(),
            "high": np.percentile(b, 100 - tail, axis=0).round(6).tolist(),
        }
    return out
