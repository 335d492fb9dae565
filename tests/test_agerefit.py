"""Refitting the two-stage age heads with age-balanced weights (faceattr.agerefit): only the age
heads change, every candidate is scored on validation with and without the distribution map, and
the choice follows the stated rule. The map (faceattr.age) answers the same in PyTorch and ONNX."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from faceattr.age import apply_distribution_map, fit_distribution_map
from faceattr.agerefit import choose, refit_age_heads, tail_bias
from faceattr.cache import load_prepared
from faceattr.checkpoint import load_checkpoint, save_checkpoint
from faceattr.metrics import decade_errors
from faceattr.predictor import Predictor


def test_distribution_map_spreads_shrunk_answers_back_onto_the_true_ages_in_order():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 90, 4000)
    shrunk = 35 + 0.6 * (true - 35) + rng.normal(0, 3, true.size)  # answers pulled to the middle
    knots = fit_distribution_map(shrunk, true)
    spread = apply_distribution_map(torch.from_numpy(shrunk), knots).numpy()
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):  # the answers now have the true ages' distribution
        assert np.quantile(spread, q) == pytest.approx(np.quantile(true, q), abs=1.5)
    assert np.all(np.diff(spread[np.argsort(shrunk)]) >= -1e-9)  # order kept
    old, young = true >= 70, true < 10
    assert abs((spread - true)[old].mean()) < 0.5 * abs((shrunk - true)[old].mean())
    assert abs((spread - true)[young].mean()) < 0.5 * abs((shrunk - true)[young].mean())
    # Beyond the end knots: slope 1, then the 1..116 clip.
    x, y = knots
    ends = apply_distribution_map(torch.tensor([x[0] - 2.0, x[-1] + 3.0, 500.0]), knots).tolist()
    assert ends == pytest.approx([max(1.0, y[0] - 2.0), min(116.0, y[-1] + 3.0), 116.0], abs=1e-4)
    # Tied (or, once rounded, equal) predicted quantiles are dropped: the map stays a function.
    tied = fit_distribution_map(np.r_[np.full(900, 30.0), 30.0 + 1e-5 * np.arange(50), np.linspace(31, 60, 50)], true)
    assert np.all(np.diff(tied[0]) > 0) and len(tied[0]) == len(tied[1])
    assert np.isfinite(apply_distribution_map(torch.linspace(0, 100, 50), tied).numpy()).all()
    with pytest.raises(ValueError, match="strictly increasing"):
        apply_distribution_map(torch.tensor([30.0]), [[10.0, 10.0], [5.0, 8.0]])


def test_the_refit_rule_halves_the_tail_bias_at_the_lowest_mae_or_keeps_the_model():
    own = {"mae": 6.0, "tail_bias": 8.0}
    table = {
        "a": {"mae": 5.8, "tail_bias": 5.0},  # keeps the MAE, does not halve
        "b": {"mae": 5.95, "tail_bias": 3.9},  # halves
        "c": {"mae": 5.9, "tail_bias": 4.0},  # halves, lower MAE: chosen
        "d": {"mae": 6.3, "tail_bias": 1.0},  # halves but raises the MAE
    }
    assert choose(table, own) == "c"
    del table["b"], table["c"]
    assert choose(table, own) == "a"  # none halves: the lowest tail bias that keeps the MAE
    table["a"]["tail_bias"] = 8.5
    assert choose(table, own) is None  # nothing lowers the bias while keeping the MAE


def test_a_baseline_above_the_models_own_mae_raises_the_limit_and_one_below_does_not():
    own = {"mae": 5.58, "tail_bias": 6.5}
    table = {
        "plain": {"mae": 5.47, "tail_bias": 4.9},  # keeps the own MAE, does not halve
        "map": {"mae": 5.59, "tail_bias": 2.6},  # halves, 0.01 y above the own MAE
    }
    assert choose(table, own) == "plain"
    assert choose(table, own, baseline_mae=5.591) == "map"  # not above the model users have now
    assert choose(table, own, baseline_mae=5.589) == "plain"  # still above both
    assert choose(table, own, baseline_mae=4.0) == "plain"  # a better baseline never tightens it


def test_a_baseline_is_scored_on_the_same_faces_and_must_read_the_same_input(tiny_run):
    ckpt = load_checkpoint(tiny_run / "best.pt")
    prepared = load_prepared(tiny_run.parent / "data")
    out, record = refit_age_heads(ckpt, prepared, powers=(0.0,), epochs=1, baseline=ckpt, log=lambda *_: None)
    # The model as its own baseline: the same answers, so the same scores and the same limit.
    assert {k: record["baseline"][k] for k in record["model"] if k != "routing_temperature"} == {
        k: v for k, v in record["model"].items() if k != "routing_temperature"
    }
    assert "max(the model's own, the baseline's)" in record["rule"]
    # ... so the limit is the model's own, and the choice is the one made without a baseline.
    assert record["chosen"] == choose(record["candidates"], record["model"])
    other = {**ckpt, "preprocessing": {**ckpt["preprocessing"], "size": ckpt["preprocessing"]["size"] * 2}}
    with pytest.raises(ValueError, match="same input"):
        refit_age_heads(ckpt, prepared, powers=(0.0,), epochs=1, baseline=other, log=lambda *_: None)


def test_an_age_map_answers_the_same_in_pytorch_and_onnx(tiny_run, tmp_path):
    ckpt = load_checkpoint(tiny_run / "best.pt")
    chips = np.random.default_rng(1).integers(0, 256, (16, 24, 24), dtype=np.uint8)
    plain = np.array([f["age"] for f in Predictor.from_checkpoint(tiny_run / "best.pt").attributes(chips)])
    # Knots inside the answers' range, so some ages fall below, between and above them.
    x = [float(v) for v in np.round(np.quantile(plain, [0.2, 0.5, 0.8]), 3)]
    assert x[0] < x[1] < x[2]
    knots = [x, [x[0] - 3.0, x[1] + 5.0, x[2] + 20.0]]
    save_checkpoint({**ckpt, "age": {**ckpt["age"], "age_map": knots}}, tmp_path / "mapped.pt")
    for backend in ("torch", "onnx"):
        mapped = np.array(
            [f["age"] for f in Predictor.from_checkpoint(tmp_path / "mapped.pt", backend=backend).attributes(chips)]
        )
        np.testing.assert_allclose(
            mapped,
            np.clip(
                np.interp(plain, *knots)
                + np.where(plain < x[0], plain - x[0], 0)
                + np.where(plain > x[2], plain - x[2], 0),
                1,
                116,
            ),
            atol=1e-3,
        )


def test_decade_errors_pool_70_plus_and_weigh_decades_equally():
    true = np.array([5, 5, 5, 5, 75, 90])
    pred = np.array([6, 6, 6, 6, 65, 70])
    e = decade_errors(pred, true)
    assert e["signed_error_by_decade"] == {"0-9": 1.0, "70+": -15.0}
    assert e["mae"] == pytest.approx((4 * 1 + 10 + 20) / 6, abs=1e-3)
    assert e["balanced_mae"] == pytest.approx((1 + 15) / 2)  # each decade counts once


def test_refit_changes_only_the_age_heads_and_follows_its_rule(tiny_run):
    ckpt = load_checkpoint(tiny_run / "best.pt")
    prepared = load_prepared(tiny_run.parent / "data")
    out, record = refit_age_heads(ckpt, prepared, powers=(0.0, 1.0), epochs=2, log=lambda *_: None)
    assert set(record["candidates"]) == {"0.0", "0.0+map", "1.0", "1.0+map"}
    for c in record["candidates"].values():
        assert {"mae", "balanced_mae", "signed_error_by_decade", "routing_temperature", "tail_bias"} <= set(c)
        assert c["tail_bias"] == tail_bias(c)
    assert record["chosen"] == choose(record["candidates"], record["model"])  # the rule: see the test above
    changed = {k for k in ckpt["model"] if not torch.equal(ckpt["model"][k], out["model"][k])}
    assert all(k.startswith(("heads.age_bin.", "heads.age_reg.")) for k in changed)
    if record["chosen"] is None:
        assert out is ckpt
    else:
        assert (
            changed
            and out["age"]["routing_temperature"] == record["candidates"][record["chosen"]]["routing_temperature"]
        )
        assert out["age_refit"]["age_balance"] == float(record["chosen"].split("+")[0])
        assert (
            (out["age"]["age_map"] is not None)
            == record["chosen"].endswith("+map")
            == out["age_refit"]["distribution_map"]
        )
        assert ckpt["age"]["routing_temperature"] == load_checkpoint(tiny_run / "best.pt")["age"]["routing_temperature"]


def test_the_refit_tool_records_which_baseline_file_it_read_and_refuses_a_missing_one(tiny_run, tmp_path):
    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "age"
    shutil.copytree(tiny_run, run)  # the tool rewrites best.pt; the shared run stays as it is
    cmd = [sys.executable, "tools/refit_age.py", str(run), "--data", str(tiny_run.parent / "data"), "--epochs", "1"]
    results = tmp_path / "refit.json"
    done = subprocess.run(
        [*cmd, "--baseline", str(tiny_run), "--results", str(results)], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    baseline = json.loads(results.read_text())["baseline"]
    assert baseline["path"] == str(tiny_run / "best.pt")
    assert baseline["sha256"] == hashlib.sha256((tiny_run / "best.pt").read_bytes()).hexdigest()
    assert (run / "best_before_refit.pt").is_file()
    missing = tmp_path / "nope.pt"
    done = subprocess.run(
        [*cmd, "--baseline", str(missing), "--results", str(tmp_path / "x.json")],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.strip() == f"refit_age: {missing}: no such checkpoint"
    assert not (tmp_path / "x.json").exists()
