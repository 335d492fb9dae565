"""The pure functions behind the evaluation report on synthetic arrays: the weighted (bootstrap)
metrics against scikit-learn, percentile intervals, ECE, temperature scaling, the fairness
table and its largest gap, the cumulative score curve."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import f1_score, roc_auc_score

from faceattr.evaluation import (
    SplitPredictions,
    apply_temperature,
    checkpoint_tasks,
    cumulative_scores,
    estimate,
    evaluate_predictions,
    expected_calibration_error,
    fairness_table,
    fit_temperature,
    largest_gap,
    nll,
    percentile_ci,
    reliability,
    resample_weights,
    weighted_macro_f1,
    weighted_mean,
    weighted_roc_auc,
)


def _draw_labels(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row drawn from the row's probabilities (N, K)."""
    return (prob.cumsum(1) > rng.random((len(prob), 1))).argmax(1)


def test_age_interval_half_width_is_the_conformal_rank_of_the_errors():
    from faceattr.evaluation import fit_age_intervals

    errors = np.arange(1.0, 10.0)  # nine faces in bin 0, errors 1..9 years
    fit = fit_age_intervals(30 + errors, np.full(9, 30.0), np.zeros(9, int), n_bins=2, coverage=0.8)
    assert fit["half_width"][0] == 8.0  # rank ceil((9 + 1) * 0.8) = 8
    assert fit["half_width"][1] == 115.0 and fit["n_per_bin"] == [9, 0]  # an empty bin: the whole span
    with pytest.raises(ValueError):
        fit_age_intervals(errors, errors, np.zeros(9, int), 1, 1.0)


def test_age_ranges_fitted_on_one_sample_cover_another_at_the_target_rate():
    from faceattr.evaluation import age_interval_check, fit_age_intervals

    rng = np.random.default_rng(0)

    def sample(n):  # errors grow with the predicted bin, as they do with age
        pred_bin = rng.integers(0, 3, n)
        pred = np.array([10.0, 40.0, 70.0])[pred_bin]
        return pred + rng.normal(0, 1 + 4 * pred_bin), pred, pred_bin

    fit = fit_age_intervals(*sample(3000), n_bins=3, coverage=0.8)
    assert fit["half_width"][0] < fit["half_width"][1] < fit["half_width"][2]
    check = age_interval_check(*sample(20000), fit["half_width"])
    assert 0.78 < check["coverage"] < 0.83
    assert check["mean_width"] == pytest.approx(2 * np.mean(fit["half_width"]), rel=0.05)


def test_resample_weights_are_seeded_multiplicities():
    w = resample_weights(50, n_boot=200, seed=3)
    assert w.shape == (200, 50) and np.all(w.sum(1) == 50) and np.all(w >= 0)
    assert np.array_equal(w, resample_weights(50, n_boot=200, seed=3))
    assert not np.array_equal(w, resample_weights(50, n_boot=200, seed=4))
    # Each face is drawn once per resample on average.
    assert w.mean() == pytest.approx(1.0)


def test_weighted_metrics_equal_scikit_learn_with_unit_and_integer_weights():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.choice(5, n, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 5, n))
    pred[pred == 4] = 3  # class 4 is never predicted: its F1 is 0, as in scikit-learn
    score = np.round(rng.random(n), 1)  # many ties
    yb = (rng.random(n) < score).astype(int)
    ones = np.ones((1, n))
    assert weighted_mean(ones, pred == y)[0] == pytest.approx(np.mean(pred == y))
    assert weighted_macro_f1(ones, y, pred, 5)[0] == pytest.approx(
        f1_score(y, pred, labels=range(5), average="macro", zero_division=0)
    )
    assert weighted_roc_auc(ones, score, yb)[0] == pytest.approx(roc_auc_score(yb, score))
    # A resample's weights give the metric of the resampled faces.
    w = resample_weights(n, n_boot=3, seed=1)
    for row in w:
        rep = np.repeat(np.arange(n), row.astype(int))
        assert weighted_macro_f1(row[None], y, pred, 5)[0] == pytest.approx(
            f1_score(y[rep], pred[rep], labels=range(5), average="macro", zero_division=0), rel=1e-5
        )
        assert weighted_roc_auc(row[None], score, yb)[0] == pytest.approx(roc_auc_score(yb[rep], score[rep]), rel=1e-5)


