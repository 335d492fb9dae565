"""Dedupe: planted copies are found and nothing else, groups are transitive, the multi-index
Hamming search equals brute force, and the conflict summary matches hand-counted values."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from faceattr.dataset import FaceData
from faceattr.dedupe import (
    Duplicates,
    _hamming_pairs,
    conflict_summary,
    find_duplicates,
    perceptual_hash,
    pixel_sha1,
    write_duplicates_csv,
)


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in pairs}


def faces(images: np.ndarray, age, gender, ethnicity) -> FaceData:
    n = len(images)
    return FaceData(
        images=images,
        age=np.asarray(age, np.int16),
        gender=np.asarray(gender, np.int8),
        ethnicity=np.asarray(ethnicity, np.int8),
        ids=np.array([f"row{k:05d}" for k in range(n)]),
        names=np.array([f"{k}.jpg" for k in range(n)]),
        source="hand-made",
    )


def test_planted_exact_and_near_pairs_are_found_and_nothing_else(synthetic_faces):
    sf = synthetic_faces
    dup = find_duplicates(sf.images)
    exact, near = as_set(sf.exact_pairs), as_set(sf.near_pairs)
    assert as_set(dup.pairs) == exact | near
    assert np.all(dup.pairs[:, 0] < dup.pairs[:, 1])
    flags = {(int(a), int(b)): (bool(e), m, h) for (a, b), e, m, h in zip(dup.pairs, dup.exact, dup.mad, dup.hamming)}
    for pair in exact:
        assert flags[pair] == (True, 0.0, 0)
    for pair in near:
        is_exact, mad, ham = flags[pair]
        assert not is_exact and 0 < mad < 5 and ham <= 8

    group = dup.group
    assert group.shape == (len(sf.images),)
    for a, b in exact | near:
        assert group[a] == group[b]
    sizes = np.bincount(group)
    assert (sizes > 1).sum() == len(exact | near) and sizes.max() == 2


def test_thresholds_gate_near_pairs_but_never_exact_ones(synthetic_faces):
    sf = synthetic_faces
    strict = find_duplicates(sf.images, max_mad=1.0)
    assert as_set(strict.pairs) == as_set(sf.exact_pairs)
    assert find_duplicates(sf.images, max_hamming=0, max_mad=0.0).exact.all()


def test_groups_are_transitive():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(60, 190, (6, 6)), np.ones((8, 8))).astype(np.int16)  # (48, 48)
    others = rng.integers(0, 256, (5, 48, 48))
    # a ~ b (shift 3) and b ~ c (shift 3), but a and c differ by 6 > max_mad: still one group.
    images = np.stack([smooth, others[0], smooth + 3, others[1], smooth + 6, others[2], others[3], others[4]])
    images = images.astype(np.uint8)
    dup = find_duplicates(images, max_mad=5.0)
    assert as_set(dup.pairs) == {(0, 2), (2, 4)}
    assert dup.group[0] == dup.group[2] == dup.group[4]
    assert len(np.unique(dup.group)) == 6
    np.testing.assert_allclose(dup.mad, [3.0, 3.0])


def test_three_identical_faces_form_one_group_with_all_pairs():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    images[[2, 5]] = images[0]
    dup = find_duplicates(images)
    assert as_set(dup.pairs) == {(0, 2), (0, 5), (2, 5)} and dup.exact.all()
    assert dup.group[0] == dup.group[2] == dup.group[5] and len(np.unique(dup.group)) == 4


def test_rgb_faces_are_deduplicated(synthetic_faces):
    rgb = np.repeat(synthetic_faces.images[..., None], 3, axis=3)
    assert as_set(find_duplicates(rgb).pairs) == as_set(synthetic_faces.exact_pairs) | as_set(
        synthetic_faces.near_pairs
    )


def test_perceptual_hash_same_for_identical_images_and_differs_otherwise(synthetic_faces):
    planted = np.concatenate([synthetic_faces.exact_pairs, synthetic_faces.near_pairs]).ravel()
    images = np.delete(synthetic_faces.images, planted, axis=0)[:50]
    h = perceptual_hash(images)
    assert h.dtype == np.uint64 and h.shape == (50,)
    np.testing.assert_array_equal(perceptual_hash(images.copy()), h)
    np.testing.assert_array_equal(perceptual_hash(images, batch=7), h)  # batching does not matter
    np.testing.assert_array_equal(perceptual_hash(images[::-1])[::-1], h)
    assert len(np.unique(h)) == 50
    # Half the bits (the above-median coefficients) are set; the top bit survives the int64 packing.
    assert set(np.bitwise_count(h).tolist()) <= {31, 32}
    assert (h >> np.uint64(63)).any()
    assert perceptual_hash(np.zeros((0, 48, 48), np.uint8)).shape == (0,)


def test_pixel_sha1():
    images = np.zeros((3, 4, 4), np.uint8)
    images[1, 0, 0] = 1
    sha = pixel_sha1(images)
    assert sha[0] == sha[2] != sha[1]
    assert sha[0] == hashlib.sha1(bytes(16)).hexdigest()


def skewed_hashes(n: int, seed: int) -> np.ndarray:
    """Hashes with per-bit probabilities from 0.02 to 0.98 and clusters of near copies, so every
    chunk of the multi-index search has crowded and sparse buckets and many pairs sit at the
    distance threshold."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, 64) ** 2
    centres = rng.random((n // 5, 64)) < p
    bits = np.repeat(centres, 5, axis=0)
    flips = rng.random(bits.shape) < rng.choice([0.0, 0.02, 0.06, 0.12], (n, 1))
    bits ^= flips
    bits[-20:] = bits[:20]  # exact repeats
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def brute_force(h: np.ndarray, max_dist: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.bitwise_count(h[:, None] ^ h[None, :]).astype(np.int64)
    i, j = np.nonzero(np.triu(dist <= max_dist, k=1))
    return np.stack([i, j], 1), dist[i, j]


@pytest.mark.parametrize("max_dist", [0, 1, 3, 8, 12, 20])
@pytest.mark.parametrize("block", [1024, 7])
def test_hamming_pairs_equal_brute_force(max_dist, block):
    h = skewed_hashes(500, seed=max_dist)
    pairs, dist = _hamming_pairs(h, max_dist, block=block)
    expected_pairs, expected_dist = brute_force(h, max_dist)
    assert len(expected_pairs) > 20  # the case is not trivially empty
    np.testing.assert_array_equal(pairs, expected_pairs)  # both sorted by (i, j)
    np.testing.assert_array_equal(dist, expected_dist)


def test_hamming_pairs_edge_cases():
    empty, dist = _hamming_pairs(np.zeros(0, np.uint64), 8)
    assert empty.shape == (0, 2) and dist.shape == (0,)
    one, _ = _hamming_pairs(np.array([5], np.uint64), 8)
    assert one.shape == (0, 2)
    extremes = np.array([0, 2**64 - 1, 2**63, 1, 2**64 - 1], np.uint64)
    pairs, dist = _hamming_pairs(extremes, 1)
    assert as_set(pairs) == {(0, 2), (0, 3), (1, 4)} and dist.tolist() == [1, 1, 0]


def hand_made_duplicates() -> tuple[FaceData, Duplicates]:
    """Six faces: group {0, 1, 2} (0-1 exact, 1-2 near), group {3, 4}, face 5 alone."""
    data = faces(
        np.zeros((6, 2, 2), np.uint8),
        age=[20, 20, 30, 40, 50, 60],
        gender=[0, 1, 0, 1, 1, 0],
        ethnicity=[0, 0, 0, 2, 3, 1],
    )
    dup = Duplicates(
        pairs=np.array([[0, 1], [1, 2], [3, 4]]),
        mad=np.array([0.0, 2.5, 4.0]),
        hamming=np.array([0, 3, 6]),
        exact=np.array([True, False, False]),
        group=np.array([0, 0, 0, 1, 1, 2]),
    )
    return data, dup


def test_conflict_summary_hand_counted():
    data, dup = hand_made_duplicates()
    assert conflict_summary(data, dup) == {
        "exact_pairs": 1,
        "exact_faces": 2,
        "near_pairs": 3,
        "near_faces": 5,
        "groups": 2,
        "largest_group": 3,
        "pairs_gender_differs": 0.6667,  # (0,1) and (1,2)
        "pairs_ethnicity_differs": 0.3333,  # (3,4)
        "pairs_age_differs": 0.6667,  # gaps 0, 10, 10
        "pairs_age_gap_over_5": 0.6667,
        "median_age_gap_when_different": 10.0,
    }


def test_conflict_summary_without_duplicates():
    data = faces(np.zeros((3, 2, 2), np.uint8), [1, 2, 3], [0, 1, 0], [0, 1, 2])
    dup = Duplicates(np.zeros((0, 2), np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool), np.arange(3))
    summary = conflict_summary(data, dup)
    assert summary["near_pairs"] == summary["groups"] == summary["exact_faces"] == 0
    assert summary["largest_group"] == 1 and summary["pairs_gender_differs"] == 0.0
    assert summary["median_age_gap_when_different"] == 0.0


def test_write_duplicates_csv(tmp_path):
    data, dup = hand_made_duplicates()
    path = write_duplicates_csv(data, dup, tmp_path / "duplicates.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and [p.name for p in tmp_path.iterdir()] == ["duplicates.csv"]
    assert rows[0] == {
        "group": "0",
        "id_a": "row00000",
        "id_b": "row00001",
        "name_a": "0.jpg",
        "name_b": "1.jpg",
        "age_a": "20",
        "age_b": "20",
        "gender_a": "male",
        "gender_b": "female",
        "ethnicity_a": "White",
        "ethnicity_b": "White",
        "exact": "1",
        "mean_abs_diff": "0.000",
        "hash_hamming": "0",
    }
    assert [r["ethnicity_b"] for r in rows] == ["White", "White", "Indian"]


def test_write_duplicates_csv_that_fails_keeps_the_earlier_file(tmp_path):
    data, dup = hand_made_duplicates()
    path = write_duplicates_csv(data, dup, tmp_path / "duplicates.csv")
    before = path.read_bytes()
    broken = Duplicates(np.array([[0, 1], [0, 99]]), dup.mad[:2], dup.hamming[:2], dup.exact[:2], dup.group)
    with pytest.raises(IndexError):
        write_duplicates_csv(data, broken, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["duplicates.csv"]
