"""Distillation from a face teacher and age-balanced loss weights: the teacher cache (format,
alignment to a table's ids, refusals), the masked distillation loss, a run that learns the
teacher's embedding without exporting it, and the per-face age weights. Synthetic data only (no
dlib needed: the cache is what training reads)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from faceattr.age import age_weights, two_stage_loss
from faceattr.cache import load_prepared
from faceattr.checkpoint import load_checkpoint, model_from_checkpoint
from faceattr.config import resolve_config
from faceattr.inference import inference_model
from faceattr.inputerror import InputError
from faceattr.release import release_checkpoint
from faceattr.tasks import TEACHER_HEAD, teacher_loss
from faceattr.teacher import EMBED_DIM, load_cache, write_cache
from faceattr.train import train
from test_train import _cfg, data_dir  # noqa: F401  (the module's prepared-data fixture)


def _cache(path: Path, ids: np.ndarray, gender: np.ndarray, ethnicity: np.ndarray, has: np.ndarray) -> Path:
    """A teacher whose embedding is a fixed random direction per (gender, ethnicity) pair plus
    noise, and whose probes are sure of the true classes."""
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(2, 5, EMBED_DIM))
    emb = directions[gender, ethnicity] + 0.1 * rng.normal(size=(len(ids), EMBED_DIM))
    return write_cache(
        path,
        {
            "ids": ids,
            "has": has,
            "embedding": emb.astype(np.float16),
            "gender_prob": np.eye(2)[gender].astype(np.float32),
            "ethnicity_prob": np.eye(5)[ethnicity].astype(np.float32),
            "age": np.full(len(ids), 30.0, np.float32),
        },
        {"teacher": "synthetic"},
    )


@pytest.fixture(scope="module")
def teacher_cache(data_dir, tmp_path_factory) -> Path:  # noqa: F811
    data = load_prepared(data_dir).data
    has = np.ones(len(data), bool)
    has[::7] = False  # some faces without a teacher answer
    return _cache(tmp_path_factory.mktemp("teacher") / "t.npz", data.ids, data.gender, data.ethnicity, has)


def test_cache_follows_the_tables_ids_and_marks_what_it_lacks(teacher_cache):
    z = np.load(teacher_cache)
    ids = np.array([z["ids"][3], "not-in-cache", z["ids"][1], z["ids"][7]])
    t = load_cache(teacher_cache, ids)
    assert t.has.tolist() == [True, False, True, False]  # rows 0, 7, ... were has=False
    assert np.allclose(np.linalg.norm(t.embedding[[0, 2]], axis=1), 1.0, atol=1e-3)
    assert np.allclose(t.embedding[[1, 3]], 0) and np.allclose(t.gender_prob[1], 0)
    np.testing.assert_allclose(t.gender_prob[0], z["gender_prob"][3])


def test_cache_refusals_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such teacher cache"):
        load_cache(tmp_path / "missing.npz", np.array(["a"]))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a teacher cache"):
        load_cache(tmp_path / "bad.npz", np.array(["a"]))
    np.savez(tmp_path / "partial.npz", ids=np.array(["a"]))
    with pytest.raises(InputError, match="lacks has, embedding"):
        load_cache(tmp_path / "partial.npz", np.array(["a"]))


def test_config_needs_a_cache_for_teacher_weights():
    with pytest.raises(InputError, match="teacher"):
        resolve_config(overrides={"teacher_embed_weight": 1.0})
    with pytest.raises(InputError, match="age_balance"):
        resolve_config(overrides={"age_balance": 0.5, "age_head": "direct"})


def test_teacher_loss_ignores_faces_without_an_answer():
    torch.manual_seed(0)
    out = {TEACHER_HEAD: torch.randn(4, 8, requires_grad=True), "gender": torch.randn(4, 2, requires_grad=True)}
    targets = {
        "teacher_has": torch.tensor([True, True, False, False]),
        "teacher_embedding": torch.nn.functional.normalize(torch.randn(4, 8), dim=1),
        "teacher_gender": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
    }
    loss = teacher_loss(out, targets, 1.0, 1.0)
    loss.backward()
    assert out[TEACHER_HEAD].grad[2:].abs().sum() == 0 and out["gender"].grad[2:].abs().sum() == 0
    assert out[TEACHER_HEAD].grad[:2].abs().sum() > 0
    # A head pointing exactly along the teacher's embedding costs nothing there.
    same = {TEACHER_HEAD: 3 * targets["teacher_embedding"]}
    assert teacher_loss(same, targets, 1.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distilled_run_learns_the_embedding_and_does_not_export_it(data_dir, teacher_cache, tmp_path):  # noqa: F811
    lines: list[str] = []
    cfg = _cfg(epochs=10, teacher=str(teacher_cache), teacher_embed_weight=3.0, teacher_soft_weight=0.5)
    train(cfg, data_dir, tmp_path / "run", log=lines.append)
    n_train = int((load_prepared(data_dir).split == "train").sum())
    n_has = int(load_cache(teacher_cache, load_prepared(data_dir).part("train").ids).has.sum())
    assert any(f"targets for {n_has} of {n_train} training faces" in line for line in lines)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    net = model_from_checkpoint(ckpt)
    val = load_prepared(data_dir).part("val")
    x = (torch.from_numpy(val.images[:, None].astype(np.float32)) / 255 - ckpt["preprocessing"]["mean"]) / ckpt[
        "preprocessing"
    ]["std"]
    with torch.no_grad():
        head = net(x)[TEACHER_HEAD]
    target = load_cache(teacher_cache, val.ids)
    emb = torch.from_numpy(target.embedding)
    cos = torch.nn.functional.cosine_similarity(head, emb, dim=1)[target.has]
    other = torch.nn.functional.cosine_similarity(head, emb.roll(1, 0), dim=1)[target.has & np.roll(target.has, 1)]
    # Unseen faces: the head points along the teacher's direction for their own classes, well
    # above its agreement with another face's teacher embedding.
    assert cos.mean() > 0.3 and cos.mean() > other.mean() + 0.15
    model = inference_model(ckpt, None)
    assert "teacher_embed_logits" not in model.output_names and "gender_prob" in model.output_names
    # The release drops the training-only head; the rest of the network answers as before.
    shipped = release_checkpoint(ckpt, {}, {"name": "t"})
    assert TEACHER_HEAD not in shipped["model_args"]["heads"]
    assert not any(TEACHER_HEAD in k for k in shipped["model"])
    with torch.no_grad():
        before, after = net(x), model_from_checkpoint(shipped).float()(x)
    assert set(after) == set(before) - {TEACHER_HEAD}
    torch.testing.assert_close(after["gender"], before["gender"], atol=2e-2, rtol=0)  # float16 weights


def test_age_weights_favour_rare_ages_and_enter_the_loss():
    ages = np.array([25] * 90 + [75] * 10)
    w = age_weights(ages, 0.5)
    assert w.mean() == pytest.approx(1.0) and w[-1] / w[0] == pytest.approx(3.0)
    assert np.all(age_weights(ages, 0.0) == 1.0)
    logits, reg = torch.randn(4, 3), torch.randn(4, 3)
    a = torch.tensor([5.0, 20.0, 60.0, 90.0])
    edges = [1, 13, 40, 117]
    each = torch.stack([two_stage_loss(logits[[k]], reg[[k]], a[[k]], edges) for k in range(4)])
    weights = torch.tensor([0.5, 0.5, 1.0, 2.0])
    assert two_stage_loss(logits, reg, a, edges, weights=weights).item() == pytest.approx(
        (each * weights).mean().item(), rel=1e-5
    )