def test_a_resample_without_faces_has_no_value():
    assert np.isnan(weighted_mean(np.zeros((1, 3)), np.array([1.0, 0.0, 1.0]))[0])
    assert np.isnan(weighted_roc_auc(np.ones((1, 3)), np.array([0.1, 0.5, 0.9]), np.array([1, 1, 1]))[0])
    assert percentile_ci(np.full(10, np.nan)) is None


def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 4900):
        correct = (rng.random(n) < 0.8).astype(float)
        cell, boot = estimate(weighted_mean, resample_weights(n, 1000, seed=0), correct)
        lo, hi = cell["ci"]
        assert lo <= cell["value"] <= hi and boot.shape == (1000,)
        assert cell["value"] == pytest.approx(correct.mean())
        widths.append(hi - lo)
    # The width goes as 1 / sqrt(n): 49x the faces, about a seventh of the width.
    assert widths[1] < widths[0] / 4
    # For a proportion near 0.8 with n = 4,900: 2 * 1.96 * sqrt(0.8 * 0.2 / n) = 0.0224.
    assert widths[1] == pytest.approx(0.0224, rel=0.15)


def test_ece_is_near_zero_when_calibrated_and_positive_when_over_confident():
    rng = np.random.default_rng(0)
    n = 100_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf  # right exactly as often as it claims
    y = np.where(correct, 0, 1)
    prob = np.stack([conf, 1 - conf], 1)
    assert expected_calibration_error(prob, y) < 0.01
    sharp = np.stack([np.minimum(conf + 0.15, 1.0), 1 - np.minimum(conf + 0.15, 1.0)], 1)
    assert expected_calibration_error(sharp, y) > 0.08
    rel = reliability(prob, y, n_bins=10)
    assert sum(rel["count"]) == n and rel["count"][:5] == [0] * 5 and rel["accuracy"][0] is None


def test_ece_by_hand():
    # Two faces in the 0.9 bin (one right), one in the 0.6 bin (right): (2/3)|0.5-0.9| + (1/3)|1-0.6|.
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    assert expected_calibration_error(prob, y, n_bins=10) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4)


@pytest.mark.parametrize("true_t", [2.0, 0.5])
def test_temperature_fit_recovers_the_temperature_of_the_labels(true_t):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (20_000, 5))
    y = _draw_labels(softmax(logits / true_t, 1), rng)
    prob = softmax(logits, 1)  # the model reports the logits at T = 1
    t = fit_temperature(prob, y)
    assert t == pytest.approx(true_t, rel=0.1)
    scaled = apply_temperature(prob, t)
    assert nll(scaled, y) < nll(prob, y)
    assert expected_calibration_error(scaled, y) < expected_calibration_error(prob, y)
    assert np.allclose(scaled.sum(1), 1) and np.array_equal(scaled.argmax(1), prob.argmax(1))


def test_apply_temperature_divides_the_logits():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert np.allclose(apply_temperature(softmax(logits, 1), 2.0), softmax(logits / 2, 1))
    assert np.allclose(apply_temperature(softmax(logits, 1), 1.0), softmax(logits, 1))


def test_largest_gap_by_hand():
    gap = largest_gap({"a": 0.9, "b": 0.7, "c": 0.8, "d": None})
    assert gap["value"] == pytest.approx(0.2) and (gap["max_group"], gap["min_group"]) == ("a", "b")
    assert gap["ci"] is None
    assert largest_gap({"a": 0.9, "b": None}) is None
    boot = {"a": np.array([0.9, 0.95, np.nan]), "b": np.array([0.7, 0.6, 0.7]), "c": np.array([0.8, 0.8, 0.8])}
    with_ci = largest_gap({"a": 0.9, "b": 0.7, "c": 0.8}, boot)
    # Per resample: 0.2, 0.35, and 0.1 without group a.
    assert with_ci["ci"] == pytest.approx(np.percentile([0.2, 0.35, 0.1], [2.5, 97.5]).tolist())


def _predictions(gender: np.ndarray, gender_pred: np.ndarray, age: np.ndarray, age_pred: np.ndarray):
    n = len(gender)
    eth = np.arange(n) % 2  # White, Black alternating
    return SplitPredictions(
        ids=np.array([f"f{k}" for k in range(n)]),
        gender=gender,
        ethnicity=eth,
        age=age.astype(float),
        prob={
            "gender": np.eye(2)[gender_pred] * 0.8 + 0.1,
            "ethnicity": np.eye(5)[eth] * 0.6 + 0.08,
        },
        age_pred={"soft": age_pred.astype(float)},
        age_bin_pred=None,
    )


