"""The multitask training engine: a plain loop over in-memory uint8 faces with batch
augmentation on tensors, balanced sampling, label-smoothed losses, warmup + cosine LR, early
stopping, self-describing atomic checkpoints, exact resume, and optional DDP via torchrun."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from faceattr import __version__
from faceattr.age import age_weights, fit_routing_temperature
from faceattr.atomic import atomic_path, write_json
from faceattr.augment import AugmentConfig, augment_batch, strength_per_class
from faceattr.cache import Prepared, load_prepared
from faceattr.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from faceattr.config import TrainConfig, write_config
from faceattr.dataset import FaceData
from faceattr.device import select_device
from faceattr.inputerror import InputError
from faceattr.labels import CLASS_NAMES
from faceattr.metrics import age_metrics, head_metrics, selection_score
from faceattr.model import FaceNet, model_args
from faceattr.preprocess import normalize, to_input, to_unit
from faceattr.runs import BEST, CONFIG, HISTORY, LAST, METRICS
from faceattr.sampling import class_sample_weights, epoch_indices
from faceattr.split import split_hash
from faceattr.tasks import (
    TEACHER_HEAD,
    AgeSpec,
    decode,
    make_age_spec,
    model_heads,
    predicted_bin,
    teacher_loss,
    total_loss,
)
from faceattr.teacher import EMBED_DIM, load_cache

# What last.pt holds beyond the weights file (best.pt): the state an exact resume needs.
TRAINING_STATE = (
    "optimizer",
    "scheduler",
    "scaler",
    "best_score",
    "bad_epochs",
    "history",
    "train_seconds",
    "wall_seconds",
    "stopped_by",
    "world_size",
    "rng",
)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; one process without it.

    Each rank binds its own GPU before the process group starts, so NCCL's collectives run on
    that GPU; CPU ranks talk over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "cuda" and world > 1:
        device_name = f"cuda:{local_rank}"
    device = select_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only; none on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from 1 % of the LR, then cosine to zero, stepped once per batch."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


@torch.inference_mode()
def predict_outputs(
    model: FaceNet,
    images: np.ndarray,
    mean: float,
    std: float,
    device: torch.device | str,
    age: AgeSpec | None = None,
    batch_size: int = 512,
    flip: bool = False,
) -> dict[str, np.ndarray]:
    """Decoded predictions for uint8 faces (N, H, W[, C]): class probabilities (N, K) for
    gender and ethnicity, and with an age head ``age`` (N,) years (plus ``age_hard`` and
    ``age_bin_prob`` for the two-stage head).

    ``flip`` averages the raw head outputs of each face and its mirror image before decoding
    (test-time augmentation: twice the compute; training flips faces, so both views are in
    distribution)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[start : start + batch_size]).to(device), mean, std)
        raw = model(x)
        if flip:
            mirrored = model(x.flip(-1))
            raw = {name: (value + mirrored[name]) / 2 for name, value in raw.items()}
        for name, value in decode(raw, age).items():
            out.setdefault(name, []).append(value.float().cpu().numpy())
    model.train(was_training)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def evaluate(
    model: FaceNet,
    prepared: Prepared,
    split: str,
    mean: float,
    std: float,
    device: torch.device | str,
    age: AgeSpec | None = None,
    batch_size: int = 512,
) -> dict:
    """Metrics of ``model`` on one split: per class task (scikit-learn) and, with an age head,
    the age metrics (the two-stage head with soft and hard routing). Never uses true bins."""
    part = prepared.part(split)
    pred = predict_outputs(model, part.images, mean, std, device, age, batch_size)
    metrics = {
        t: head_metrics(getattr(part, t).astype(np.int64), pred[t], CLASS_NAMES[t]) for t in CLASS_NAMES if t in pred
    }
    if age is not None:
        edges, pred_bin = np.asarray(age.edges), predicted_bin(pred, age)
        groups = {"gender": part.gender, "ethnicity": part.ethnicity}
        metrics["age"] = age_metrics(part.age, pred["age"], edges, pred_bin, **groups)
        if age.head == "two_stage":
            metrics["age_hard_routing"] = age_metrics(part.age, pred["age_hard"], edges, pred_bin, **groups)
    metrics["score"] = selection_score(metrics)
    return metrics


