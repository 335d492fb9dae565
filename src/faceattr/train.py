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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from faceattr import __version__
from faceattr.age import age_metrics, age_to_bin, fit_routing_temperature
from faceattr.atomic import atomic_path
from faceattr.augment import AugmentConfig, augment_batch, normalize, strength_per_class, to_input, to_unit
from faceattr.cache import Prepared, load_prepared, write_json
from faceattr.config import TrainConfig, write_config
from faceattr.inputerror import InputError
from faceattr.metrics import CLASS_NAMES, head_metrics, selection_score
from faceattr.model import FaceNet, build_model, model_args
from faceattr.sampling import class_sample_weights, epoch_indices
from faceattr.split import split_hash
from faceattr.tasks import AgeSpec, decode, make_age_spec, model_heads, total_loss

CHECKPOINT_FORMAT = "faceattr-checkpoint-1"


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' means this process's GPU when there is one, else the CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine (use --set device=cpu)")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


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
        edges = np.asarray(age.edges)
        groups = {"gender": part.gender, "ethnicity": part.ethnicity}
        if age.head == "two_stage":
            pred_bin = pred["age_bin_prob"].argmax(1)
            metrics["age"] = age_metrics(part.age, pred["age"], edges, pred_bin, **groups)
            metrics["age_hard_routing"] = age_metrics(part.age, pred["age_hard"], edges, pred_bin, **groups)
        else:
            metrics["age"] = age_metrics(part.age, pred["age"], edges, age_to_bin(pred["age"], edges), **groups)
    metrics["score"] = selection_score(metrics)
    return metrics


