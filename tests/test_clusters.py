"""Error clusters: image statistics by hand, k chosen by silhouette on planted blobs, seeded
determinism, descriptions that name a planted difference (a dark subgroup, one confusion),
and the cluster job end to end on a tiny trained model, including its CLI errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from faceattr.cli import main
from faceattr.clusters import cluster_embeddings, cluster_head, cluster_run, describe, embed_faces, image_stats
from faceattr.dataset import FaceData
from tiny_model import make_tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def test_image_stats_by_hand():
    flat = np.full((1, 8, 8), 100, np.uint8)
    checker = np.where((np.add.outer(np.arange(8), np.arange(8)) % 2) == 0, 200, 0).astype(np.uint8)[None]
    stats = image_stats(np.concatenate([flat, checker]))
    assert stats["brightness"].tolist() == [100.0, 100.0]
    assert stats["contrast"].tolist() == [0.0, 100.0]
    # Laplacian of a 0/200 checkerboard: +-800 at every pixel (mirrored borders keep the pattern).
    assert stats["sharpness"][0] == 0.0 and stats["sharpness"][1] == pytest.approx(800.0**2)


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, 16))
    truth = np.repeat([0, 1, 2], [50, 30, 20])
    return centres[truth] + rng.normal(0, 1, (100, 16)), truth


def test_k_by_silhouette_finds_planted_blobs_and_is_deterministic():
    emb, truth = _blobs()
    a = cluster_embeddings(emb, seed=0)
    assert a.k == 3 and set(a.silhouette) == set(range(2, 9))
    # Clusters are numbered by size, so they match the planted blobs exactly.
    assert np.array_equal(a.labels, truth)
    b = cluster_embeddings(emb, seed=0)
    assert np.array_equal(a.labels, b.labels) and a.silhouette == b.silhouette
    assert np.array_equal(a.coords, b.coords) and a.coords.shape == (100, 2)


def test_k_range_stops_below_the_number_of_points():
    emb, _ = _blobs()
    c = cluster_embeddings(emb[:5], seed=0)
    assert max(c.silhouette) <= 4


def test_description_names_the_planted_dark_subgroup():
    rng = np.random.default_rng(0)
    members = np.zeros(90, bool)
    members[:30] = True
    numeric = {
        "brightness": np.where(members, rng.normal(70, 8, 90), rng.normal(105, 8, 90)),
        "contrast": rng.normal(40, 5, 90),
        "sharpness": rng.normal(300, 40, 90),
    }
    pair = rng.choice(["true Indian predicted White", "true Black predicted Indian"], 90)
    shares = {name: pair == name for name in np.unique(pair)}
    text, scored = describe(members, numeric, shares)
    first = text.split("; ")[0]
    assert re.fullmatch(r"darker than other errors \(mean (\d+) vs (\d+)\)", first), text
    low, high = map(int, re.findall(r"\d+", first))
    assert 60 <= low <= 78 and 96 <= high <= 114
    assert scored[0]["feature"] == "brightness" and scored[0]["d"] < -1.5


def test_description_names_a_planted_confusion_first_when_it_dominates():
    rng = np.random.default_rng(1)
    members = np.zeros(100, bool)
    members[:40] = True
    pair = np.where(members, "true Indian predicted White", "true Asian predicted White")
    pair[:5] = "true Asian predicted White"  # 35 of 40 in the cluster
    numeric = {"brightness": rng.normal(100, 10, 100)}
    text, _ = describe(members, numeric, {name: pair == name for name in np.unique(pair)})
    assert text.startswith("88 % true Indian predicted White (vs 0 % of other errors)")


def test_cluster_head_separates_a_dark_subgroup_of_errors(tmp_path):
    """A dark third of the mistakes with its own region of embedding space becomes a cluster
    whose description says it is darker."""
    rng = np.random.default_rng(0)
    n = 90
    dark = np.arange(n) < 30
    level = np.where(dark, 60, 120)[:, None, None]
    images = np.clip(level + rng.normal(0, 10, (n, 48, 48)), 0, 255).astype(np.uint8)
    gender = rng.integers(0, 2, n).astype(np.int8)
    part = FaceData(
        images=images,
        age=rng.integers(20, 60, n).astype(np.int16),
        gender=gender,
        ethnicity=rng.integers(0, 5, n).astype(np.int8),
        ids=np.array([f"f{k}" for k in range(n)]),
        names=np.array([f"f{k}.jpg" for k in range(n)]),
        source="synthetic",
    )
    prob = np.eye(2)[1 - gender]  # every face is a gender mistake
    emb = rng.normal(0, 1, (n, 12)) + np.where(dark, 6.0, 0.0)[:, None]
    summary, figures = cluster_head("gender", part, {"gender": prob}, emb, image_stats(images), None, 0, tmp_path)
    assert summary["n_errors"] == n and summary["k"] == 2
    darkest = min(summary["clusters"], key=lambda c: c["stats"]["brightness"])
    assert darkest["size"] == 30 and darkest["description"].startswith("darker than other errors (mean 60 vs 120)")
    assert sorted(darkest["ids"]) == sorted(part.ids[dark].tolist())
    assert all((tmp_path / f["path"]).is_file() for f in figures)


def test_one_pass_embeddings_and_predictions_match_the_model(tiny):
    from faceattr.cache import load_prepared
    from faceattr.explain import load_run
    from faceattr.train import predict_outputs

    run_dir, data_dir = tiny
    ckpt, model, age = load_run(run_dir)
    test = load_prepared(data_dir).part("test")
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    emb, pred = embed_faces(model, test.images, mean, std, age=age, batch_size=16)
    reference = predict_outputs(model, test.images, mean, std, "cpu", age)
    assert emb.shape == (len(test), model.num_features)
    assert set(pred) == set(reference)
    assert all(np.allclose(pred[k], reference[k], atol=1e-5) for k in pred)


def test_cluster_run_end_to_end_is_deterministic(tiny, tmp_path):
    run_dir, data_dir = tiny
    index = cluster_run(run_dir, data_dir, tmp_path / "a", log=lambda *_: None)
    cluster_run(run_dir, data_dir, tmp_path / "b", log=lambda *_: None)
    a = json.loads((tmp_path / "a" / "clusters.json").read_text())
    b = json.loads((tmp_path / "b" / "clusters.json").read_text())
    assert a == b
    assert index == json.loads((tmp_path / "a" / "index.json").read_text()) and index["title"] == "Error clusters"
    heads = {h["head"]: h for h in a["heads"]}
    assert set(heads) == {"gender", "ethnicity", "age"}
    clustered = [h for h in heads.values() if "clusters" in h]
    assert clustered, "the tiny model should make enough mistakes to cluster"
    for h in clustered:
        assert sum(c["size"] for c in h["clusters"]) == h["n_errors"] and 2 <= h["k"] <= 8
        assert all(c["description"] for c in h["clusters"])
    for f in index["figures"]:
        assert (tmp_path / "a" / f["path"]).read_bytes()[:4] == b"\x89PNG"


def test_cluster_cli_default_folder_and_bad_inputs(tiny, tmp_path, capsys):
    run_dir, data_dir = tiny
    assert main(["cluster", str(run_dir), "--data", str(data_dir)]) == 0
    assert (run_dir / "clusters" / "index.json").is_file()
    capsys.readouterr()
    assert main(["cluster", str(run_dir), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a prepared data folder" in err
    assert main(["cluster", str(run_dir), "--data", str(data_dir), "--split", "everything"]) == 2
    assert "expected one of train, val, test" in capsys.readouterr().err
