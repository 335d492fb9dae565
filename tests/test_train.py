"""The training engine on a tiny synthetic prepared dataset: outputs, learning, determinism,
exact resume after kill -9, the LR schedule, and a 2-process DDP run on gloo."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceattr.age import ROUTING_TEMPERATURES
from faceattr.cache import Prepared, load_prepared, save_prepared
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.config import resolve_config
from faceattr.dataset import FaceData
from faceattr.model import FaceNet
from faceattr.tasks import make_age_spec, model_heads
from faceattr.train import make_scheduler, param_groups, predict_outputs, train

SIDE = 24


def _faces(n: int, rng: np.random.Generator) -> FaceData:
    """Faces whose brightness encodes gender and the period of horizontal stripes encodes
    ethnicity (both survive flips and small affine jitter), plus noise."""
    gender = rng.integers(0, 2, n)
    ethnicity = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    images = np.empty((n, SIDE, SIDE), np.uint8)
    for k in range(n):
        stripes = 60 * np.sin(yy * (0.5 + 0.3 * ethnicity[k]) + 0.05 * xx)
        base = 90 + 70 * gender[k]
        images[k] = np.clip(base + stripes + rng.normal(0, 12, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    return FaceData(
        images=images,
        age=rng.integers(1, 90, n).astype(np.int16),
        gender=gender.astype(np.int8),
        ethnicity=ethnicity.astype(np.int8),
        ids=np.array([f"f{k}" for k in range(n)]),
        names=np.array([f"f{k}.jpg" for k in range(n)]),
        source="synthetic",
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    data = _faces(400, rng)
    split = np.array(["train"] * 280 + ["val"] * 60 + ["test"] * 60)
    out = tmp_path_factory.mktemp("prepared")
    manifest = {"input": {"path": "synthetic", "sha256": "0" * 64}}
    save_prepared(out, Prepared(data=data, split=split, group=np.arange(400), sha=data.ids, manifest=manifest))
    return out


def _cfg(**kw):
    base = {
        "stem": "s2pool",
        "width": 8,
        "epochs": 3,
        "batch_size": 32,
        "device": "cpu",
        "warmup_epochs": 1.0,
        "lr": 3e-3,
        "patience": 50,
        "threads": 1,
        "name": "t",
    }
    return resolve_config(overrides={**base, **kw})


def _state(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_train_writes_a_self_describing_run_and_learns(data_dir, tmp_path):
    cfg = _cfg(epochs=10)
    result = train(cfg, data_dir, tmp_path / "run", log=lambda *_: None)
    run = tmp_path / "run"
    for name in ("config.yaml", "history.csv", "best.pt", "last.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert len((run / "history.csv").read_text().strip().splitlines()) == 1 + result["epochs_run"]
    # The patterns are easy: well above chance (0.5 gender, 0.4 majority ethnicity).
    assert result["test"]["gender"]["accuracy"] > 0.8
    assert result["test"]["ethnicity"]["accuracy"] > 0.6
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["class_names"]["ethnicity"] == ["White", "Black", "Asian", "Indian", "Others"]
    assert ckpt["preprocessing"]["size"] == SIDE and ckpt["preprocessing"]["channels"] == 1
    assert ckpt["config"]["width"] == 8 and len(ckpt["split_hash"]) == 16
    # The checkpoint alone rebuilds the model: same predictions on the test faces.
    model = model_from_checkpoint(ckpt)
    test = load_prepared(data_dir).part("test")
    probs = predict_outputs(model, test.images, ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"], "cpu")
    acc = (probs["gender"].argmax(1) == test.gender).mean()
    assert acc == pytest.approx(result["test"]["gender"]["accuracy"])


def test_same_seed_and_config_give_identical_runs(data_dir, tmp_path):
    a = train(_cfg(epochs=2), data_dir, tmp_path / "a", log=lambda *_: None)
    b = train(_cfg(epochs=2), data_dir, tmp_path / "b", log=lambda *_: None)
    assert a["test"] == b["test"]
    for k, v in _state(tmp_path / "a" / "last.pt").items():
        assert torch.equal(v, _state(tmp_path / "b" / "last.pt")[k]), k
    train(_cfg(epochs=2, seed=1), data_dir, tmp_path / "c", log=lambda *_: None)
    assert not torch.equal(
        _state(tmp_path / "a" / "last.pt")["heads.gender.weight"],
        _state(tmp_path / "c" / "last.pt")["heads.gender.weight"],
    )


def _train_cmd(data_dir: Path, runs: Path, epochs: int, extra: list[str] = ()) -> list[str]:
    sets = {
        "stem": "s2pool",
        "width": 8,
        "epochs": epochs,
        "batch_size": 32,
        "device": "cpu",
        "warmup_epochs": 1.0,
        "threads": 1,
        "patience": 50,
    }
    cmd = [
        sys.executable,
        "-m",
        "faceattr",
        "train",
        "multitask",
        "--data",
        str(data_dir),
        "--runs",
        str(runs),
        "--name",
        "r",
    ]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + list(extra)


def test_resume_after_kill_9_continues_exactly(data_dir, tmp_path):
    epochs = 6
    subprocess.run(_train_cmd(data_dir, tmp_path / "straight", epochs), check=True, capture_output=True)
    proc = subprocess.Popen(
        _train_cmd(data_dir, tmp_path / "killed", epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "killed" / "r" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_after = load_checkpoint(last)["epoch"]
    assert stopped_after < epochs - 1
    subprocess.run(_train_cmd(data_dir, tmp_path / "killed", epochs, ["--resume"]), check=True, capture_output=True)
    straight, resumed = _state(tmp_path / "straight" / "r" / "last.pt"), _state(last)
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k
    h1 = (tmp_path / "straight" / "r" / "history.csv").read_text().splitlines()
    h2 = (tmp_path / "killed" / "r" / "history.csv").read_text().splitlines()
    assert _without_timing(h1) == _without_timing(h2)


def _without_timing(rows: list[str]) -> list[str]:
    # history.csv ends with seconds and img/s, which differ between runs.
    return [",".join(r.split(",")[:-2]) for r in rows]


def test_resume_refuses_a_different_config(data_dir, tmp_path):
    from faceattr.inputerror import InputError

    train(_cfg(epochs=1), data_dir, tmp_path / "run", log=lambda *_: None)
    with pytest.raises(InputError, match="different config"):
        train(_cfg(epochs=1, lr=1e-2), data_dir, tmp_path / "run", resume=True, log=lambda *_: None)


def test_warmup_then_cosine_schedule_golden_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Warmup 0.01 -> 1 over 2 steps, then cosine over the remaining 4 steps.
    expected = [0.01, 0.505, 1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))]
    assert np.allclose(lrs, expected)


def test_no_weight_decay_on_norms_and_biases():
    from faceattr.model import FaceNet

    model = FaceNet(width=4)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ddp_two_cpu_processes_on_gloo(data_dir, tmp_path):
    runs = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "faceattr"]
    cmd += _train_cmd(data_dir, runs, 2)[3:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    per_rank = load_checkpoint(runs / "r" / "last.pt")["rng"]["per_rank"]
    # Each rank augments with its own generator, and both states are kept for resume.
    assert len(per_rank) == 2 and not torch.equal(per_rank[0][0], per_rank[1][0])


@pytest.mark.parametrize("head", ["two_stage", "direct", "dex"])
def test_age_heads_train_and_report_age_metrics(data_dir, tmp_path, head):
    cfg = _cfg(epochs=2, tasks=["gender", "ethnicity", "age"], age_head=head)
    result = train(cfg, data_dir, tmp_path / head, log=lambda *_: None)
    age = result["test"]["age"]
    assert 0 < age["mae"] < 60 and 0 <= age["cs5"] <= 1 and "bin_accuracy" in age
    assert len(age["bin_edges"]) == 7
    ckpt = load_checkpoint(tmp_path / head / "best.pt")
    assert ckpt["age"]["head"] == head and ckpt["tasks"] == ["gender", "ethnicity", "age"]
    if head == "two_stage":
        # Both routings are reported; neither may use the true bin.
        assert "age_hard_routing" in result["test"]
        # The soft-routing temperature is fitted on validation, stored with the weights and
        # used for the reported test ages.
        spec = age_spec(ckpt)
        assert spec.routing_temperature in ROUTING_TEMPERATURES
        prepared = load_prepared(data_dir)
        pre = ckpt["preprocessing"]
        pred = predict_outputs(
            model_from_checkpoint(ckpt), prepared.part("test").images, pre["mean"], pre["std"], "cpu", spec
        )
        assert age["mae"] == pytest.approx(np.abs(pred["age"] - prepared.part("test").age).mean(), rel=1e-5)


def test_fine_tuning_starts_from_the_multitask_backbone(data_dir, tmp_path):
    train(_cfg(epochs=1), data_dir, tmp_path / "mt", log=lambda *_: None)
    lines = []
    cfg = _cfg(
        epochs=1,
        tasks=["gender", "ethnicity", "age"],
        init_from=str(tmp_path / "mt" / "best.pt"),
        lr=1e-9,
        warmup_epochs=0.0,
    )
    train(cfg, data_dir, tmp_path / "age", log=lines.append)
    assert any("new: age_bin, age_reg" in line for line in lines)
    source, tuned = _state(tmp_path / "mt" / "best.pt"), _state(tmp_path / "age" / "last.pt")
    # With a negligible LR the backbone stays where the multitask run left it.
    assert torch.allclose(source["layer4.1.conv2.weight"], tuned["layer4.1.conv2.weight"], atol=1e-5)


def test_resume_of_a_stopped_run_trains_no_further(data_dir, tmp_path):
    first = train(_cfg(epochs=6, patience=1, lr=1e-7, warmup_epochs=0.0), data_dir, tmp_path / "r", log=lambda *_: None)
    assert first["stopped_by"] == "early stopping" and first["epochs_run"] < 6
    again = train(
        _cfg(epochs=6, patience=1, lr=1e-7, warmup_epochs=0.0),
        data_dir,
        tmp_path / "r",
        resume=True,
        log=lambda *_: None,
    )
    assert again["epochs_run"] == first["epochs_run"] and again["stopped_by"] == "early stopping"
    assert again["test"] == first["test"]


def test_resume_and_fine_tuning_refuse_another_split(data_dir, tmp_path):
    from faceattr.inputerror import InputError

    train(_cfg(epochs=1), data_dir, tmp_path / "run", log=lambda *_: None)
    other = tmp_path / "other"
    other.mkdir()
    prepared = load_prepared(data_dir)
    prepared.split = np.roll(prepared.split, 7)
    save_prepared(other, prepared)
    with pytest.raises(InputError, match="different split"):
        train(_cfg(epochs=1), other, tmp_path / "run", resume=True, log=lambda *_: None)
    age_cfg = _cfg(epochs=1, tasks=["gender", "ethnicity", "age"], init_from=str(tmp_path / "run" / "best.pt"))
    with pytest.raises(InputError, match="different split"):
        train(age_cfg, other, tmp_path / "age", log=lambda *_: None)


def test_flip_averages_a_face_and_its_mirror():
    torch.manual_seed(0)
    age = make_age_spec("two_stage", 6, np.arange(1, 91))
    model = FaceNet(1, 8, "s2pool", 0.0, model_heads(["gender", "ethnicity", "age"], age)).eval()
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (4, 48, 24), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    lopsided = rng.integers(0, 256, (4, 48, 48), dtype=np.uint8)

    def run(images, flip):
        return predict_outputs(model, images, 0.5, 0.25, "cpu", age, 2, flip=flip)

    plain, flipped = run(symmetric, False), run(symmetric, True)
    for name in plain:  # a mirror-symmetric face is its own mirror: flipping changes nothing
        np.testing.assert_allclose(flipped[name], plain[name], rtol=1e-5, atol=1e-5)
    both = run(lopsided, True)
    mirrored = run(np.ascontiguousarray(lopsided[:, :, ::-1]), True)
    np.testing.assert_allclose(both["age"], mirrored["age"], rtol=1e-5, atol=1e-4)  # order-free mean
    assert not np.allclose(run(lopsided, False)["age"], both["age"])  # and it does change the answer
