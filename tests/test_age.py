"""Age bins, two-stage loss and decoding, DEX/direct baselines and age metrics,
checked against values worked out by hand on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from faceattr.age import (
    ROUTING_TEMPERATURES,
    age_to_bin,
    bin_ages,
    bin_edges,
    decode_dex,
    decode_direct,
    decode_two_stage,
    dex_loss,
    direct_loss,
    fit_routing_temperature,
    two_stage_heads,
    two_stage_loss,
)
from faceattr.labels import AGE_MAX, AGE_MIN
from faceattr.metrics import age_metrics
from faceattr.model import FaceNet

EDGES3 = np.array([1.0, 13.0, 20.0, 117.0])  # spans [0.5, 12.5), [12.5, 19.5), [19.5, 116.5)
EDGES6 = np.array([1.0, 13.0, 20.0, 27.0, 36.0, 55.0, 117.0])


def test_bin_edges_equal_population_on_skewed_ages():
    rng = np.random.default_rng(0)
    ages = np.clip(np.rint(np.exp(rng.normal(np.log(29), 0.6, 20000))), AGE_MIN, AGE_MAX)
    edges = bin_edges(ages, 6)
    assert edges[0] == 1 and edges[-1] == 117 and len(edges) == 7
    assert np.all(np.diff(edges) > 0) and np.all(edges == np.rint(edges))
    shares = np.bincount(age_to_bin(ages, edges), minlength=6) / len(ages)
    assert np.allclose(shares, 1 / 6, atol=0.02)


def test_bin_edges_golden_and_degenerate():
    assert bin_edges(np.arange(1, 13), 3).tolist() == [1, 5, 9, 117]
    # All ages equal: bins cannot be balanced, but edges stay strictly increasing.
    edges = bin_edges(np.full(10, 116), 3)
    assert edges.tolist() == [1, 2, 3, 117]
    with pytest.raises(ValueError, match="within 1..116"):
        bin_edges(np.array([0, 5]), 2)


def test_age_to_bin_golden_numpy_and_torch():
    ages = [1, 12, 13, 19, 20, 116, 12.4, 12.5]
    expected = [0, 0, 1, 1, 2, 2, 0, 1]
    assert age_to_bin(np.array(ages), EDGES3).tolist() == expected
    out = age_to_bin(torch.tensor(ages), torch.tensor(EDGES3))
    assert out.dtype == torch.long and out.tolist() == expected
    assert age_to_bin(np.array([-3.0, 150.0]), EDGES3).tolist() == [0, 2]


def test_heads_fit_facenet():
    net = FaceNet(stem="s2", width=8, heads=two_stage_heads(6))
    out = net(torch.zeros(2, 1, 48, 48))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"age_bin": (2, 6), "age_reg": (2, 6)}


def test_decode_hard_vs_soft():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [5.0, 0.0, 0.0]])  # p = 0.2, 0.6, 0.2 for row 0
    reg = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(3.0)]])  # sigmoid(log 3) = 0.75
    # Row 0 bin ages: 0.5 + 0.5 * 12 = 6.5, 12.5 + 0.5 * 7 = 16, 19.5 + 0.5 * 97 = 68.
    # Row 1 last bin: 19.5 + 0.75 * 97 = 92.25.
    assert torch.allclose(bin_ages(reg, EDGES3)[0], torch.tensor([6.5, 16.0, 68.0]))
    hard = decode_two_stage(logits, reg, EDGES3, "hard")
    soft = decode_two_stage(logits, reg, EDGES3, "soft")
    assert torch.allclose(hard, torch.tensor([16.0, 6.5]))
    p = torch.softmax(torch.tensor([5.0, 0.0, 0.0]), 0)
    row1 = p[0] * 6.5 + p[1] * 16.0 + p[2] * 92.25
    assert torch.allclose(soft, torch.stack([torch.tensor(0.2 * 6.5 + 0.6 * 16 + 0.2 * 68), row1]))
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        decode_two_stage(logits, reg, EDGES3, "mean")


def test_predictions_clipped_to_age_range():
    logits = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    reg = torch.tensor([[-50.0, 0.0, 0.0], [0.0, 0.0, 50.0]])  # 0.5 and 116.5 before clipping
    for routing in ("hard", "soft"):
        out = decode_two_stage(logits, reg, EDGES3, routing)
        assert out.min() >= AGE_MIN and out.max() <= AGE_MAX
    assert decode_two_stage(logits, reg, EDGES3, "hard").tolist() == [1.0, 116.0]
    assert decode_direct(torch.tensor([[-9.0], [9.0]]), 30.0, 20.0).tolist() == [1.0, 116.0]
    dex = torch.full((1, 200), -1e4)
    dex[0, 149] = 0.0  # age 150
    assert decode_dex(dex).item() == AGE_MAX


def test_two_stage_loss_perfect_is_zero_and_finite():
    ages = torch.tensor([6.5, 16.0, 92.25])
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.0, 30.0, 0.0], [0.0, 0.0, 30.0]])
    t = torch.tensor([0.5, 0.5, 0.75])  # position of each age inside its true bin's span
    reg = torch.full((3, 3), -7.0)
    reg[torch.arange(3), torch.arange(3)] = torch.logit(t)
    assert two_stage_loss(logits, reg, ages, EDGES3, smoothing=0.0, reg_weight=1.0).item() < 1e-6
    loss = two_stage_loss(torch.randn(3, 3), torch.randn(3, 3), ages, EDGES3, smoothing=0.1, reg_weight=0.1)
    assert torch.isfinite(loss)


def test_two_stage_loss_trains_only_the_true_bins_regressor():
    logits = torch.zeros(2, 3, requires_grad=True)
    reg = torch.zeros(2, 3, requires_grad=True)
    two_stage_loss(logits, reg, torch.tensor([3.0, 50.0]), torch.tensor(EDGES3), 0.1, 1.0).backward()
    assert logits.grad.abs().sum(1).gt(0).all()
    true_bin = torch.tensor([0, 2])
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[torch.arange(2), true_bin] = True
    assert (reg.grad[~mask] == 0).all() and (reg.grad[mask] != 0).all()


def test_dex_expected_age_and_loss():
    logits = torch.full((2, 116), -1e4)
    logits[0, 29] = 0.0  # one-hot at age 30
    logits[1, [9, 19]] = 0.0  # ages 10 and 20 equally likely
    assert decode_dex(logits).tolist() == [30.0, 15.0]
    assert dex_loss(logits, torch.tensor([30, 10])).item() == pytest.approx(math.log(2) / 2, rel=1e-5)


def test_direct_loss_on_normalised_scale():
    pred = torch.tensor([[0.5], [0.0]])
    ages = torch.tensor([40.0, 70.0])  # targets 0.5 and 2.0 on (age - 30) / 20
    # beta 1 year = 0.05 normalised; |err| 2.0 > beta, so the L1 branch: 2.0 - 0.025.
    assert direct_loss(pred, ages, 30.0, 20.0).item() == pytest.approx((0 + 2.0 - 0.025) / 2)
    assert decode_direct(torch.tensor([0.5, -1.0]), 30.0, 20.0).tolist() == [40.0, 10.0]


def test_age_metrics_hand_case():
    true = np.array([5, 15, 25, 30, 50, 80])
    pred = np.array([7, 15, 35, 29, 40, 86])  # |err| = 2, 0, 10, 1, 10, 6
    pred_bin = np.array([0, 1, 3, 3, 4, 4])  # true bins 0..5; rows 2 and 5 wrong
    m = age_metrics(true, pred, EDGES6, pred_bin, gender=np.array([0, 1, 0, 1, 0, 1]), ethnicity=[0, 0, 1, 2, 3, -1])
    assert m["n"] == 6
    assert m["mae"] == pytest.approx(29 / 6)
    assert m["rmse"] == pytest.approx(math.sqrt(241 / 6))
    assert m["cs5"] == pytest.approx(0.5)
    assert m["per_bin"]["1-12"] == {"n": 1, "mae": 2.0}
    assert m["per_bin"]["55-116"] == {"n": 1, "mae": 6.0}
    assert m["bin_accuracy"] == pytest.approx(4 / 6)
    conf = np.array(m["bin_confusion"])
    assert conf.shape == (6, 6) and conf[2, 3] == 1 and conf[5, 4] == 1 and np.trace(conf) == 4
    assert m["correct_bin"] == {"n": 4, "mae": 3.25, "share": pytest.approx(4 / 6)}
    assert m["wrong_bin"] == {"n": 2, "mae": 8.0, "share": pytest.approx(2 / 6)}
    assert m["per_gender"]["male"]["mae"] == pytest.approx(22 / 3)
    assert m["per_gender"]["female"]["mae"] == pytest.approx(7 / 3)
    assert m["per_ethnicity"]["White"] == {"n": 2, "mae": 1.0}
    assert m["per_ethnicity"]["Indian"] == {"n": 1, "mae": 10.0}
    assert m["per_ethnicity"]["Others"] == {"n": 0, "mae": None}
    assert m["children"] == {"under_13": {"n": 1, "mae": 2.0}, "13_plus": {"n": 5, "mae": 5.4}}


def test_routing_temperature_follows_how_often_the_sure_bin_is_right():
    rng = np.random.default_rng(0)
    n = 400
    bin_ages = np.tile([10.0, 30.0, 60.0], (n, 1))
    prob = np.tile([0.6, 0.3, 0.1], (n, 1))
    # The likeliest bin is always right: sharpen toward hard routing (the lowest temperature).
    assert fit_routing_temperature(prob, bin_ages, np.full(n, 10.0)) == min(ROUTING_TEMPERATURES)
    # Ages spread over the bins as (other) probabilities say, with the median in the middle
    # bin: the hedge of soft routing is worth keeping, the temperature stays near 1.
    spread = np.tile([0.4, 0.35, 0.25], (n, 1))
    true = rng.choice([10.0, 30.0, 60.0], n, p=[0.4, 0.35, 0.25])
    assert 0.8 <= fit_routing_temperature(spread, bin_ages, true) <= 1.5
    # Every sample's true age is the mean of the bins: flattening (T > 1) helps.
    assert fit_routing_temperature(prob, bin_ages, np.full(n, 100.0 / 3)) > 1.0


def test_soft_routing_temperature_interpolates_between_soft_and_hard():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    reg = torch.zeros(1, 3)
    edges = [1, 13, 30, 117]
    soft = decode_two_stage(logits, reg, edges, "soft").item()
    hard = decode_two_stage(logits, reg, edges, "hard").item()
    cooler = decode_two_stage(logits, reg, edges, "soft", temperature=0.3).item()
    colder = decode_two_stage(logits, reg, edges, "soft", temperature=0.05).item()
    assert hard <= colder < cooler < soft
    assert colder == pytest.approx(hard, abs=0.01)
