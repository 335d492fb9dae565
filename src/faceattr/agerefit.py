"""Ages that do not collapse toward the middle: refit a trained model's two-stage age heads on its
frozen backbone with age-balanced loss weights (``faceattr.age.age_weights``), the balance chosen
on the validation split.

Why after training, not during it: the balance trades overall MAE against the bias at the rare
ends (children, people over 60), and training the whole network with it also moves the shared
backbone that gender and ethnicity use (at a short budget it cost both about a point, see the
README). Refitting only the two linear age heads leaves every other output exactly as it was.

The training faces' embeddings (each face and its mirror image) are computed once; each
candidate power trains fresh copies of the heads from the trained ones, with the run's dropout,
label smoothing and regression weight; its soft-routing temperature is refitted on validation.
The choice: the lowest *balanced* MAE on validation (the mean over decades of true age of each
decade's MAE, so every decade counts the same), among the candidates whose plain MAE is at most
``mae_slack`` years above the model's own.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from faceattr.age import age_weights, fit_routing_temperature, soft_route, two_stage_loss
from faceattr.cache import Prepared
from faceattr.checkpoint import age_spec, model_from_checkpoint
from faceattr.metrics import decade_errors
from faceattr.model import FaceNet
from faceattr.preprocess import to_input
from faceattr.tasks import decode


@torch.inference_mode()
def embeddings(net: FaceNet, images: np.ndarray, mean: float, std: float, flip: bool, batch: int = 512) -> torch.Tensor:
    """Pooled backbone features (N, F) of uint8 faces (2N with their mirror images after them)."""
    net.eval()
    parts, mirrored = [], []
    for start in range(0, len(images), batch):
        x = to_input(torch.from_numpy(images[start : start + batch]), mean, std)
        parts.append(net.embed(x))
        if flip:
            mirrored.append(net.embed(x.flip(-1)))
    return torch.cat(parts + mirrored)


def _fit_heads(
    heads: nn.ModuleDict,
    feats: torch.Tensor,
    ages: torch.Tensor,
    weights: torch.Tensor,
    edges: list[float],
    dropout: float,
    smoothing: float,
    reg_weight: float,
    epochs: int,
    seed: int,
) -> nn.ModuleDict:
    heads = copy.deepcopy(heads).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=0.05)
    drop = nn.Dropout(dropout)
    torch.manual_seed(seed)  # the dropout masks
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=gen).split(256):
            z = drop(feats[idx])
            loss = two_stage_loss(
                heads["age_bin"](z), heads["age_reg"](z), ages[idx], edges, smoothing, reg_weight, weights[idx]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return heads.eval()


def _val_answers(heads: nn.ModuleDict, feats: torch.Tensor, age) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        pred = decode({name: heads[name](feats) for name in ("age_bin", "age_reg")}, age)
    return pred["age_bin_prob"].numpy(), pred["age_bin_ages"].numpy()


def refit_age_heads(
    ckpt: dict,
    prepared: Prepared,
    powers: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    epochs: int = 8,
    mae_slack: float = 0.1,
    seed: int = 0,
    log=print,
) -> tuple[dict, dict]:
    """(the checkpoint with the chosen heads and routing temperature, a record of every
    candidate on validation). The checkpoint is returned unchanged when no candidate beats the
    model's own balanced MAE within the slack."""
    age = age_spec(ckpt)
    if age is None or age.head != "two_stage":
        raise ValueError("refitting needs a model with the two-stage age head")
    cfg, pre = ckpt["config"], ckpt["preprocessing"]
    net = model_from_checkpoint(ckpt).float()
    train, val = prepared.part("train"), prepared.part("val")
    log(f"embedding {len(train)} training faces (and their mirror images) and {len(val)} validation faces ...")
    train_feats = embeddings(net, train.images, pre["mean"], pre["std"], flip=True)
    val_feats = embeddings(net, val.images, pre["mean"], pre["std"], flip=False)
    train_ages = torch.from_numpy(np.concatenate([train.age, train.age]).astype(np.float32))
    heads = nn.ModuleDict({name: net.heads[name] for name in ("age_bin", "age_reg")})

    prob, bin_ages = _val_answers(heads, val_feats, age)
    own = decade_errors(soft_route(prob, bin_ages, age.routing_temperature), val.age)
    record: dict = {
        "rule": f"lowest validation balanced MAE among candidates with MAE <= the model's own + {mae_slack}",
        "epochs": epochs,
        "seed": seed,
        "model": {"routing_temperature": age.routing_temperature, **own},
        "candidates": {},
    }
    best, best_key = None, None
    for power in powers:
        weights = torch.from_numpy(np.concatenate([age_weights(train.age, power)] * 2).astype(np.float32))
        fitted = _fit_heads(
            heads,
            train_feats,
            train_ages,
            weights,
            age.edges,
            float(cfg.get("dropout", 0.3)),
            float(cfg.get("label_smoothing", 0.1)),
            float(cfg.get("age_reg_weight", 0.1)),
            epochs,
            seed,
        )
        prob, bin_ages = _val_answers(fitted, val_feats, age)
        temperature = fit_routing_temperature(prob, bin_ages, val.age)
        scores = {"routing_temperature": temperature, **decade_errors(soft_route(prob, bin_ages, temperature), val.age)}
        record["candidates"][str(power)] = scores
        log(f"age_balance {power}: {scores}")
        ok = scores["mae"] <= own["mae"] + mae_slack and scores["balanced_mae"] < own["balanced_mae"]
        if ok and (best is None or scores["balanced_mae"] < record["candidates"][best_key]["balanced_mae"]):
            best, best_key = (fitted, temperature), str(power)
    record["chosen"] = best_key
    if best is None:
        return ckpt, record
    fitted, temperature = best
    out = dict(ckpt)
    out["model"] = dict(ckpt["model"])
    for name in ("age_bin", "age_reg"):
        for key, value in fitted[name].state_dict().items():
            out["model"][f"heads.{name}.{key}"] = value.detach().clone().to(ckpt["model"][f"heads.{name}.{key}"].dtype)
    out["age"] = {**ckpt["age"], "routing_temperature": temperature}
    out["age_refit"] = {"age_balance": float(best_key), "rule": record["rule"], "epochs": epochs, "seed": seed}
    return out, record
