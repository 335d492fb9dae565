"""A tiny trained run for the explanation and error-cluster tests: synthetic 48x48 faces whose
brightness follows ethnicity, stripe direction gender and a central blob age, prepared and
split like real data, and a width-8 FaceNet with gender, ethnicity and two-stage age heads
trained for two epochs (a few seconds on one CPU thread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceattr.cache import Prepared, save_prepared
from faceattr.config import resolve_config
from faceattr.dataset import FaceData
from faceattr.train import train

SIDE = 48


def synthetic_faces(n: int, seed: int = 0) -> FaceData:
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    ethnicity = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    age = rng.integers(1, 80, n)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.where(gender[:, None, None] == 0, np.sin(yy / 2.0 + phase), np.sin(xx / 2.0 + phase))
    blob = ((yy - 24) ** 2 + (xx - 24) ** 2 < (4 + age[:, None, None] / 6) ** 2).astype(np.float32)
    base = 50 + 30 * ethnicity[:, None, None] + 35 * stripes + 30 * blob
    images = np.clip(base + rng.normal(0, 14, (n, SIDE, SIDE)), 0, 255).round().astype(np.uint8)
    return FaceData(
        images=images,
        age=age.astype(np.int16),
        gender=gender.astype(np.int8),
        ethnicity=ethnicity.astype(np.int8),
        ids=np.array([f"f{k:04d}" for k in range(n)]),
        names=np.array([f"f{k:04d}.jpg" for k in range(n)]),
        source="synthetic",
    )


def make_tiny_run(root: Path, n: int = 360) -> tuple[Path, Path]:
    """(run folder, prepared data folder) under ``root``; 60 % train, 20 % val, 20 % test."""
    data = synthetic_faces(n)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    data_dir = root / "prepared"
    data_dir.mkdir(parents=True)
    manifest = {"input": {"path": "synthetic", "sha256": "0" * 64}}
    save_prepared(data_dir, Prepared(data=data, split=split, group=np.arange(n), sha=data.ids, manifest=manifest))
    cfg = resolve_config(
        overrides={
            "stem": "s2",
            "width": 8,
            "epochs": 2,
            "batch_size": 32,
            "device": "cpu",
            "warmup_epochs": 0.5,
            "lr": 3e-3,
            "threads": 1,
            "tasks": ["gender", "ethnicity", "age"],
            "age_head": "two_stage",
            "name": "tiny",
        }
    )
    run_dir = root / "run"
    train(cfg, data_dir, run_dir, log=lambda *_: None)
    return run_dir, data_dir
