"""Training throughput on this machine, one run: (a) the bare model step on random tensors,
(b) faceattr's full pipeline (balanced sampling + tensor batch augmentation + step), (c) a naive
baseline (per-image PIL/torchvision transforms through a DataLoader + step). Also the data time
per step of (b) as a share of its step time. Writes results/bench_train.json.

python bench/train_throughput.py --data prepared/kaggle48 --steps 30
"""

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from faceattr.atomic import write_json
from faceattr.augment import AugmentConfig, augment_batch, strength_per_class
from faceattr.cache import load_prepared
from faceattr.config import resolve_config
from faceattr.model import FaceNet
from faceattr.preprocess import normalize, to_unit
from faceattr.sampling import class_sample_weights, epoch_indices
from faceattr.tasks import total_loss
from faceattr.train import make_optimizer


class PILFaces(Dataset):
    """The usual notebook pipeline: one PIL image at a time, torchvision transforms per image."""

    def __init__(self, images: np.ndarray, gender: np.ndarray, ethnicity: np.ndarray) -> None:
        self.images, self.gender, self.ethnicity = images, gender, ethnicity
        self.tf = transforms.Compose(
            [
                transforms.RandomAffine(10, translate=(0.08, 0.08), scale=(0.9, 1.1)),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(brightness=0.2, contrast=0.2),
                transforms.ToTensor(),
                transforms.RandomErasing(p=0.25, scale=(0.02, 0.15)),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int):
        return self.tf(Image.fromarray(self.images[k])), int(self.gender[k]), int(self.ethnicity[k])


def step(model, optimizer, x, targets, cfg) -> None:
    weights = {t: cfg.task_weights[t] for t in cfg.tasks}
    loss = total_loss(model(x), targets, weights, cfg.label_smoothing, None, cfg.age_reg_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile", default="cpu60")
    p.add_argument("--out", type=Path, default=Path("results/bench_train.json"))
    args = p.parse_args()
    cfg = resolve_config(args.profile)
    torch.manual_seed(0)
    train = load_prepared(args.data).part("train")
    b = cfg.batch_size
    model = FaceNet(width=cfg.width, stem=cfg.stem, dropout=cfg.dropout)
    optimizer = make_optimizer(model, cfg)
    images = torch.from_numpy(train.images)
    gender = torch.from_numpy(train.gender.astype(np.int64))
    ethnicity = torch.from_numpy(train.ethnicity.astype(np.int64))
    results = {}

    # (a) the bare model step: the ceiling any input pipeline can reach.
    x = torch.randn(b, 1, train.size, train.size)
    t = {"gender": torch.randint(0, 2, (b,)), "ethnicity": torch.randint(0, 5, (b,))}
    step(model, optimizer, x, t, cfg)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(model, optimizer, x, t, cfg)
    results["bare_model_img_per_s"] = args.steps * b / (time.perf_counter() - start)

    # (b) faceattr's pipeline, timing the data part separately.
    gen = torch.Generator().manual_seed(0)
    weights = class_sample_weights(train.ethnicity.astype(np.int64), cfg.sampling)
    strength = strength_per_class(np.bincount(train.ethnicity, minlength=5), cfg.minority_power, cfg.max_strength)
    order = torch.from_numpy(epoch_indices(weights, args.steps * b + b, gen))
    mean, std = float(train.images.mean() / 255), float(train.images.std() / 255)
    aug = AugmentConfig(**cfg.augment)
    data_time = 0.0
    start = time.perf_counter()
    for k in range(args.steps):
        t0 = time.perf_counter()
        idx = order[k * b : (k + 1) * b]
        xb = normalize(augment_batch(to_unit(images[idx]), strength[ethnicity[idx]], gen, aug), mean, std)
        tb = {"gender": gender[idx], "ethnicity": ethnicity[idx]}
        data_time += time.perf_counter() - t0
        step(model, optimizer, xb, tb, cfg)
    total = time.perf_counter() - start
    results["pipeline_img_per_s"] = args.steps * b / total
    results["pipeline_data_share_of_step"] = data_time / total

    # (c) the naive per-image baseline, with the DataLoader workers the machine has.
    workers = min(2, torch.get_num_threads())
    loader = DataLoader(
        PILFaces(train.images, train.gender, train.ethnicity),
        batch_size=b,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
    )
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    naive_data = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        xb, g, e = next(it)
        xb = (xb - mean) / std
        naive_data += time.perf_counter() - t0
        step(model, optimizer, xb, {"gender": g, "ethnicity": e}, cfg)
    total = time.perf_counter() - start
    results["naive_img_per_s"] = args.steps * b / total
    results["naive_data_share_of_step"] = naive_data / total
    results["naive_dataloader_workers"] = workers

    results = {k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}
    results["pipeline_vs_naive"] = round(results["pipeline_img_per_s"] / results["naive_img_per_s"], 3)
    results["pipeline_vs_bare_model"] = round(results["pipeline_img_per_s"] / results["bare_model_img_per_s"], 3)
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "model": {"stem": cfg.stem, "width": cfg.width, "batch_size": b, "steps": args.steps},
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, args.out)
    print(out)


if __name__ == "__main__":
    main()
