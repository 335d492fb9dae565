"""The multitask training engine: a plain loop over in-memory uint8 faces with batch
augmentation on tensors, balanced sampling, label-smoothed losses, warmup + cosine LR, early
stopping, self-describing atomic checkpoints, exact resume, and optional DDP via torchrun."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from faceattr import __version__
from faceattr.augment import AugmentConfig, augment_batch, normalize, strength_per_class, to_input, to_unit
from faceattr.cache import Prepared, load_prepared, write_json
from faceattr.config import TrainConfig, write_config
from faceattr.inputerror import InputError
from faceattr.metrics import CLASS_NAMES, head_metrics, selection_score
from faceattr.model import FaceNet, build_model, model_args
from faceattr.sampling import class_sample_weights, epoch_indices
from faceattr.split import split_hash

CHECKPOINT_FORMAT = "faceattr-checkpoint-1"
TASKS = ("gender", "ethnicity")


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' means the local GPU when there is one, else the CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine (use --set device=cpu)")
    return torch.device(name)


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; 1 process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


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


def multitask_loss(
    out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], weights: dict[str, float], smoothing: float
) -> torch.Tensor:
    """Weighted sum of label-smoothed cross-entropies, one per head named in ``weights``."""
    return sum(w * F.cross_entropy(out[t].float(), targets[t], label_smoothing=smoothing) for t, w in weights.items())


@torch.inference_mode()
def predict_probs(
    model: FaceNet, images: np.ndarray, mean: float, std: float, device: torch.device, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """Softmax probabilities per head for uint8 faces (N, H, W[, C]): {head: (N, K)}."""
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[start : start + batch_size]).to(device), mean, std)
        for head, logits in model(x).items():
            out.setdefault(head, []).append(torch.softmax(logits.float(), 1).cpu().numpy())
    model.train(was_training)
    return {head: np.concatenate(parts) for head, parts in out.items()}


def evaluate(
    model: FaceNet, prepared: Prepared, split: str, mean: float, std: float, device: torch.device, batch_size: int = 512
) -> dict:
    """Gender and ethnicity metrics of ``model`` on one split of a prepared dataset."""
    part = prepared.part(split)
    probs = predict_probs(model, part.images, mean, std, device, batch_size)
    labels = {"gender": part.gender, "ethnicity": part.ethnicity}
    metrics = {t: head_metrics(labels[t].astype(np.int64), probs[t], CLASS_NAMES[t]) for t in TASKS if t in probs}
    metrics["score"] = selection_score(metrics)
    return metrics


def save_checkpoint(state: dict, path: Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
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


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> FaceNet:
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _write_history(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def train(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train the multitask model; returns the test metrics of the best checkpoint.

    Writes into ``run_dir``: config.yaml, history.csv, best.pt, last.pt, metrics.json.
    Under torchrun each rank trains on its shard of every epoch's balanced draw; rank 0
    validates, checkpoints and writes. With ``resume`` it continues from last.pt exactly
    where an interrupted run (even ``kill -9``) left it.
    """
    rank, world, local_rank = init_distributed()
    device = select_device(cfg.device, local_rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    main_proc = rank == 0
    prepared = load_prepared(data_dir)
    train_set, val_count = prepared.part("train"), int((prepared.split == "val").sum())
    if len(train_set) < cfg.batch_size or val_count == 0:
        raise InputError(
            f"{data_dir}: {len(train_set)} training and {val_count} validation faces; need at least batch_size={cfg.batch_size} and 1"
        )
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    mean = float(train_set.images.mean() / 255)
    std = float(train_set.images.std() / 255)
    model = FaceNet(in_channels=train_set.channels, width=cfg.width, stem=cfg.stem, dropout=cfg.dropout).to(device)
    optimizer = make_optimizer(model, cfg)
    per_rank_batch = cfg.batch_size // world
    steps_per_epoch = math.ceil(len(train_set) / (per_rank_batch * world))
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # The draw of sample indices uses one generator identical on all ranks (so the shards are
    # disjoint); augmentation uses a per-rank generator.
    sample_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1 + rank)
    images = torch.from_numpy(train_set.images).to(device)  # (N, H, W[, C]) uint8, the whole set
    targets_all = {t: torch.from_numpy(getattr(train_set, t).astype(np.int64)).to(device) for t in TASKS}
    weights = class_sample_weights(train_set.ethnicity.astype(np.int64), cfg.sampling)
    counts = np.bincount(train_set.ethnicity.astype(np.int64), minlength=len(CLASS_NAMES["ethnicity"]))
    strength = strength_per_class(counts, cfg.minority_power, cfg.max_strength).to(device)
    aug_cfg = AugmentConfig(**cfg.augment)

    start_epoch, best_score, bad_epochs, history, elapsed = 0, -math.inf, 0, [], 0.0
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        if ckpt["config"] != cfg.to_dict():
            raise InputError(f"{run_dir / 'last.pt'}: was trained with a different config; resume needs the same one")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sample_gen.set_state(ckpt["rng"]["sample"])
        aug_gen.set_state(ckpt["rng"]["aug"][rank])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, best_score, bad_epochs = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["bad_epochs"]
        history, elapsed = ckpt["history"], ckpt["train_seconds"]
        if main_proc:
            log(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}")
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    common = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_args": model_args(model),
        "config": cfg.to_dict(),
        "class_names": {t: list(CLASS_NAMES[t]) for t in TASKS},
        "preprocessing": {
            "size": train_set.size,
            "channels": train_set.channels,
            "mean": mean,
            "std": std,
            "color": "gray" if train_set.channels == 1 else "rgb",
            "resize": "area",
        },
        "split_hash": split_hash(prepared.data.ids, prepared.split),
        "data": {"input_sha256": prepared.manifest.get("input", {}).get("sha256"), "train_faces": len(train_set)},
    }
    stop_reason = "epochs"
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        order = torch.from_numpy(epoch_indices(weights, len(train_set), sample_gen, rank, world)).to(device)
        total_loss, seen = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (main_proc and sys.stderr.isatty()),
            mininterval=10,
            leave=False,
        )
        for step in bar:
            batch = order[step * per_rank_batch : (step + 1) * per_rank_batch]
            if len(batch) == 0:
                continue
            x = augment_batch(to_unit(images[batch]), strength[targets_all["ethnicity"][batch]], aug_gen, aug_cfg)
            x = normalize(x, mean, std)
            targets = {t: targets_all[t][batch] for t in TASKS}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = multitask_loss(net(x), targets, cfg.task_weights, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{seen * world / (time.perf_counter() - t0):.0f}")
        epoch_seconds = time.perf_counter() - t0
        elapsed += epoch_seconds

        stop = [False]
        if main_proc:
            val = evaluate(model, prepared, "val", mean, std, device, cfg.eval_batch_size)
            improved = val["score"] > best_score
            best_score, bad_epochs = (val["score"], 0) if improved else (best_score, bad_epochs + 1)
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": round(total_loss / max(seen, 1), 5),
                    "val_gender_acc": round(val["gender"]["accuracy"], 5),
                    "val_ethnicity_acc": round(val["ethnicity"]["accuracy"], 5),
                    "val_ethnicity_macro_f1": round(val["ethnicity"]["macro_f1"], 5),
                    "val_score": round(val["score"], 5),
                    "seconds": round(epoch_seconds, 1),
                    "train_img_per_s": round(seen * world / epoch_seconds, 1),
                }
            )
            _write_history(history, run_dir / "history.csv")
            weights_state = {**common, "model": model.state_dict(), "epoch": epoch, "metrics": {"val": val}}
            if improved:
                save_checkpoint(weights_state, run_dir / "best.pt")
            aug_states = _gather_states(aug_gen.get_state(), world)
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
                    "rng": {"sample": sample_gen.get_state(), "aug": aug_states, "torch": torch.get_rng_state()},
                },
                run_dir / "last.pt",
            )
            log(
                f"epoch {epoch + 1}/{cfg.epochs} loss {history[-1]['train_loss']:.4f} val gender acc "
                f"{val['gender']['accuracy']:.4f} ethnicity acc {val['ethnicity']['accuracy']:.4f} macro-F1 "
                f"{val['ethnicity']['macro_f1']:.4f} ({epoch_seconds:.0f} s, {history[-1]['train_img_per_s']:.0f} img/s)"
                + (" *" if improved else "")
            )
            if bad_epochs >= cfg.patience:
                stop[0], stop_reason = True, "early stopping"
            elif cfg.max_minutes and elapsed + epoch_seconds > cfg.max_minutes * 60:
                # Stop before an epoch that would overrun the wall-clock budget.
                stop[0], stop_reason = True, "time budget"
        elif world > 1:
            _gather_states(aug_gen.get_state(), world)
        if world > 1:
            dist.broadcast_object_list(stop, src=0)
        if stop[0]:
            break

    result = {}
    if main_proc:
        best = load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(best["model"])
        test = evaluate(model, prepared, "test", mean, std, device, cfg.eval_batch_size)
        result = {
            "test": test,
            "best_epoch": best["epoch"] + 1,
            "epochs_run": len(history),
            "stopped_by": stop_reason,
            "train_minutes": round(elapsed / 60, 2),
            "device": str(device),
            "world_size": world,
            "split_hash": common["split_hash"],
            "config": cfg.to_dict(),
        }
        write_json(result, run_dir / "metrics.json")
        log(
            f"test: gender acc {test['gender']['accuracy']:.4f}, ethnicity acc {test['ethnicity']['accuracy']:.4f}, "
            f"macro-F1 {test['ethnicity']['macro_f1']:.4f} (best epoch {result['best_epoch']}, {result['train_minutes']} min)"
        )
    if world > 1:
        dist.barrier()
    return result


def _gather_states(state: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's augmentation-generator state (CPU tensors), gathered for last.pt."""
    if world == 1:
        return [state]
    out: list = [None] * world
    dist.all_gather_object(out, state)
    return out
