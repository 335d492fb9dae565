"""Config: the precedence defaults < base < profile < file < --set, YAML quirks (``1e-3`` read as a
string), and every bad value, key or path ending in an InputError that names it."""

from __future__ import annotations

import re

import pytest

from faceattr.config import PROFILES, TrainConfig, parse_overrides, profile_values, resolve_config, write_config
from faceattr.inputerror import InputError
from faceattr.model import STEMS
from faceattr.sampling import MODES
from faceattr.tasks import AGE_HEADS


def test_precedence_defaults_base_profile_file_overrides(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("epochs: 7\nlr: 1.0e-3\nbatch_size: 64\n")
    base = {"tasks": ["gender", "ethnicity", "age"], "seed": 5, "width": 8, "epochs": 3, "batch_size": 16}
    quick = profile_values("quick")
    assert "width" in quick and not {"tasks", "seed"} & set(quick)
    cfg = resolve_config("quick", config, {"lr": 0.01}, base=base)
    assert cfg.tasks == ["gender", "ethnicity", "age"] and cfg.seed == 5  # base beats the defaults
    assert cfg.width == quick["width"] != 8  # the profile beats base
    assert cfg.epochs == 7 and cfg.batch_size == 64  # the file beats the profile and base
    assert cfg.lr == 0.01  # --set beats the file
    assert cfg.dropout == TrainConfig().dropout  # untouched keys keep the default
    assert resolve_config(base=base).epochs == 3


def test_exponent_without_a_dot_is_a_float(tmp_path):
    overrides = parse_overrides(["lr=1e-3", "weight_decay=5e-4", "warmup_epochs=2"])
    assert overrides["lr"] == "1e-3"  # what PyYAML gives; resolve_config turns it into a float
    cfg = resolve_config(overrides=overrides)
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-4 and cfg.warmup_epochs == 2.0
    assert isinstance(cfg.warmup_epochs, float)
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\ntask_weights: {gender: 1, ethnicity: 2e-1}\n")
    cfg = resolve_config(config_file=config)
    assert cfg.lr == 1e-3 and cfg.task_weights == {"gender": 1.0, "ethnicity": 0.2}
    with pytest.raises(InputError, match=r"--set: lr = 'fast': expected float"):
        resolve_config(overrides=parse_overrides(["lr=fast"]))


@pytest.mark.parametrize(
    "key, value",
    [
        ("eval_batch_size", 0),
        ("patience", 0),
        ("weight_decay", -0.1),
        ("max_minutes", -1.0),
        ("threads", -1),
        ("device", "gpu"),
        ("device", "cuda:x"),
        ("device", "cuda:"),
        ("minority_power", -0.5),
        ("max_strength", 0.5),
        ("stem", "s9"),
        ("sampling", "half"),
        ("age_head", "ordinal"),
        ("tasks", ["gender", "hair"]),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(InputError, match="^" + re.escape(f"config {key} = {value!r}: expected")):
        resolve_config(overrides={key: value})


@pytest.mark.parametrize("weight", [-1.0, "heavy", True, None])
def test_task_weights_must_be_non_negative_numbers(weight):
    with pytest.raises(InputError, match=r"^config task_weights\['gender'\] = .*: expected a number >= 0"):
        resolve_config(overrides={"task_weights": {"gender": weight, "ethnicity": 1.0}})


def test_augment_keys_are_augment_config_fields():
    assert resolve_config(overrides={"augment": {"max_rotate_deg": 5.0}}).augment == {"max_rotate_deg": 5.0}
    with pytest.raises(InputError, match=r"^config augment: unknown key 'rotate' \(known: max_translate, "):
        resolve_config(overrides={"augment": {"rotate": 5.0}})


@pytest.mark.parametrize(
    "augment, key",
    [
        ({"frame_p": 1.5}, "frame_p"),
        ({"frame_p": "often"}, "frame_p"),
        ({"frame_side": [0.2, 0.1]}, "frame_side"),
        ({"frame_side": [0.1, 0.6]}, "frame_side"),
        ({"frame_side": 0.1}, "frame_side"),
        ({"frame_top": [-0.1, 0.1]}, "frame_top"),
    ],
)
def test_frame_settings_out_of_range_are_refused(augment, key):
    with pytest.raises(InputError, match=rf"^config augment\.{key} = .*: expected "):
        resolve_config(overrides={"augment": augment})
    ok = {"frame_p": 0.3, "frame_side": [0.05, 0.2], "frame_top": [0.0, 0.15]}
    assert resolve_config(overrides={"augment": ok}).augment == ok


def test_choices_come_from_the_modules():
    for stem in STEMS:
        assert resolve_config(overrides={"stem": stem}).stem == stem
    for mode in MODES:
        assert resolve_config(overrides={"sampling": mode}).sampling == mode
    for head in AGE_HEADS:
        assert resolve_config(overrides={"age_head": head}).age_head == head
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert resolve_config(overrides={"device": device}).device == device


@pytest.mark.parametrize("item", ["augment={max_rotate_deg: 5", "tasks=[gender, age", "name=@home"])
def test_value_that_is_not_yaml_names_the_item(item):
    with pytest.raises(InputError, match="^" + re.escape(f"--set {item!r}: value is not valid YAML")):
        parse_overrides([item])


def test_unknown_keys_name_where_they_came_from(tmp_path):
    with pytest.raises(InputError, match=r"^--set: unknown config key 'widht'"):
        resolve_config(overrides={"widht": 3})
    with pytest.raises(InputError, match=r"^base values: unknown config key 'widht'"):
        resolve_config(base={"widht": 3})
    with pytest.raises(InputError, match=r"^base values: epochs = 'many': expected int"):
        resolve_config(base={"epochs": "many"})
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 3\n")
    with pytest.raises(InputError, match=rf"^{config}: unknown config key 'epoch'"):
        resolve_config(config_file=config)


def test_config_path_errors(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path}: is a folder, expected a YAML config file"):
        resolve_config(config_file=tmp_path)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none.yaml'}: no such config file"):
        resolve_config(config_file=tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(InputError, match=rf"^{broken}: not valid YAML"):
        resolve_config(config_file=broken)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves(profile):
    cfg = resolve_config(profile)
    assert isinstance(cfg, TrainConfig) and cfg.width == profile_values(profile).get("width", TrainConfig().width)


def test_unknown_profile():
    with pytest.raises(InputError, match=r"^--profile 'fast': expected one of quick, cpu60, best"):
        resolve_config("fast")


def test_written_config_resolves_to_the_same_config(tmp_path):
    cfg = resolve_config("cpu60", overrides={"lr": "1e-3", "tasks": ["age"]})
    path = write_config(cfg, tmp_path / "config.yaml")
    assert resolve_config(config_file=path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
