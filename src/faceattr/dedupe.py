"""Exact and near-duplicate faces: byte hashes, a 64-bit DCT perceptual hash searched by
multi-index hashing (never all pairs in Python), a pixel check, and groups by connected
components, plus the label-conflict summary that shows why duplicates matter."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from faceattr.atomic import atomic_path
from faceattr.dataset import FaceData
from faceattr.labels import ETHNICITIES, GENDERS

HASH_SIDE = 32
HASH_BITS = 8  # the low-frequency 8x8 block of the DCT: 64 bits


@dataclass
class Duplicates:
    """Duplicate pairs and the groups they form.

    pairs: int (P, 2), i < j, row indices of near-duplicate pairs (exact ones included).
    mad: float (P,), mean absolute pixel difference of each pair on the 0..255 scale.
    hamming: int (P,), perceptual-hash Hamming distance of each pair.
    exact: bool (P,), the pair is byte-identical.
    group: int (N,), a group id per face; faces without a duplicate are their own group.
    """

    pairs: np.ndarray
    mad: np.ndarray
    hamming: np.ndarray
    exact: np.ndarray
    group: np.ndarray


def pixel_sha1(images: np.ndarray) -> np.ndarray:
    """Hex SHA-1 of each image's raw uint8 bytes, shape (N,)."""
    return np.array([hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images])


def _gray(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4:
        # ITU-R 601 luma, the same weights Pillow uses for convert("L").
        return images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return images.astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def perceptual_hash(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """64-bit DCT perceptual hash per image (uint64, shape (N,)).

    Area-resize to 32x32, 2-D DCT, keep the 8x8 lowest frequencies, one bit per coefficient:
    above the block's median. Robust to re-encoding and small intensity changes.
    """
    dct = torch.from_numpy(_dct_matrix(HASH_SIDE))
    weights = torch.tensor([1 << b for b in range(63)] + [-(1 << 63)], dtype=torch.int64)
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(_gray(images[start : start + batch]))[:, None]  # (B, 1, H, W)
        x = F.interpolate(x, size=(HASH_SIDE, HASH_SIDE), mode="area")[:, 0]
        coef = (dct @ x @ dct.T)[:, :HASH_BITS, :HASH_BITS].reshape(len(x), -1)  # (B, 64)
        bits = coef > coef.median(dim=1, keepdim=True).values
        # Pack the 64 bits into one integer; the top bit carries the sign in int64.
        out.append((bits.to(torch.int64) * weights).sum(1).numpy().view(np.uint64))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def _hamming_pairs(h: np.ndarray, max_dist: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with popcount(h[i] ^ h[j]) <= max_dist, by multi-index hashing.

    Split the 64 bits into max_dist + 1 chunks: two hashes within max_dist differ in at most
    max_dist chunks, so they agree exactly on at least one. Only faces sharing a chunk value
    are compared, and those comparisons are vectorised in blocks.
    """
    bounds = np.linspace(0, 64, max_dist + 2).astype(int)
    found = [np.zeros((0, 2), np.int64)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        key = (h >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        ends = np.r_[starts[1:], len(sorted_key)]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            members = np.sort(order[s:e])
            for b in range(0, len(members), block):
                rows = members[b : b + block]
                dist = np.bitwise_count(h[rows, None] ^ h[None, members])
                i, j = np.nonzero(dist <= max_dist)
                a, c = rows[i], members[j]
                keep = a < c
                found.append(np.stack([a[keep], c[keep]], 1))
    pairs = np.unique(np.concatenate(found), axis=0)
    dist = np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]).astype(np.int64) if len(pairs) else np.zeros(0, np.int64)
    return pairs, dist


def find_duplicates(images: np.ndarray, max_hamming: int = 8, max_mad: float = 5.0) -> Duplicates:
    """Find exact and near-duplicate faces.

    A pair is a near duplicate when its perceptual hashes are within ``max_hamming`` bits and
    its mean absolute pixel difference is below ``max_mad`` (0..255 scale); byte-identical
    images are always paired. Groups are the connected components of the pair graph.
    """
    n = len(images)
    sha = pixel_sha1(images)
    hashes = perceptual_hash(images)
    pairs, ham = _hamming_pairs(hashes, max_hamming)
    # Byte-identical images always hash identically, so they are among the candidates, but
    # add them explicitly so the guarantee does not rest on the hash.
    _, inverse = np.unique(sha, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    same = inverse[order[1:]] == inverse[order[:-1]]
    exact_pairs = np.sort(np.stack([order[:-1][same], order[1:][same]], 1), axis=1)
    if len(exact_pairs):
        pairs = np.unique(np.concatenate([pairs, exact_pairs]), axis=0)
        ham = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)
    flat = images.reshape(n, -1)
    mad = np.zeros(len(pairs), np.float64)
    for start in range(0, len(pairs), 8192):
        p = pairs[start : start + 8192]
        diff = np.abs(flat[p[:, 0]].astype(np.int16) - flat[p[:, 1]].astype(np.int16))
        mad[start : start + 8192] = diff.mean(1)
    exact = sha[pairs[:, 0]] == sha[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    keep = (mad < max_mad) | exact
    pairs, mad, ham, exact = pairs[keep], mad[keep], ham[keep], exact[keep]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    return Duplicates(pairs=pairs, mad=mad, hamming=ham, exact=exact, group=group.astype(np.int64))


def conflict_summary(data: FaceData, dup: Duplicates) -> dict:
    """How often the labels of duplicate pairs disagree: the label noise a random split leaks."""
    a, b = dup.pairs[:, 0], dup.pairs[:, 1]
    n_pairs = len(dup.pairs)
    gap = np.abs(data.age[a].astype(int) - data.age[b].astype(int))
    sizes = np.bincount(dup.group)
    in_dup = sizes[dup.group] > 1

    def share(mask: np.ndarray) -> float:
        return round(float(mask.mean()), 4) if n_pairs else 0.0

    return {
        "exact_pairs": int(dup.exact.sum()),
        "exact_faces": int(len(np.unique(dup.pairs[dup.exact]))),
        "near_pairs": n_pairs,
        "near_faces": int(in_dup.sum()),
        "groups": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "pairs_gender_differs": share(data.gender[a] != data.gender[b]),
        "pairs_ethnicity_differs": share(data.ethnicity[a] != data.ethnicity[b]),
        "pairs_age_differs": share(gap > 0),
        "pairs_age_gap_over_5": share(gap > 5),
        "median_age_gap_when_different": float(np.median(gap[gap > 0])) if (gap > 0).any() else 0.0,
    }


def write_duplicates_csv(data: FaceData, dup: Duplicates, path: Path) -> Path:
    """One row per duplicate pair: group, both ids and names, both label sets, distances."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "group",
                "id_a",
                "id_b",
                "name_a",
                "name_b",
                "age_a",
                "age_b",
                "gender_a",
                "gender_b",
                "ethnicity_a",
                "ethnicity_b",
                "exact",
                "mean_abs_diff",
                "hash_hamming",
            ]
        )
        for (i, j), mad, ham, exact in zip(dup.pairs, dup.mad, dup.hamming, dup.exact):
            w.writerow(
                [
                    dup.group[i],
                    data.ids[i],
                    data.ids[j],
                    data.names[i],
                    data.names[j],
                    data.age[i],
                    data.age[j],
                    GENDERS[data.gender[i]],
                    GENDERS[data.gender[j]],
                    ETHNICITIES[data.ethnicity[i]],
                    ETHNICITIES[data.ethnicity[j]],
                    int(exact),
                    f"{mad:.3f}",
                    int(ham),
                ]
            )
    return path