def test_fairness_table_by_hand():
    """Group male: all 4 right, ages off by 2; group female: 2 of 4 right, ages off by 10."""
    gender = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = _predictions(
        gender,
        np.array([0, 0, 0, 0, 1, 0, 1, 0]),
        np.full(8, 30),
        np.array([32, 28, 32, 28, 40, 20, 40, 20]),
    )
    table = fairness_table(pred, resample_weights(8, 300, seed=0), gender, ("male", "female"))
    male, female = table["groups"]["male"], table["groups"]["female"]
    assert male["n"] == female["n"] == 4
    assert male["gender_accuracy"]["value"] == 1.0 and female["gender_accuracy"]["value"] == 0.5
    assert male["age_mae"]["value"] == 2.0 and female["age_mae"]["value"] == 10.0
    assert male["age_cs5"]["value"] == 1.0 and female["age_cs5"]["value"] == 0.0
    gaps = table["gaps"]
    assert gaps["gender_accuracy"]["value"] == 0.5 and gaps["gender_accuracy"]["min_group"] == "female"
    assert gaps["age_mae"]["value"] == 8.0 and gaps["age_mae"]["max_group"] == "female"
    lo, hi = gaps["gender_accuracy"]["ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert table["metrics"] == ["gender_accuracy", "ethnicity_accuracy", "ethnicity_macro_f1", "age_mae", "age_cs5"]
    skipped = fairness_table(
        pred, resample_weights(8, 10), pred.ethnicity, ("White", "Black", "Asian"), ("ethnicity_macro_f1",)
    )
    assert "ethnicity_macro_f1" not in skipped["metrics"]
    assert skipped["groups"]["Asian"]["n"] == 0 and skipped["groups"]["Asian"]["gender_accuracy"] is None


def test_cumulative_scores_by_hand():
    cs = cumulative_scores(np.array([0.0, 1.0, 2.5, 7.0]), max_years=3)
    assert cs == [0.25, 0.5, 0.5, 0.75]


def test_evaluate_predictions_on_a_test_split_sized_sample():
    """3,400 faces (the size of the UTKFace test split) with 1,000 resamples, no model."""
    rng = np.random.default_rng(0)
    n = 3400
    gender = rng.integers(0, 2, n)
    eth = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    age = rng.integers(1, 90, n).astype(float)

    def split(labels: np.ndarray, k: int) -> np.ndarray:
        return softmax(2 * np.eye(k)[labels] + rng.normal(0, 1, (n, k)), 1)

    pred = SplitPredictions(
        ids=np.arange(n).astype(str),
        gender=gender,
        ethnicity=eth,
        age=age,
        prob={"gender": split(gender, 2), "ethnicity": split(eth, 5)},
        age_pred={"soft": age + rng.normal(0, 6, n), "hard": age + rng.normal(0, 7, n)},
        age_bin_pred=rng.integers(0, 6, n),
    )
    edges = np.array([1, 16, 26, 30, 38, 54, 117], dtype=float)
    out = evaluate_predictions(pred, pred, edges, n_boot=1000)
    assert set(out["headline"]) >= {"gender_accuracy", "ethnicity_macro_f1", "age_mae", "age_cs5_hard"}
    assert out["age"]["mae"] == pytest.approx(out["headline"]["age_mae"]["value"])
    assert out["calibration"]["gender"]["temperature"] > 0
    assert set(out["fairness"]) == {"ethnicity", "gender", "age_band"}


def test_tasks_of_checkpoints_from_before_the_age_head():
    old = {"model_args": {"heads": {"gender": 2, "ethnicity": 5}}, "config": {}, "age": None}
    assert checkpoint_tasks(old) == ["gender", "ethnicity"]
    assert checkpoint_tasks({"tasks": ["gender", "ethnicity", "age"]}) == ["gender", "ethnicity", "age"]


def test_the_data_of_a_run_is_found_beside_it_never_from_the_working_folder(tmp_path, monkeypatch):
    import json

    from faceattr.evaluation import find_data_dir
    from faceattr.inputerror import InputError

    ckpt = {"split_hash": "abc", "data": {"input_sha256": "0" * 64}}

    def prepared(folder):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"split_hash": "abc", "input": {"sha256": "0" * 64}}))
        (folder / "data.npz").write_bytes(b"")

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    prepared(tmp_path / "prepared" / "d")  # where an old default guessed from the working folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="pass --data PREPARED_DIR"):
        find_data_dir(run, ckpt)
    prepared(tmp_path / "runs" / "data")
    assert find_data_dir(run, ckpt) == tmp_path / "runs" / "data"