def init_from_checkpoint(model: FaceNet, path: str | Path, expected_split: str) -> list[str]:
    """Copy every weight of a checkpoint whose name and shape match into ``model`` (the shared
    backbone and same-named heads); returns the names of the heads that start fresh.

    The checkpoint must come from the same split: a backbone that has seen this run's
    validation or test faces would inflate every metric."""
    ckpt = load_checkpoint(path)
    if ckpt["split_hash"] != expected_split:
        raise InputError(f"{path}: was trained on a different split ({ckpt['split_hash']}, this data {expected_split})")
    source = ckpt["model"]
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("layer4.") for k in matched):
        raise InputError(f"{path}: its backbone does not match this model (stem/width/channels differ)")
    model.load_state_dict(matched, strict=False)
    return sorted({k.split(".")[1] for k in own if k.startswith("heads.") and k not in matched})


def _write_history(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_batch(
    images: torch.Tensor,
    targets: dict[str, torch.Tensor],
    index: torch.Tensor,
    strength: torch.Tensor,
    generator: torch.Generator,
    aug: AugmentConfig,
    mean: float,
    std: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One augmented training batch from the in-memory uint8 faces: x (B, C, H, W), targets."""
    x = augment_batch(to_unit(images[index]), strength[targets["ethnicity"][index]], generator, aug)
    return normalize(x, mean, std), {t: v[index] for t, v in targets.items()}


def train_one_epoch(
    net: nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loss_fn,
    amp_dtype: torch.dtype | None,
    progress: tqdm,
) -> tuple[float, int]:
    """One pass over ``batches`` (an iterable of (x, targets)); returns (mean loss, samples)."""
    net.train()
    device_type = next(net.parameters()).device.type
    loss_sum, seen, start = 0.0, 0, time.perf_counter()
    for x, targets in batches:
        with torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            loss = loss_fn(net(x), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.item() * len(x)
        seen += len(x)
        progress.update()
        progress.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    return loss_sum / max(seen, 1), seen


@dataclass
class Feed:
    """The training faces on the device and what turns them into each epoch's batches: the
    balanced draw of sample indices (one generator, identical on all ranks, so the shards are
    disjoint) and the augmentation (a generator per rank)."""

    images: torch.Tensor  # (N, H, W[, C]) uint8, the whole training set
    targets: dict[str, torch.Tensor]  # task -> (N,) class indices or ages
    sample_weights: np.ndarray  # (N,) the balanced sampler's weights
    strength: torch.Tensor  # (ethnicities,) augmentation strength per class
    aug: AugmentConfig
    mean: float
    std: float
    batch_size: int  # per rank
    rank: int
    world: int
    sample_gen: torch.Generator
    aug_gen: torch.Generator

    def batches(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """This rank's augmented batches (x (B, C, H, W), targets) of one epoch, made as they are asked for."""
        draw = epoch_indices(self.sample_weights, len(self.images), self.sample_gen, self.rank, self.world)
        order = torch.from_numpy(draw).to(self.images.device)
        for k in range(0, len(order), self.batch_size):
            index = order[k : k + self.batch_size]
            yield make_batch(
                self.images, self.targets, index, self.strength, self.aug_gen, self.aug, self.mean, self.std
            )


@dataclass
class Run:
    """What one training run works with, built once by ``setup``: where it runs, its data, the
    model with its optimisation, the batch feed, and the header every checkpoint starts with."""

    cfg: TrainConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    prepared: Prepared
    split_id: str
    mean: float
    std: float
    age: AgeSpec | None
    model: FaceNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int  # per rank
    feed: Feed
    header: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        # Rank 0 validates, checkpoints and writes; the other ranks only train.
        return self.rank == 0

    def loss(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        task_weights = {t: cfg.task_weights[t] for t in cfg.tasks}
        loss = total_loss(out, targets, task_weights, cfg.label_smoothing, self.age, cfg.age_reg_weight)
        if cfg.teacher:
            loss = loss + teacher_loss(out, targets, cfg.teacher_embed_weight, cfg.teacher_soft_weight)
        return loss


@dataclass
class Progress:
    """Where a run stands after its last finished epoch; last.pt carries it, so a resumed run
    continues from there."""

    next_epoch: int = 0  # 0-based
    best_score: float = -math.inf
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)  # history.csv rows
    stopped_by: str | None = None
    train_seconds: float = 0.0  # in the training loop
    wall_seconds: float = 0.0  # in training + validation


def train(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train the model for ``cfg.tasks``; returns the test metrics of the best checkpoint.

    Writes into ``run_dir``: config.yaml, history.csv, best.pt, last.pt, metrics.json.
    Under torchrun each rank trains on its shard of every epoch's balanced draw; rank 0
    validates, checkpoints and writes. With ``resume`` it continues from last.pt exactly
    where an interrupted run (even ``kill -9``) left it.
    """
    run = setup(cfg, data_dir, run_dir)
    last = _checked_last(run.run_dir / LAST, cfg, run.split_id, run.world) if resume else None
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run.run_dir / CONFIG)
    progress = resume_from(run, last, log) if last is not None else start(run, log)
    net: nn.Module = nn.parallel.DistributedDataParallel(run.model) if run.world > 1 else run.model
    while progress.next_epoch < cfg.epochs and not progress.stopped_by:
        run_epoch(run, net, progress, log)
    result = finish(run, progress, log) if run.main else {}
    if run.world > 1:
        dist.barrier()
    return result


def setup(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path) -> Run:
    """Everything a run trains with, in a fixed order (the seeded model initialisation comes
    first, so a run replays exactly); writes nothing."""
    rank, world, device = init_distributed(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    prepared = load_training_data(data_dir, cfg.batch_size, world)
    train_set = prepared.part("train")
    torch.manual_seed(cfg.seed)
    mean = float(train_set.images.mean() / 255)
    std = float(train_set.images.std() / 255)
    age = make_age_spec(cfg.age_head, cfg.age_bins, train_set.age) if "age" in cfg.tasks else None
    heads = model_heads(cfg.tasks, age)
    if cfg.teacher_embed_weight > 0:
        heads[TEACHER_HEAD] = EMBED_DIM
    model = FaceNet(train_set.channels, cfg.width, cfg.stem, cfg.dropout, heads).to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / world) / (cfg.batch_size // world))
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    run = Run(
        cfg=cfg,
        run_dir=Path(run_dir),
        rank=rank,
        world=world,
        device=device,
        prepared=prepared,
        split_id=split_hash(prepared.data.ids, prepared.split),
        mean=mean,
        std=std,
        age=age,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        steps_per_epoch=steps_per_epoch,
        feed=make_feed(train_set, cfg, mean, std, device, rank, world),
    )
    run.header = checkpoint_state(run)
    return run


def load_training_data(data_dir: str | Path, batch_size: int, world: int) -> Prepared:
    """The prepared data, refused when a split is too small to train, stop early or report on."""
    prepared = load_prepared(data_dir)
    n_train, n_val, n_test = (int((prepared.split == s).sum()) for s in ("train", "val", "test"))
    if n_train < batch_size or n_val == 0 or n_test == 0:
        raise InputError(
            f"{data_dir}: {n_train} training, {n_val} validation and {n_test} test faces; need at least "
            f"batch_size={batch_size} training faces and one of each other"
        )
    if batch_size % world:
        raise InputError(f"batch_size {batch_size} must divide by the {world} processes")
    return prepared


def make_feed(
    train_set: FaceData, cfg: TrainConfig, mean: float, std: float, device: torch.device, rank: int, world: int
) -> Feed:
    """The batch feed of a run: the whole training set moved to ``device`` once, the sampler's
    weights, the per-class augmentation strength and the seeded generators."""
    ethnicity = train_set.ethnicity.astype(np.int64)
    counts = np.bincount(ethnicity, minlength=len(CLASS_NAMES["ethnicity"]))
    targets = {
        "gender": train_set.gender.astype(np.int64),
        "ethnicity": ethnicity,
        "age": train_set.age.astype(np.float32),
    }
    if cfg.age_balance > 0:
        targets["age_weight"] = age_weights(train_set.age, cfg.age_balance).astype(np.float32)
    if cfg.teacher:
        teacher = load_cache(cfg.teacher, train_set.ids)
        if not teacher.has.any():
            raise InputError(f"{cfg.teacher}: the teacher cache answers none of the {len(train_set)} training faces")
        targets.update(
            teacher_has=teacher.has,
            teacher_embedding=teacher.embedding,
            teacher_gender=teacher.gender_prob,
            teacher_ethnicity=teacher.ethnicity_prob,
        )
    return Feed(
        images=torch.from_numpy(train_set.images).to(device),
        targets={task: torch.from_numpy(value).to(device) for task, value in targets.items()},
        sample_weights=class_sample_weights(ethnicity, cfg.sampling),
        strength=strength_per_class(counts, cfg.minority_power, cfg.max_strength).to(device),
        aug=AugmentConfig(**cfg.augment),
        mean=mean,
        std=std,
        batch_size=cfg.batch_size // world,
        rank=rank,
        world=world,
        sample_gen=torch.Generator().manual_seed(cfg.seed),
        aug_gen=torch.Generator().manual_seed(cfg.seed * 1000 + 1 + rank),
    )


def checkpoint_state(run: Run) -> dict:
    """The header of every checkpoint of a run (``faceattr.checkpoint``'s format): what rebuilds
    the model and its preprocessing and age decoding from the file alone, and what it was
    trained on. Each epoch adds the weights, its number and its validation metrics."""
    cfg, train_set = run.cfg, run.prepared.part("train")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_args": model_args(run.model),
        "config": cfg.to_dict(),
        "tasks": list(cfg.tasks),
        "class_names": {t: list(CLASS_NAMES[t]) for t in cfg.tasks if t in CLASS_NAMES},
        "age": run.age.to_dict() if run.age else None,
        "preprocessing": {
            "size": train_set.size,
            "channels": train_set.channels,
            "mean": run.mean,
            "std": run.std,
            "color": "gray" if train_set.channels == 1 else "rgb",
            "resize": "area",
        },
        "split_hash": run.split_id,
        "data": {"input_sha256": run.prepared.manifest.get("input", {}).get("sha256"), "train_faces": len(train_set)},
    }


def start(run: Run, log: Callable) -> Progress:
    """A fresh run: optionally initialised from another run's weights (``cfg.init_from``)."""
    if run.cfg.teacher and run.main:
        has = run.feed.targets["teacher_has"]
        log(
            f"teacher {run.cfg.teacher}: targets for {int(has.sum())} of {len(has)} training faces (the rest: labels only)"
        )
    if run.cfg.init_from:
        fresh = init_from_checkpoint(run.model, run.cfg.init_from, run.split_id)
        if run.main:
            log(f"initialised from {run.cfg.init_from}; new: {', '.join(fresh) or 'nothing'}")
    return Progress()


def resume_from(run: Run, last: dict, log: Callable) -> Progress:
    """Restore weights, optimiser, schedule, scaler and every generator from last.pt; returns
    where the run stood."""
    run.model.load_state_dict(last["model"])
    run.optimizer.load_state_dict(last["optimizer"])
    run.scheduler.load_state_dict(last["scheduler"])
    if last["scaler"]:  # empty when the run had no fp16 scaler (CPU, bf16)
        run.scaler.load_state_dict(last["scaler"])
    run.feed.sample_gen.set_state(last["rng"]["sample"])
    aug_state, cuda_state = last["rng"]["per_rank"][run.rank]
    run.feed.aug_gen.set_state(aug_state)
    torch.set_rng_state(last["rng"]["torch"])
    if cuda_state is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(cuda_state, run.device)
    progress = Progress(
        next_epoch=last["epoch"] + 1,
        best_score=last["best_score"],
        bad_epochs=last["bad_epochs"],
        history=last["history"],
        stopped_by=last["stopped_by"],
        train_seconds=last["train_seconds"],
        wall_seconds=last["wall_seconds"],
    )
    if run.main:
        stopped = f" ({progress.stopped_by})" if progress.stopped_by else ""
        log(f"resuming {run.run_dir} after epoch {last['epoch'] + 1}{stopped}")
        if progress.bad_epochs == 0:
            # A kill between writing last.pt and best.pt would leave best.pt one epoch behind.
            save_checkpoint(_weights_only(last), run.run_dir / BEST)
    return progress


def run_epoch(run: Run, net: nn.Module, progress: Progress, log: Callable) -> None:
    """Train one epoch on every rank; rank 0 validates, keeps the history, checkpoints and
    decides whether to stop, and every rank learns that decision (``progress.stopped_by``)."""
    epoch, cfg = progress.next_epoch, run.cfg
    start_time = time.perf_counter()
    with tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (run.main and sys.stderr.isatty()),
        mininterval=2,
        leave=False,
    ) as bar:
        train_loss, seen = train_one_epoch(
            net, run.feed.batches(), run.optimizer, run.scheduler, run.scaler, run.loss, run.amp_dtype, bar
        )
    epoch_seconds = time.perf_counter() - start_time
    progress.train_seconds += epoch_seconds

    decision: list = [None]
    rng_states = _gather((run.feed.aug_gen.get_state(), _cuda_rng(run.device)), run.world)
    if run.main:
        val = evaluate(run.model, run.prepared, "val", run.mean, run.std, run.device, run.age, cfg.eval_batch_size)
        epoch_wall = time.perf_counter() - start_time
        progress.wall_seconds += epoch_wall
        improved = val["score"] > progress.best_score
        if improved:
            progress.best_score, progress.bad_epochs = val["score"], 0
        else:
            progress.bad_epochs += 1
        progress.history.append(
            {
                "epoch": epoch + 1,
                "lr_end": run.optimizer.param_groups[0]["lr"],
                "train_loss": round(train_loss, 5),
                **{f"val_{k}": round(v, 5) for k, v in headline(val).items()},
                "seconds": round(epoch_seconds, 1),
                "train_img_per_s": round(seen * run.world / epoch_seconds, 1),
            }
        )
        if progress.bad_epochs >= cfg.patience:
            decision[0] = "early stopping"
        elif cfg.max_minutes and progress.wall_seconds + epoch_wall > cfg.max_minutes * 60:
            # Stop before an epoch (with its validation) that would overrun the wall-clock budget.
            decision[0] = "time budget"
        progress.stopped_by = decision[0]
        save_epoch(run, progress, epoch, val, improved, rng_states)
        log(
            f"epoch {epoch + 1}/{cfg.epochs} loss {train_loss:.4f} val "
            + " ".join(f"{k} {v:.4f}" for k, v in headline(val).items())
            + f" ({epoch_seconds:.0f} s, {progress.history[-1]['train_img_per_s']:.0f} img/s)"
            + (" *" if improved else "")
        )
    if run.world > 1:
        dist.broadcast_object_list(decision, src=0)
    progress.stopped_by, progress.next_epoch = decision[0], epoch + 1


def save_epoch(run: Run, progress: Progress, epoch: int, val: dict, improved: bool, rng_states: list) -> None:
    """last.pt (weights plus the training state), best.pt when the epoch improved, history.csv.

    last.pt is written first: a kill before best.pt is written is repaired on resume."""
    weights = {**run.header, "model": run.model.state_dict(), "epoch": epoch, "metrics": {"val": val}}
    training = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best_score": progress.best_score,
        "bad_epochs": progress.bad_epochs,
        "history": progress.history,
        "train_seconds": progress.train_seconds,
        "wall_seconds": progress.wall_seconds,
        "stopped_by": progress.stopped_by,
        "world_size": run.world,
        "rng": {"sample": run.feed.sample_gen.get_state(), "torch": torch.get_rng_state(), "per_rank": rng_states},
    }
    save_checkpoint({**weights, **training}, run.run_dir / LAST)
    if improved:
        save_checkpoint(weights, run.run_dir / BEST)
    _write_history(progress.history, run.run_dir / HISTORY)


def finish(run: Run, progress: Progress, log: Callable) -> dict:
    """After the last epoch (rank 0): reload best.pt, fit the two-stage head's soft-routing
    temperature on validation, score the test split and write metrics.json; returns it."""
    cfg = run.cfg
    best = load_checkpoint(run.run_dir / BEST)
    run.model.load_state_dict(best["model"])
    age = run.age
    if age is not None and age.head == "two_stage":
        age = fit_routing(run, best, log)
    test = evaluate(run.model, run.prepared, "test", run.mean, run.std, run.device, age, cfg.eval_batch_size)
    result = {
        "test": test,
        "best_epoch": best["epoch"] + 1,
        "epochs_run": len(progress.history),
        "stopped_by": progress.stopped_by or "epochs",
        "train_minutes": round(progress.train_seconds / 60, 2),
        "train_and_validation_minutes": round(progress.wall_seconds / 60, 2),
        "device": str(run.device),
        "world_size": run.world,
        "split_hash": run.split_id,
        "config": cfg.to_dict(),
    }
    write_json(result, run.run_dir / METRICS)
    log(
        "test: "
        + ", ".join(f"{k} {v:.4f}" for k, v in headline(test).items())
        + f" (best epoch {result['best_epoch']}, {result['train_minutes']} min)"
    )
    return result


def fit_routing(run: Run, best: dict, log: Callable) -> AgeSpec:
    """The two-stage head's soft-routing temperature, fitted on validation and stored in best.pt
    with the weights, so every prediction from then on (test included) uses it."""
    val = run.prepared.part("val")
    pred = predict_outputs(run.model, val.images, run.mean, run.std, run.device, run.age, run.cfg.eval_batch_size)
    temperature = fit_routing_temperature(pred["age_bin_prob"], pred["age_bin_ages"], val.age)
    age = AgeSpec(**{**run.age.to_dict(), "routing_temperature": temperature})
    best["age"] = age.to_dict()
    save_checkpoint(best, run.run_dir / BEST)
    log(f"soft-routing temperature fitted on validation: {temperature}")
    return age


def _checked_last(path: Path, cfg: TrainConfig, split_id: str, world: int) -> dict:
    """last.pt of the run to resume, refused when config, split or process count differ."""
    ckpt = load_checkpoint(path)
    if ckpt["config"] != cfg.to_dict():
        raise InputError(f"{path}: was trained with a different config; resume needs the same one")
    if ckpt["split_hash"] != split_id:
        raise InputError(f"{path}: was trained on a different split ({ckpt['split_hash']}, this data {split_id})")
    if ckpt["world_size"] != world:
        raise InputError(f"{path}: was trained on {ckpt['world_size']} process(es); resume with the same number")
    return ckpt


def _weights_only(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


def _cuda_rng(device: torch.device) -> torch.Tensor | None:
    # Dropout on a GPU draws from the CUDA generator; resume must restore it too.
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _gather(obj: object, world: int) -> list:
    """Every rank's ``obj`` (small, picklable), in rank order, on every rank."""
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def headline(metrics: dict) -> dict[str, float]:
    """The few numbers worth a log line or a history column, for the tasks present."""
    out = {}
    if "gender" in metrics:
        out["gender_acc"] = metrics["gender"]["accuracy"]
    if "ethnicity" in metrics:
        out["ethnicity_acc"] = metrics["ethnicity"]["accuracy"]
        out["ethnicity_macro_f1"] = metrics["ethnicity"]["macro_f1"]
    if "age" in metrics:
        out["age_mae"] = metrics["age"]["mae"]
        out["age_cs5"] = metrics["age"]["cs5"]
        if "bin_accuracy" in metrics["age"]:
            out["age_bin_acc"] = metrics["age"]["bin_accuracy"]
    out["score"] = metrics["score"]
    return out
