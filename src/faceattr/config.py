"""Training configuration: one dataclass of plain values, resolved as defaults < caller's base
values < profile YAML < user YAML < ``--set key=value`` overrides, and written into every run
folder."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from faceattr.atomic import atomic_path
from faceattr.inputerror import InputError
from faceattr.profiles import PROFILES


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
    # Tasks trained together on the shared backbone; weights apply to the tasks listed.
    tasks: list = field(default_factory=lambda: ["gender", "ethnicity"])
    task_weights: dict = field(default_factory=lambda: {"gender": 1.0, "ethnicity": 1.0, "age": 1.0})
    age_head: str = "two_stage"  # two_stage | direct | dex
    age_bins: int = 6
    age_reg_weight: float = 0.1  # weight of the in-bin regression (years) against the bin cross-entropy
    # > 0 weights each face's age loss by (training faces in its 5-year age band) ** -age_balance
    # (mean weight 1): the rare old and very young faces count more, against the pull to the middle.
    age_balance: float = 0.0
    # Distillation from a face teacher (faceattr.teacher): a cache of its embeddings and probe
    # answers per training face, and the weights of regressing the embedding (cosine) and of
    # matching the probes' gender/ethnicity probabilities (soft cross-entropy).
    teacher: str = ""
    teacher_embed_weight: float = 0.0
    teacher_soft_weight: float = 0.0
    init_from: str = ""  # checkpoint whose matching weights start this run (fine-tuning)
    patience: int = 8  # epochs without a better validation score before stopping
    max_minutes: float = 0.0  # wall-clock cap on training + validation (0 = none); the schedule is not rescaled
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
    if text is None and Path(path).is_dir():
        raise InputError(f"{path}: is a folder, expected a YAML config file")
    try:
        values = yaml.safe_load(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected a YAML config file)") from None
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
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


def _as_float(value: object) -> object:
    """A str that float() accepts as a float: PyYAML reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def resolve_config(
    profile: str | None = None,
    config_file: Path | None = None,
    overrides: dict | None = None,
    base: dict | None = None,
) -> TrainConfig:
    """Defaults < base < profile < config file < overrides; unknown keys and wrong types are errors.

    ``base`` holds a caller's own defaults (``train age`` adds the age task) that any profile,
    config file or override still beats.
    """
    values: dict = {}
    sources = []
    if base:
        sources.append(("base values", base))
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
            if expected is float:
                value = _as_float(value)
            elif key == "task_weights" and isinstance(value, dict):
                value = {k: _as_float(v) for k, v in value.items()}
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise InputError(f"{where}: {key} = {value!r}: expected {expected.__name__}")
            values[key] = value
    cfg = TrainConfig(**values)
    _check(cfg)
    return cfg


def _check(cfg: TrainConfig) -> None:
    # Imported here so that importing the config stays light; none of these import config.
    from faceattr.augment import AugmentConfig
    from faceattr.model import STEMS
    from faceattr.sampling import MODES
    from faceattr.tasks import AGE_HEADS, TASKS

    def choice(names: tuple[str, ...]) -> str:
        return "one of " + ", ".join(names)

    modes = tuple(MODES)  # MODES maps each mode to its exponent

    checks = [
        (bool(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", cfg.device)), "device", "auto, cpu, cuda or cuda:N"),
        (cfg.threads >= 0, "threads", ">= 0"),
        (cfg.stem in STEMS, "stem", choice(STEMS)),
        (cfg.width >= 1, "width", ">= 1"),
        (cfg.epochs >= 1, "epochs", ">= 1"),
        (cfg.batch_size >= 2, "batch_size", ">= 2"),
        (cfg.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
        (cfg.optimizer in ("adamw", "sgd"), "optimizer", "adamw or sgd"),
        (cfg.lr > 0, "lr", "> 0"),
        (cfg.weight_decay >= 0, "weight_decay", ">= 0"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
        (0 <= cfg.dropout < 1, "dropout", "in [0, 1)"),
        (cfg.sampling in modes, "sampling", choice(modes)),
        (cfg.minority_power >= 0, "minority_power", ">= 0"),
        (cfg.max_strength >= 1, "max_strength", ">= 1"),
        (cfg.warmup_epochs >= 0, "warmup_epochs", ">= 0"),
        (cfg.patience >= 1, "patience", ">= 1"),
        (cfg.max_minutes >= 0, "max_minutes", ">= 0 (0 = no limit)"),
        (bool(cfg.tasks) and set(cfg.tasks) <= set(TASKS), "tasks", "a list of " + ", ".join(TASKS)),
        (set(cfg.tasks) <= set(cfg.task_weights), "task_weights", "a weight for every task in tasks"),
        (cfg.age_head in AGE_HEADS, "age_head", choice(AGE_HEADS)),
        (2 <= cfg.age_bins <= 20, "age_bins", "in 2..20"),
        (0 <= cfg.age_balance <= 2, "age_balance", "in [0, 2]"),
        (cfg.age_balance == 0 or cfg.age_head == "two_stage", "age_balance", "0 unless age_head is two_stage"),
        (cfg.teacher_embed_weight >= 0, "teacher_embed_weight", ">= 0"),
        (cfg.teacher_soft_weight >= 0, "teacher_soft_weight", ">= 0"),
        (
            bool(cfg.teacher) or cfg.teacher_embed_weight == cfg.teacher_soft_weight == 0,
            "teacher",
            "a teacher cache (.npz) when teacher_embed_weight or teacher_soft_weight > 0",
        ),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise InputError(f"config {key} = {getattr(cfg, key)!r}: expected {expected}")
    for task, weight in cfg.task_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise InputError(f"config task_weights[{task!r}] = {weight!r}: expected a number >= 0")
    known = [f.name for f in dataclasses.fields(AugmentConfig)]
    for key in cfg.augment:
        if key not in known:
            raise InputError(f"config augment: unknown key {key!r} (known: {', '.join(known)})")
    # The frame's bands: two side bands over half the width each would cover the whole face.
    aug = AugmentConfig(**cfg.augment)

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if not (number(aug.frame_p) and 0 <= aug.frame_p <= 1):
        raise InputError(f"config augment.frame_p = {aug.frame_p!r}: expected a number in [0, 1]")
    for key, hi in (("frame_side", 0.5), ("frame_top", 1.0)):
        value = getattr(aug, key)
        pair = list(value) if isinstance(value, list | tuple) else None
        if not (pair and len(pair) == 2 and all(number(v) for v in pair) and 0 <= pair[0] <= pair[1] <= hi):
            raise InputError(f"config augment.{key} = {value!r}: expected [low, high] with 0 <= low <= high <= {hi}")


def write_config(cfg: TrainConfig, path: Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Path(path)
