"""Training configuration: one dataclass of plain values, resolved as defaults < profile YAML <
user YAML < ``--set key=value`` overrides, and written into every run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from faceattr.inputerror import InputError

PROFILES = ("quick", "cpu60", "best")


@dataclass
class TrainConfig:
    """Everything a training run depends on; seed + config reproduce a run."""

    name: str = "multitask"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # Model: ResNet-18 topology, stem and base width chosen for the CPU budget.
    stem: str = "s1pool"
    width: int = 32
    dropout: float = 0.3
    # Optimisation.
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    task_weights: dict = field(default_factory=lambda: {"gender": 1.0, "ethnicity": 1.0})
    patience: int = 8  # epochs without a better validation score before stopping
    max_minutes: float = 0.0  # wall-clock cap on training (0 = none); the schedule is not rescaled
    amp: bool = True  # mixed precision on CUDA; ignored on CPU
    # Data pipeline: balanced sampling and stronger augmentation for rarer ethnicities.
    sampling: str = "sqrt"  # off | sqrt | full
    minority_power: float = 0.0  # > 0 leaks the label through augmentation strength; see README
    max_strength: float = 2.0
    augment: dict = field(default_factory=dict)  # overrides of faceattr.augment.AugmentConfig fields
    eval_batch_size: int = 512

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _known_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _load_yaml(path: Path | str, text: str | None = None) -> dict:
    try:
        values = yaml.safe_load(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def profile_values(profile: str) -> dict:
    """The values of a built-in profile (quick, cpu60, best)."""
    if profile not in PROFILES:
        raise InputError(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
    text = resources.files("faceattr.profiles").joinpath(f"{profile}.yaml").read_text()
    return _load_yaml(f"profile {profile}", text)


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` strings to a dict, values parsed as YAML scalars (``lr=1e-3``, ``amp=false``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resolve_config(
    profile: str | None = None, config_file: Path | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Defaults < profile < config file < overrides; unknown keys and wrong types are errors."""
    values: dict = {}
    sources = []
    if profile:
        sources.append((f"profile {profile}", profile_values(profile)))
    if config_file:
        sources.append((str(config_file), _load_yaml(config_file)))
    if overrides:
        sources.append(("--set", overrides))
    known = _known_fields()
    defaults = TrainConfig()
    for where, layer in sources:
        for key, value in layer.items():
            if key not in known:
                raise InputError(f"{where}: unknown config key {key!r} (known: {', '.join(sorted(known))})")
            expected = type(getattr(defaults, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise InputError(f"{where}: {key} = {value!r}: expected {expected.__name__}")
            values[key] = value
    cfg = TrainConfig(**values)
    _check(cfg)
    return cfg


def _check(cfg: TrainConfig) -> None:
    checks = [
        (cfg.stem in ("s1", "s1pool", "s2", "s2pool"), "stem", "one of s1, s1pool, s2, s2pool"),
        (cfg.width >= 1, "width", ">= 1"),
        (cfg.epochs >= 1, "epochs", ">= 1"),
        (cfg.batch_size >= 2, "batch_size", ">= 2"),
        (cfg.optimizer in ("adamw", "sgd"), "optimizer", "adamw or sgd"),
        (cfg.lr > 0, "lr", "> 0"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
        (0 <= cfg.dropout < 1, "dropout", "in [0, 1)"),
        (cfg.sampling in ("off", "sqrt", "full"), "sampling", "off, sqrt or full"),
        (cfg.warmup_epochs >= 0, "warmup_epochs", ">= 0"),
        (
            set(cfg.task_weights) <= {"gender", "ethnicity"} and cfg.task_weights,
            "task_weights",
            "weights for gender and/or ethnicity",
        ),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise InputError(f"config {key} = {getattr(cfg, key)!r}: expected {expected}")


def write_config(cfg: TrainConfig, path: Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    import os

    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)
    return Path(path)
