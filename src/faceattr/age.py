"""Age estimation: equal-population age bins, the two-stage head (bin classifier plus one
regressor per bin), the baselines it is compared with (direct regression, DEX expectation), as plain functions on
tensors or arrays. The age metrics live in ``faceattr.metrics``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceattr.labels import AGE_MAX, AGE_MIN

CHILD_AGE = 13


def bin_edges(ages: np.ndarray, n_bins: int = 6) -> np.ndarray:
    """Integer edges (n_bins + 1,) that split the training ages into equally populated bins.

    Bin k holds the integer ages with ``edges[k] <= age < edges[k+1]``; edges[0] = 1 and
    edges[-1] = 117, so the bins cover 1..116 whatever ages the training set has. Each inner
    edge is the integer cut whose count of ages below it is nearest the k/n_bins quantile, so
    bins are as equal as integer ages allow (a single very common age cannot be split).

    >>> bin_edges(np.arange(1, 13), n_bins=3).tolist()
    [1.0, 5.0, 9.0, 117.0]
    """
    ages = np.asarray(ages)
    if not 1 <= n_bins <= AGE_MAX - AGE_MIN + 1:
        raise ValueError(f"n_bins must be in 1..{AGE_MAX - AGE_MIN + 1}, got {n_bins}")
    if ages.size == 0 or ages.min() < AGE_MIN or ages.max() > AGE_MAX:
        raise ValueError(f"ages must be a non-empty array within {AGE_MIN}..{AGE_MAX}, got {ages.size} ages")
    counts = np.bincount(np.rint(ages).astype(int) - AGE_MIN, minlength=AGE_MAX - AGE_MIN + 1)
    below = np.concatenate([[0], np.cumsum(counts)])  # below[c - AGE_MIN] = #ages < c
    cuts = np.arange(AGE_MIN, AGE_MAX + 2)
    edges = [AGE_MIN]
    for k in range(1, n_bins):
        # Stay strictly above the previous edge and leave one age for each remaining bin.
        ok = (cuts > edges[-1]) & (cuts <= AGE_MAX + 1 - (n_bins - k))
        gap = np.abs(below - k * ages.size / n_bins)
        edges.append(int(cuts[ok][np.argmin(gap[ok])]))
    edges.append(AGE_MAX + 1)
    return np.asarray(edges, dtype=float)


def age_to_bin(ages: np.ndarray | Tensor, edges: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Bin index (N,) of each age (N,), as numpy or torch to match ``ages``.

    Integer ages follow ``edges[k] <= age < edges[k+1]``; a real-valued age goes to the bin of
    its nearest integer (each age a stands for [a - 0.5, a + 0.5)), the same spans the
    two-stage regressors use. Ages outside 1..116 go to the first or last bin.

    >>> age_to_bin(np.array([1, 12, 13, 12.6, 116]), np.array([1, 13, 30, 117])).tolist()
    [0, 0, 1, 1, 2]
    """
    if isinstance(ages, Tensor):
        bounds = torch.as_tensor(edges, dtype=torch.float64, device=ages.device) - 0.5
        idx = torch.searchsorted(bounds, ages.to(torch.float64).contiguous(), right=True) - 1
        return idx.clamp(0, len(bounds) - 2)
    bounds = np.asarray(edges, dtype=float) - 0.5
    idx = np.searchsorted(bounds, np.asarray(ages, dtype=float), side="right") - 1
    return np.clip(idx, 0, len(bounds) - 2)


def bin_labels(edges: np.ndarray) -> list[str]:
    """Inclusive integer age range of each bin, e.g. ``["1-12", "13-29", "30-116"]``."""
    return [f"{int(lo)}-{int(hi) - 1}" for lo, hi in zip(edges[:-1], edges[1:])]