def save_checkpoint(state: dict, path: Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a faceattr checkpoint safely (weights_only=True) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a traceback
        raise InputError(f"{path}: not a readable faceattr checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a faceattr checkpoint (expected format {CHECKPOINT_FORMAT})")
    return ckpt


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


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> FaceNet:
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


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


def train(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train the model for ``cfg.tasks``; returns the test metrics of the best checkpoint.

    Writes into ``run_dir``: config.yaml, history.csv, best.pt, last.pt, metrics.json.
    Under torchrun each rank trains on its shard of every epoch's balanced draw; rank 0
    validates, checkpoints and writes. With ``resume`` it continues from last.pt exactly
    where an interrupted run (even ``kill -9``) left it.
    """
    rank, world, device = init_distributed(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    main_proc = rank == 0
    prepared = load_prepared(data_dir)
    train_set = prepared.part("train")
    n_val, n_test = int((prepared.split == "val").sum()), int((prepared.split == "test").sum())
    if len(train_set) < cfg.batch_size or n_val == 0 or n_test == 0:
        raise InputError(
            f"{data_dir}: {len(train_set)} training, {n_val} validation and {n_test} test faces; need at least "
            f"batch_size={cfg.batch_size} training faces and one of each other"
        )
    if cfg.batch_size % world:
        raise InputError(f"batch_size {cfg.batch_size} must divide by the {world} processes")
    split_id = split_hash(prepared.data.ids, prepared.split)
    ckpt = _checked_last(run_dir / "last.pt", cfg, split_id, world) if resume else None
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    mean = float(train_set.images.mean() / 255)
    std = float(train_set.images.std() / 255)
    age = make_age_spec(cfg.age_head, cfg.age_bins, train_set.age) if "age" in cfg.tasks else None
    model = FaceNet(train_set.channels, cfg.width, cfg.stem, cfg.dropout, model_heads(cfg.tasks, age)).to(device)
    if cfg.init_from and ckpt is None:
        fresh = init_from_checkpoint(model, cfg.init_from, split_id)
        if main_proc:
            log(f"initialised from {cfg.init_from}; new: {', '.join(fresh) or 'nothing'}")
    optimizer = make_optimizer(model, cfg)
    per_rank_batch = cfg.batch_size // world
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / world) / per_rank_batch)  # per rank
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # The draw of sample indices uses one generator identical on all ranks (so the shards are
    # disjoint); augmentation uses a per-rank generator.
    sample_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1 + rank)
    images = torch.from_numpy(train_set.images).to(device)  # (N, H, W[, C]) uint8, the whole set
    targets = {
        "gender": torch.from_numpy(train_set.gender.astype(np.int64)).to(device),
        "ethnicity": torch.from_numpy(train_set.ethnicity.astype(np.int64)).to(device),
        "age": torch.from_numpy(train_set.age.astype(np.float32)).to(device),
    }
    task_weights = {t: cfg.task_weights[t] for t in cfg.tasks}
    sample_weights = class_sample_weights(train_set.ethnicity.astype(np.int64), cfg.sampling)
    counts = np.bincount(train_set.ethnicity.astype(np.int64), minlength=len(CLASS_NAMES["ethnicity"]))
    strength = strength_per_class(counts, cfg.minority_power, cfg.max_strength).to(device)
    aug_cfg = AugmentConfig(**cfg.augment)

    def loss_fn(out: dict[str, torch.Tensor], batch_targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return total_loss(out, batch_targets, task_weights, cfg.label_smoothing, age, cfg.age_reg_weight)

    start_epoch, best_score, bad_epochs, history, stop_reason = 0, -math.inf, 0, [], None
    elapsed, wall = 0.0, 0.0  # seconds in the training loop; in training + validation
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when the run had no fp16 scaler (CPU, bf16)
            scaler.load_state_dict(ckpt["scaler"])
        sample_gen.set_state(ckpt["rng"]["sample"])
        aug_state, cuda_state = ckpt["rng"]["per_rank"][rank]
        aug_gen.set_state(aug_state)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if cuda_state is not None and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, device)
        start_epoch, best_score, bad_epochs = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["bad_epochs"]
        history, stop_reason = ckpt["history"], ckpt["stopped_by"]
        elapsed, wall = ckpt["train_seconds"], ckpt["wall_seconds"]
        if main_proc:
            log(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}" + (f" ({stop_reason})" if stop_reason else ""))
            if bad_epochs == 0:
                # A kill between writing last.pt and best.pt would leave best.pt one epoch behind.
                save_checkpoint(_weights_only(ckpt), run_dir / "best.pt")
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    common = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_args": model_args(model),
        "config": cfg.to_dict(),
        "tasks": list(cfg.tasks),
        "class_names": {t: list(CLASS_NAMES[t]) for t in cfg.tasks if t in CLASS_NAMES},
        "age": age.to_dict() if age else None,
        "preprocessing": {
            "size": train_set.size,
            "channels": train_set.channels,
            "mean": mean,
            "std": std,
            "color": "gray" if train_set.channels == 1 else "rgb",
            "resize": "area",
        },
        "split_hash": split_id,
        "data": {"input_sha256": prepared.manifest.get("input", {}).get("sha256"), "train_faces": len(train_set)},
    }
    for epoch in range(start_epoch, cfg.epochs):
        if stop_reason:
            break
        start = time.perf_counter()
        order = torch.from_numpy(epoch_indices(sample_weights, len(train_set), sample_gen, rank, world)).to(device)
        batches = (
            make_batch(images, targets, order[k : k + per_rank_batch], strength, aug_gen, aug_cfg, mean, std)
            for k in range(0, len(order), per_rank_batch)
        )
        show = main_proc and sys.stderr.isatty()
        with tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not show,
            mininterval=2,
            leave=False,
        ) as progress:
            train_loss, seen = train_one_epoch(net, batches, optimizer, scheduler, scaler, loss_fn, amp_dtype, progress)
        epoch_seconds = time.perf_counter() - start
        elapsed += epoch_seconds

        # Rank 0 validates and decides; every rank learns the decision and sends its RNG states.
        decision: list = [None]
        rng_states = _gather((aug_gen.get_state(), _cuda_rng(device)), world)
        if main_proc:
            val = evaluate(model, prepared, "val", mean, std, device, age, cfg.eval_batch_size)
            epoch_wall = time.perf_counter() - start
            wall += epoch_wall
            improved = val["score"] > best_score
            best_score, bad_epochs = (val["score"], 0) if improved else (best_score, bad_epochs + 1)
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr_end": optimizer.param_groups[0]["lr"],
                    "train_loss": round(train_loss, 5),
                    **{f"val_{k}": round(v, 5) for k, v in headline(val).items()},
                    "seconds": round(epoch_seconds, 1),
                    "train_img_per_s": round(seen * world / epoch_seconds, 1),
                }
            )
            if bad_epochs >= cfg.patience:
                decision[0] = "early stopping"
            elif cfg.max_minutes and wall + epoch_wall > cfg.max_minutes * 60:
                # Stop before an epoch (with its validation) that would overrun the wall-clock budget.
                decision[0] = "time budget"
            weights_state = {**common, "model": model.state_dict(), "epoch": epoch, "metrics": {"val": val}}
            # last.pt first: a kill before best.pt is written is repaired on resume (see above).
            save_checkpoint(
                {
                    **weights_state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_score": best_score,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "train_seconds": elapsed,
                    "wall_seconds": wall,
                    "stopped_by": decision[0],
                    "world_size": world,
                    "rng": {"sample": sample_gen.get_state(), "torch": torch.get_rng_state(), "per_rank": rng_states},
                },
                run_dir / "last.pt",
            )
            if improved:
                save_checkpoint(weights_state, run_dir / "best.pt")
            _write_history(history, run_dir / "history.csv")
            log(
                f"epoch {epoch + 1}/{cfg.epochs} loss {train_loss:.4f} val "
                + " ".join(f"{k} {v:.4f}" for k, v in headline(val).items())
                + f" ({epoch_seconds:.0f} s, {history[-1]['train_img_per_s']:.0f} img/s)"
                + (" *" if improved else "")
            )
        if world > 1:
            dist.broadcast_object_list(decision, src=0)
        stop_reason = decision[0]

    result = {}
    if main_proc:
        best = load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(best["model"])
        if age is not None and age.head == "two_stage":
            # The soft-routing temperature is fitted on validation, stored with the weights,
            # and used for every prediction from then on (test included).
            val_pred = predict_outputs(model, prepared.part("val").images, mean, std, device, age, cfg.eval_batch_size)
            temperature = fit_routing_temperature(
                val_pred["age_bin_prob"], val_pred["age_bin_ages"], prepared.part("val").age
            )
            age = AgeSpec(**{**age.to_dict(), "routing_temperature": temperature})
            best["age"] = age.to_dict()
            save_checkpoint(best, run_dir / "best.pt")
            log(f"soft-routing temperature fitted on validation: {temperature}")
        test = evaluate(model, prepared, "test", mean, std, device, age, cfg.eval_batch_size)
        result = {
            "test": test,
            "best_epoch": best["epoch"] + 1,
            "epochs_run": len(history),
            "stopped_by": stop_reason or "epochs",
            "train_minutes": round(elapsed / 60, 2),
            "train_and_validation_minutes": round(wall / 60, 2),
            "device": str(device),
            "world_size": world,
            "split_hash": split_id,
            "config": cfg.to_dict(),
        }
        write_json(result, run_dir / "metrics.json")
        log(
            "test: "
            + ", ".join(f"{k} {v:.4f}" for k, v in headline(test).items())
            + f" (best epoch {result['best_epoch']}, {result['train_minutes']} min)"
        )
    if world > 1:
        dist.barrier()
    return result


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
    training_state = {
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
    }
    return {k: v for k, v in ckpt.items() if k not in training_state}


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
