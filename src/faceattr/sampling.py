"""Class-balanced sampling: per-sample weights from label counts, each epoch's index draw.

The draw is made once from a shared generator state and then sliced per rank, so every
rank agrees on the epoch and a resumed run replays it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MODES = {"off": 0.0, "sqrt": 0.5, "full": 1.0}


def class_sample_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-sample weights (N,) summing to 1, proportional to ``count(label) ** -p``.

    ``mode`` is ``"off"`` (p=0, uniform), ``"sqrt"`` (p=1/2) or ``"full"`` (p=1: every
    class is drawn equally often in expectation).

    >>> class_sample_weights(np.array([0, 0, 0, 1]), "full")
    array([0.16666667, 0.16666667, 0.16666667, 0.5       ])
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
        raise ValueError(f"expected a non-empty 1-D array of labels >= 0, got shape {labels.shape}")
    counts = np.bincount(labels.astype(np.int64))
    weights = counts[labels].astype(np.float64) ** -MODES[mode]
    return weights / weights.sum()


def epoch_indices(
    weights: np.ndarray,
    num_samples: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    replacement: bool | None = None,
) -> np.ndarray:
    """This rank's share of one epoch's draw of ``num_samples`` dataset indices (int64).

    The full draw depends only on ``weights``, ``num_samples`` and the (CPU) generator
    state, never on ``world_size``; it is padded by wrapping to a multiple of
    ``world_size`` and cut into contiguous equal shards, so the shards of ranks
    0..world_size-1, concatenated, are the single-process draw followed by the padding.
    Every rank must pass the same generator state. ``replacement=None`` means: without
    replacement when the weights are uniform (a shuffle, chained if ``num_samples``
    exceeds the dataset), with replacement otherwise.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    n = w.numel()
    if n == 0 or num_samples < 1 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"expected non-negative weights (N>0) with a positive sum and "
            f"num_samples >= 1, "
            f"got N={n}, num_samples={num_samples}"
        )
    uniform = bool(torch.all(w == w[0]))
    if replacement is None:
        replacement = not uniform
    if replacement:
        draw = torch.multinomial(w, num_samples, replacement=True, generator=generator)
    else:
        passes = math.ceil(num_samples / n)
        if uniform:
            chunks = [torch.randperm(n, generator=generator) for _ in range(passes)]
        else:
            chunks = [torch.multinomial(w, n, replacement=False, generator=generator) for _ in range(passes)]
        draw = torch.cat(chunks)[:num_samples]
    per_rank = math.ceil(num_samples / world_size)
    padded = draw.repeat(math.ceil(per_rank * world_size / num_samples))[: per_rank * world_size]
    return padded[rank * per_rank : (rank + 1) * per_rank].numpy().astype(np.int64)
