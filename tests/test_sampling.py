"""Class-balanced weights and per-rank epoch draws: balance, sharding, determinism."""

import numpy as np
import pytest
import torch

from faceattr.sampling import class_sample_weights, epoch_indices

LABELS = np.repeat([0, 1, 2], [800, 150, 50])


def _freqs(mode, n=30_000, seed=0):
    w = class_sample_weights(LABELS, mode)
    idx = epoch_indices(w, n, torch.Generator().manual_seed(seed))
    return np.bincount(LABELS[idx], minlength=3) / n


def test_weights_golden():
    np.testing.assert_allclose(class_sample_weights(np.array([0, 0, 0, 1]), "off"), [0.25] * 4)
    np.testing.assert_allclose(class_sample_weights(np.array([0, 0, 0, 0, 1]), "full"), [1 / 8] * 4 + [1 / 2])
    w = class_sample_weights(np.array([0, 0, 0, 0, 1]), "sqrt")  # 4 * (1/2) vs 1 * 1
    np.testing.assert_allclose(w, [1 / 6] * 4 + [1 / 3])
    with pytest.raises(ValueError, match="mode must be one of"):
        class_sample_weights(LABELS, "half")


def test_full_balances_classes():
    np.testing.assert_allclose(_freqs("full"), [1 / 3] * 3, atol=0.015)


def test_sqrt_is_between_off_and_full():
    expected = np.sqrt([800, 150, 50]) / np.sqrt([800, 150, 50]).sum()
    freqs = _freqs("sqrt")
    np.testing.assert_allclose(freqs, expected, atol=0.015)
    assert 0.8 > freqs[0] > 1 / 3 and 0.05 < freqs[2] < 1 / 3


def test_off_is_a_permutation():
    idx = epoch_indices(class_sample_weights(LABELS, "off"), 1000, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(1000))
    assert not np.array_equal(idx, np.arange(1000))
    chained = epoch_indices(np.ones(10) / 10, 25, torch.Generator().manual_seed(0))
    assert np.bincount(chained, minlength=10).min() == 2


@pytest.mark.parametrize("mode", ["off", "full"])
@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_rank_shards_concatenate_to_the_single_draw(mode, world_size):
    w = class_sample_weights(LABELS, mode)
    full = epoch_indices(w, 1000, torch.Generator().manual_seed(1))
    shards = [epoch_indices(w, 1000, torch.Generator().manual_seed(1), r, world_size) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    joined = np.concatenate(shards)
    assert len(joined) >= 1000 and len(joined) - 1000 < world_size
    np.testing.assert_array_equal(joined[:1000], full)


def test_deterministic_given_generator_state():
    w = class_sample_weights(LABELS, "sqrt")
    g = torch.Generator().manual_seed(5)
    first = epoch_indices(w, 500, g)
    second = epoch_indices(w, 500, g)
    assert not np.array_equal(first, second)
    g = torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(epoch_indices(w, 500, g), first)
    np.testing.assert_array_equal(epoch_indices(w, 500, g), second)


def test_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank must be in"):
        epoch_indices(np.ones(4), 4, torch.Generator(), rank=2, world_size=2)
