"""What each task adds to the shared backbone: its heads, its share of the loss, and how its
raw outputs decode into predictions (probabilities for gender and ethnicity, years for age).
The age head is the two-stage estimator or one of the baselines it is compared with."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceattr import age as agemod
from faceattr.labels import CLASS_NAMES

TASKS = ("gender", "ethnicity", "age")
AGE_HEADS = ("two_stage", "direct", "dex")
# Trained only to carry a teacher's knowledge into the backbone; never part of a prediction.
TEACHER_HEAD = "teacher_embed"


@dataclass
class AgeSpec:
    """Everything needed to train and decode the age head; stored in checkpoints.

    edges: the equal-population bin edges from the training ages (also used by the baselines
    to report bin accuracy); mean/std: training-age statistics for direct regression.
    """

    head: str
    edges: list[float]
    mean: float
    std: float
    routing_temperature: float = 1.0  # two-stage soft routing; fitted on validation after training
    # Knots [x, y] of the monotone map from predicted to answered ages (age.fit_distribution_map),
    # fitted on validation by faceattr.agerefit; None: the decoded age is the answer.
    age_map: list[list[float]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def make_age_spec(head: str, n_bins: int, train_ages: np.ndarray) -> AgeSpec:
    if head not in AGE_HEADS:
        raise ValueError(f"age head must be one of {AGE_HEADS}, got {head!r}")
    ages = np.asarray(train_ages, dtype=float)
    return AgeSpec(
        head=head, edges=agemod.bin_edges(ages, n_bins).tolist(), mean=float(ages.mean()), std=float(ages.std())
    )


def model_heads(tasks: list[str], age: AgeSpec | None) -> dict[str, int]:
    """Head name -> output size for the chosen tasks."""
    heads = {t: len(CLASS_NAMES[t]) for t in tasks if t in CLASS_NAMES}
    if "age" in tasks:
        if age is None:
            raise ValueError("the age task needs an AgeSpec")
        n_bins = len(age.edges) - 1
        heads.update(
            {"two_stage": agemod.two_stage_heads(n_bins), "direct": agemod.direct_heads(), "dex": agemod.dex_heads()}[
                age.head
            ]
        )
    return heads


def total_loss(
    out: dict[str, Tensor],
    targets: dict[str, Tensor],
    weights: dict[str, float],
    smoothing: float,
    age: AgeSpec | None,
    age_reg_weight: float,
) -> Tensor:
    """Weighted sum over tasks: label-smoothed cross-entropy for gender and ethnicity, the age
    head's own loss for age. ``targets`` holds class indices and ages (float years)."""
    loss = torch.zeros((), device=next(iter(out.values())).device)
    for task, w in weights.items():
        if task in CLASS_NAMES:
            loss = loss + w * F.cross_entropy(out[task].float(), targets[task], label_smoothing=smoothing)
        elif task == "age":
            loss = loss + w * age_loss(out, targets["age"], age, smoothing, age_reg_weight, targets.get("age_weight"))
    return loss


def teacher_loss(out: dict[str, Tensor], targets: dict[str, Tensor], embed_weight: float, soft_weight: float) -> Tensor:
    """Distillation terms over the faces the teacher answered (``teacher_has``): ``embed_weight``
    x (1 - cosine) between the teacher head and the teacher's embedding, and ``soft_weight`` x the
    cross-entropy of the gender and ethnicity heads against the teacher probes' probabilities."""
    has = targets["teacher_has"].float()
    n = has.sum().clamp(min=1.0)
    loss = torch.zeros((), device=has.device)
    if embed_weight > 0:
        cos = F.cosine_similarity(out[TEACHER_HEAD].float(), targets["teacher_embedding"], dim=1)
        loss = loss + embed_weight * ((1 - cos) * has).sum() / n
    if soft_weight > 0:
        for task in ("gender", "ethnicity"):
            if task in out:
                ce = -(targets[f"teacher_{task}"] * F.log_softmax(out[task].float(), 1)).sum(1)
                loss = loss + soft_weight * (ce * has).sum() / n
    return loss


def age_loss(
    out: dict[str, Tensor],
    ages: Tensor,
    age: AgeSpec,
    smoothing: float,
    reg_weight: float,
    weights: Tensor | None = None,
) -> Tensor:
    """The age head's loss; ``weights`` (B,) per face (two-stage head only, see ``age_weights``)."""
    if age.head == "two_stage":
        return agemod.two_stage_loss(
            out["age_bin"].float(), out["age_reg"].float(), ages, age.edges, smoothing, reg_weight, weights
        )
    if age.head == "direct":
        return agemod.direct_loss(out["age_direct"].float(), ages, age.mean, age.std)
    return agemod.dex_loss(out["age_dex"].float(), ages, smoothing)


def decode_age(raw: dict[str, Tensor], age: AgeSpec) -> dict[str, Tensor]:
    """Years (B,) from the age heads' raw outputs, as every consumer reads them (soft routing at
    the fitted temperature for the two-stage head, which also gives ``age_bin_prob`` (B, bins))."""
    if age.head == "two_stage":
        bin_logits, reg = raw["age_bin"].float(), raw["age_reg"].float()
        return {
            "age": mapped_age(
                agemod.decode_two_stage(bin_logits, reg, age.edges, "soft", age.routing_temperature), age
            ),
            "age_bin_prob": torch.softmax(bin_logits, 1),
        }
    if age.head == "direct":
        return {"age": mapped_age(agemod.decode_direct(raw["age_direct"].float(), age.mean, age.std), age)}
    return {"age": mapped_age(agemod.decode_dex(raw["age_dex"].float()), age)}


def mapped_age(years: Tensor, age: AgeSpec) -> Tensor:
    """Decoded ages (B,) through the checkpoint's distribution map, when it has one."""
    return years if age.age_map is None else agemod.apply_distribution_map(years, age.age_map)


@torch.no_grad()
def decode(out: dict[str, Tensor], age: AgeSpec | None) -> dict[str, Tensor]:
    """Predictions from raw head outputs (B, ...): class probabilities (B, K) per class task;
    for age, ``age`` (B,) years (``decode_age``), and for the two-stage head also ``age_hard``
    (B,), ``age_bin_prob`` (B, bins) and ``age_bin_ages`` (B, bins)."""
    pred = {t: torch.softmax(out[t].float(), 1) for t in CLASS_NAMES if t in out}
    if age is None:
        return pred
    pred.update(decode_age(out, age))
    if age.head == "two_stage":
        bin_logits, reg = out["age_bin"].float(), out["age_reg"].float()
        # Hard routing goes through the same map (fitted on the soft answers): a diagnostic of
        # the routing choice under the model's own answer path, not a separately fitted answer.
        pred["age_hard"] = mapped_age(agemod.decode_two_stage(bin_logits, reg, age.edges, "hard"), age)
        pred["age_bin_ages"] = agemod.bin_ages(reg, age.edges)  # (B, bins): each regressor's age
    return pred


def predicted_bin(pred: dict[str, np.ndarray], age: AgeSpec) -> np.ndarray:
    """The age bin (N,) a model predicts from its decoded outputs (``decode``, as numpy): the bin
    classifier's argmax for the two-stage head, the bin of the predicted age for the heads
    without a classifier."""
    if age.head == "two_stage":
        return np.asarray(pred["age_bin_prob"]).argmax(1)
    return agemod.age_to_bin(np.asarray(pred["age"]), np.asarray(age.edges))
