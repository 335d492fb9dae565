"""Refitting the two-stage age heads with age-balanced weights (faceattr.agerefit): only the age
heads change, every candidate is scored on validation, and the choice follows the stated rule."""

import numpy as np
import pytest
import torch

from faceattr.agerefit import refit_age_heads
from faceattr.cache import load_prepared
from faceattr.checkpoint import load_checkpoint
from faceattr.metrics import decade_errors


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
    out, record = refit_age_heads(ckpt, prepared, powers=(0.0, 1.0), epochs=2, mae_slack=0.5, log=lambda *_: None)
    assert set(record["candidates"]) == {"0.0", "1.0"}
    for c in record["candidates"].values():
        assert {"mae", "balanced_mae", "signed_error_by_decade", "routing_temperature"} <= set(c)
    own = record["model"]
    eligible = {
        k: c["balanced_mae"]
        for k, c in record["candidates"].items()
        if c["mae"] <= own["mae"] + 0.5 and c["balanced_mae"] < own["balanced_mae"]
    }
    assert record["chosen"] == (min(eligible, key=eligible.get) if eligible else None)
    changed = {k for k in ckpt["model"] if not torch.equal(ckpt["model"][k], out["model"][k])}
    assert all(k.startswith(("heads.age_bin.", "heads.age_reg.")) for k in changed)
    if record["chosen"] is None:
        assert out is ckpt
    else:
        assert (
            changed
            and out["age"]["routing_temperature"] == record["candidates"][record["chosen"]]["routing_temperature"]
        )
        assert out["age_refit"]["age_balance"] == float(record["chosen"])
        assert ckpt["age"]["routing_temperature"] == load_checkpoint(tiny_run / "best.pt")["age"]["routing_temperature"]