def age_weights(ages: np.ndarray, power: float, band: int = 5) -> np.ndarray:
    """Per-face loss weights (N,) = (faces in the face's ``band``-year age band) ** -power,
    scaled to mean 1 over ``ages``; power 0 gives all ones.

    >>> age_weights(np.array([1, 2, 3, 30]), 1.0).round(3).tolist()
    [0.667, 0.667, 0.667, 2.0]
    """
    band_of = (np.asarray(ages, dtype=float) // band).astype(int)
    counts = np.bincount(band_of)
    w = counts[band_of].astype(float) ** -float(power)
    return w / w.mean()


def two_stage_heads(n_bins: int = 6) -> dict[str, int]:
    """FaceNet heads for the two-stage estimator: bin logits and one regressor per bin."""
    return {"age_bin": n_bins, "age_reg": n_bins}


def _bin_spans(edges: np.ndarray | Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    # Bin k spans [edges[k] - 0.5, edges[k+1] - 0.5): its integer ages sit strictly inside,
    # so a sigmoid can reach every target, and the width is >= 1 even for a one-age bin.
    e = torch.as_tensor(edges, dtype=like.dtype, device=like.device) - 0.5
    return e[:-1], e[1:] - e[:-1]


def bin_ages(reg_out: Tensor, edges: np.ndarray | Tensor) -> Tensor:
    """Age each bin's regressor predicts: (B, K) raw outputs -> (B, K) ages in that bin's span."""
    lo, width = _bin_spans(edges, reg_out)
    return lo + torch.sigmoid(reg_out) * width


def two_stage_loss(
    bin_logits: Tensor,
    reg_out: Tensor,
    ages: Tensor,
    edges: np.ndarray | Tensor,
    smoothing: float = 0.1,
    reg_weight: float = 0.1,
    weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy on the true bin plus ``reg_weight`` x smooth-L1 of the true bin's regressor,
    averaged over faces (weighted by ``weights`` (B,) when given, see ``age_weights``).

    bin_logits, reg_out: (B, K); ages: (B,) true ages; edges: (K + 1,) from ``bin_edges``.
    Only the true bin's regressor is trained on a sample (teacher forcing), so each regressor
    learns the ages inside its own span. The regression error is in years (smooth-L1, beta 1
    year): MAE in years is what we report, and in normalised units a 5-year miss in the narrow
    child bin would cost several times one in the wide old-age bin. At an MAE of ~5-8 years
    the default weight 0.1 puts it on the scale of the cross-entropy (~1-1.8 for 6 bins).

    >>> logits, reg = torch.tensor([[9.0, -9.0]]), torch.tensor([[0.0, 0.0]])
    >>> round(two_stage_loss(logits, reg, torch.tensor([6.5]), [1, 13, 117], 0.0, 1.0).item(), 4)
    0.0
    """
    ages = ages.to(reg_out.dtype)
    true_bin = age_to_bin(ages, edges)
    ce = F.cross_entropy(bin_logits, true_bin, label_smoothing=smoothing, reduction="none")
    pred = bin_ages(reg_out, edges).gather(1, true_bin[:, None]).squeeze(1)  # (B,)
    per_face = ce + reg_weight * F.smooth_l1_loss(pred, ages, beta=1.0, reduction="none")
    if weights is None:
        return per_face.mean()
    return (per_face * weights.to(per_face.dtype)).mean()


def decode_two_stage(
    bin_logits: Tensor, reg_out: Tensor, edges: np.ndarray | Tensor, routing: str = "soft", temperature: float = 1.0
) -> Tensor:
    """Predicted ages (B,) from bin logits and regressor outputs (B, K), clipped to 1..116.

    ``hard``: the regressor of the argmax bin. ``soft``: sum over bins of p(bin) x that
    bin's regressor age, which hedges near bin borders; p = softmax(logits / temperature), so
    a temperature below 1 leans toward hard routing (see ``fit_routing_temperature``).

    >>> logits = torch.tensor([[0.0, 1.0986, 0.0]])  # p = 0.2, 0.6, 0.2
    >>> reg = torch.zeros(1, 3)  # mid-span: 6.5, 16.0, 68.0
    >>> [round(decode_two_stage(logits, reg, [1, 13, 20, 117], r).item(), 2) for r in ("hard", "soft")]
    [16.0, 24.5]
    """
    ages = bin_ages(reg_out, edges)  # (B, K)
    if routing == "hard":
        pred = ages.gather(1, bin_logits.argmax(1, keepdim=True)).squeeze(1)
    elif routing == "soft":
        pred = ((bin_logits / temperature).softmax(1) * ages).sum(1)
    else:
        raise ValueError(f"routing must be 'hard' or 'soft', got {routing!r}")
    return pred.clamp(AGE_MIN, AGE_MAX)


ROUTING_TEMPERATURES = tuple(round(0.2 + 0.05 * i, 2) for i in range(37))  # 0.2 .. 2.0


def soft_route(bin_prob: np.ndarray, bin_ages: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Soft-routed ages (N,) from bin probabilities (N, K) taken at temperature 1 and each bin's
    regressor age (N, K): the numpy twin of ``decode_two_stage(..., "soft", temperature)``."""
    z = np.log(np.clip(np.asarray(bin_prob, dtype=float), 1e-12, None)) / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    return np.clip((p / p.sum(1, keepdims=True) * bin_ages).sum(1), AGE_MIN, AGE_MAX)


def fit_routing_temperature(
    bin_prob: np.ndarray, bin_ages: np.ndarray, true_age: np.ndarray, grid: tuple[float, ...] = ROUTING_TEMPERATURES
) -> float:
    """The soft-routing temperature with the lowest MAE on held-out faces (fit on validation).

    bin_prob, bin_ages: (N, K) bin probabilities (at temperature 1) and each bin's regressor
    age; true_age: (N,). Plain soft routing (T = 1) pulls a face toward the neighbouring bins'
    ages even when the classifier is fairly sure, which costs most in the narrow child bins;
    hard routing (T -> 0) pays fully for every wrong bin. One scalar, searched on a grid, finds
    the trade-off the data supports.

    >>> prob = np.array([[0.7, 0.3], [0.7, 0.3]]); ages = np.array([[10.0, 50.0], [10.0, 50.0]])
    >>> fit_routing_temperature(prob, ages, np.array([10.0, 10.0]))  # the sure bin was right
    0.2
    """
    true_age = np.asarray(true_age, dtype=float)
    best, best_mae = 1.0, np.inf
    for t in grid:
        mae = np.abs(soft_route(bin_prob, bin_ages, t) - true_age).mean()
        if mae < best_mae - 1e-9:  # ties keep the lower temperature found first
            best, best_mae = float(t), mae
    return best


# Quantile levels of the distribution map's knots: the 1 % and 99 % ends, not 0 and 1, so one
# face predicted at the very top is not stretched onto the oldest training age.
MAP_QUANTILES = tuple(round(0.01 + 0.049 * i, 3) for i in range(21))  # 0.01 .. 0.99


def fit_distribution_map(
    pred_age: np.ndarray, target_ages: np.ndarray, quantiles: tuple[float, ...] = MAP_QUANTILES
) -> list[list[float]]:
    """Knots [x, y] of a monotone piecewise-linear map that takes the quantiles of held-out
    predicted ages (x) onto the same quantiles of the training ages (y).

    Why: an estimator fitted for low MAE shrinks toward the middle of the ages it was trained on,
    so children come out older and people over 60 younger than they are (the bias grows with the
    distance from the middle). Mapping the predicted distribution back onto the true one spreads
    the answers out again; it keeps their order. Knots whose predicted quantiles tie are dropped
    (the map must be a function); beyond the end knots the map has slope 1.

    >>> fit_distribution_map(np.arange(10.0, 51.0), 2 * np.arange(10.0, 51.0), (0.0, 0.5, 1.0))
    [[10.0, 30.0, 50.0], [20.0, 60.0, 100.0]]
    """
    pred_age, target_ages = np.asarray(pred_age, dtype=float), np.asarray(target_ages, dtype=float)
    if pred_age.size < 2 or target_ages.size < 2:
        raise ValueError("a distribution map needs at least two predicted and two target ages")
    # Rounded before ties are dropped, so stored knots stay strictly increasing (no zero-width segment).
    x = np.round(np.quantile(pred_age, quantiles), 4)
    y = np.round(np.quantile(target_ages, quantiles), 4)
    keep = np.concatenate([[True], np.diff(x) >= 1e-3])
    return [[float(v) for v in x[keep]], [float(v) for v in y[keep]]]


def apply_distribution_map(age: Tensor, knots: list[list[float]]) -> Tensor:
    """``age`` (B,) through the map of ``fit_distribution_map``, clipped to 1..116.

    Written as a sum of ReLUs (slope changes at the knots) rather than a lookup so that the
    exported ONNX graph holds it as plain elementwise operations.

    >>> apply_distribution_map(torch.tensor([0.0, 20.0, 40.0, 60.0]), [[10.0, 30.0, 50.0], [20.0, 60.0, 100.0]])
    tensor([ 10.,  40.,  80., 110.])
    """
    if len(knots[0]) != len(knots[1]) or any(b <= a for a, b in zip(knots[0], knots[0][1:])):
        raise ValueError("a distribution map needs as many y as x knots, x strictly increasing")
    x = torch.as_tensor(knots[0], dtype=age.dtype, device=age.device)
    y = torch.as_tensor(knots[1], dtype=age.dtype, device=age.device)
    if len(x) == 1:
        return (age - x[0] + y[0]).clamp(AGE_MIN, AGE_MAX)
    one = torch.ones(1, dtype=age.dtype, device=age.device)
    slopes = torch.cat([one, (y[1:] - y[:-1]) / (x[1:] - x[:-1]), one])  # slope 1 outside the knots
    mapped = y[0] + (age - x[0]) + (F.relu(age[:, None] - x) * (slopes[1:] - slopes[:-1])).sum(1)
    return mapped.clamp(AGE_MIN, AGE_MAX)


def direct_heads() -> dict[str, int]:
    """FaceNet head for direct regression: one output, the age on the (age - mean) / std scale."""
    return {"age_direct": 1}


def direct_loss(pred: Tensor, ages: Tensor, mean: float, std: float, beta: float = 1.0) -> Tensor:
    """Smooth-L1 between ``pred`` (B,) or (B, 1) and (ages - mean) / std; beta in years.

    >>> direct_loss(torch.tensor([0.5]), torch.tensor([40.0]), mean=30.0, std=20.0).item()
    0.0
    """
    target = (ages.to(pred.dtype) - mean) / std
    return F.smooth_l1_loss(pred.reshape(-1), target, beta=beta / std)


def decode_direct(pred: Tensor, mean: float, std: float) -> Tensor:
    """Ages (B,) from normalised predictions (B,) or (B, 1), clipped to 1..116."""
    return (pred.reshape(-1) * std + mean).clamp(AGE_MIN, AGE_MAX)


def dex_heads(n_classes: int = AGE_MAX - AGE_MIN + 1) -> dict[str, int]:
    """FaceNet head for DEX: one class per age 1..n_classes."""
    return {"age_dex": n_classes}


def dex_loss(logits: Tensor, ages: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits (B, K) over ages 1..K against integer ages (B,)."""
    return F.cross_entropy(logits, ages.round().long() - AGE_MIN, label_smoothing=smoothing)


def decode_dex(logits: Tensor) -> Tensor:
    """DEX expected age (B,): sum over classes of softmax(logits) x (class index + 1).

    >>> logits = torch.full((1, 116), -1e4)
    >>> logits[0, [19, 39]] = 0.0  # ages 20 and 40, equally likely
    >>> decode_dex(logits).item()
    30.0
    """
    values = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device) + AGE_MIN
    return (logits.softmax(1) * values).sum(1).clamp(AGE_MIN, AGE_MAX)
