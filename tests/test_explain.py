"""Grad-CAM on a tiny trained model: map shapes and range, the head/class/age targets against a
hand-computed Grad-CAM, hooks released (also after an error), the randomisation sanity check,
the explain job's files and index.json, and the CLI's one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from faceattr.cli import main
from faceattr.explain import (
    HeadOutput,
    compute_cams,
    explain_run,
    grad_cam,
    load_run,
    randomised_copy,
    sanity_check,
    spearman_maps,
)
from faceattr.preprocess import to_input
from faceattr.tasks import decode, decode_age
from tiny_model import make_tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(tiny):
    run_dir, data_dir = tiny
    ckpt, model, age = load_run(run_dir)
    from faceattr.cache import load_prepared

    test = load_prepared(data_dir).part("test")
    return ckpt, model, age, test


def _no_hooks(model: torch.nn.Module) -> bool:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return all(not getattr(m, name) for m in model.modules() for name in names)


def test_cams_have_the_image_shape_lie_in_0_1_and_leave_no_hooks(loaded):
    ckpt, model, age, test = loaded
    pre = ckpt["preprocessing"]
    model.train()  # the caller's mode must come back
    faces = test.images[:10]
    for output in ("gender", "ethnicity", "age_bin", "age"):
        cams = compute_cams(model, faces, pre["mean"], pre["std"], output, age=age)
        assert cams.shape == (10, 48, 48) and cams.dtype == np.float32, output
        assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0.99, output
    assert _no_hooks(model)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()


def test_hooks_are_released_when_a_target_fails(loaded):
    ckpt, model, age, test = loaded
    x = to_input(torch.from_numpy(test.images[:2]), ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"])
    with pytest.raises(IndexError):
        with grad_cam(model, "gender") as cam:
            assert not _no_hooks(model)  # the layer4 hooks are in place meanwhile
            cam(input_tensor=x, targets=[ClassifierOutputTarget(7)] * 2)  # gender has 2 classes
    assert _no_hooks(model)
    assert all(p.requires_grad for p in model.parameters())


def test_head_output_selects_one_head_or_the_decoded_age(loaded):
    ckpt, model, age, test = loaded
    x = to_input(torch.from_numpy(test.images[:4]), ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"])
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(HeadOutput(model, "ethnicity")(x), out["ethnicity"])
        assert torch.allclose(HeadOutput(model, "age", age)(x), decode(out, age)["age"])
    with pytest.raises(ValueError, match="no head 'smile'"):
        HeadOutput(model, "smile")


def _hand_grad_cam(model, x, score, layer="layer4") -> np.ndarray:
    """Grad-CAM by hand: channel weights = mean gradient of the score over ``layer``'s map."""
    blocks = ["stem", "layer1", "layer2", "layer3", "layer4"]
    for name in blocks[: blocks.index(layer) + 1]:
        x = getattr(model, name)(x)
    feats = x  # (B, C, h, w)
    feats.retain_grad()
    for name in blocks[blocks.index(layer) + 1 :]:
        x = getattr(model, name)(x)
    z = model.pool(x)
    out = {name: head(z) for name, head in model.heads.items()}
    score(out).sum().backward()
    cam = torch.relu((feats.grad.mean((2, 3), keepdim=True) * feats).sum(1)).detach().numpy()
    model.zero_grad(set_to_none=True)
    maps = []
    for c in cam:
        c = cv2.resize(((c - c.min()) / (c.max() - c.min() + 1e-7)).astype(np.float32), (48, 48))
        maps.append((c - c.min()) / (c.max() - c.min() + 1e-7))  # rescaled after the resize, as the library does
    return np.stack(maps)


def test_targets_match_a_hand_computed_grad_cam(loaded):
    ckpt, model, age, test = loaded
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    faces = test.images[:6]
    x = to_input(torch.from_numpy(faces), mean, std)
    model.eval()
    classes = np.array([3, 0, 1, 4, 2, 3])

    for layer in ("layer2", "layer4"):
        cams = compute_cams(model, faces, mean, std, "ethnicity", classes, layer=layer)
        score = lambda out: out["ethnicity"][torch.arange(6), torch.from_numpy(classes)]  # noqa: E731
        assert np.allclose(cams, _hand_grad_cam(model, x, score, layer), atol=1e-4)
        cams = compute_cams(model, faces, mean, std, "age", age=age, layer=layer)
        assert np.allclose(cams, _hand_grad_cam(model, x, lambda out: decode_age(out, age)["age"], layer), atol=1e-4)
    # Another class gives another map: the target really selects the class.
    other = compute_cams(model, faces, mean, std, "ethnicity", (classes + 1) % 5)
    assert not np.allclose(other, compute_cams(model, faces, mean, std, "ethnicity", classes), atol=1e-3)


def test_spearman_of_maps():
    a = np.arange(16, dtype=float).reshape(1, 4, 4)
    assert spearman_maps(a, a**2)[0] == pytest.approx(1.0)
    assert spearman_maps(a, -a)[0] == pytest.approx(-1.0)
    assert spearman_maps(a, np.zeros_like(a))[0] == 0.0  # a constant map shares no ranking


def test_randomised_copy_reinitialises_only_the_named_blocks(loaded):
    _, model, _, _ = loaded
    clone = randomised_copy(model, ["heads", "layer4"])
    before, after = model.state_dict(), clone.state_dict()
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert not torch.equal(before["heads.gender.weight"], after["heads.gender.weight"])
    assert torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    again = randomised_copy(model, ["heads", "layer4"]).state_dict()  # seeded: the same draw
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_sanity_check_maps_change_when_weights_are_randomised(loaded):
    ckpt, model, age, test = loaded
    check = sanity_check(model, test.images[:32], ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"])
    assert check["trained_vs_noisy_input"] > 0.8
    assert check["full_randomisation"] < check["trained_vs_noisy_input"] - 0.3
    assert [s["randomised"][-1] for s in check["cascade"]] == ["heads", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert check["maps"]["trained"].shape == (32, 48, 48)
    assert _no_hooks(model)


def test_mirror_check_tells_maps_that_follow_the_face_from_maps_that_stay_put(loaded, monkeypatch):
    import faceattr.explain as explain

    ckpt, model, _, test = loaded
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    faces = test.images[:8].copy()
    faces[:, :, :20] //= 4  # a dark left side, so faces and their mirror images differ

    def follows_face(model, images, *args, **kwargs):  # a "map" that is the face itself
        return images.astype(np.float32) / 255

    def stays_put(model, images, *args, **kwargs):  # hot on the left whatever the face
        return np.broadcast_to(np.linspace(1, 0, 48, dtype=np.float32), images.shape[:3]).copy()

    monkeypatch.setattr(explain, "compute_cams", follows_face)
    assert sanity_check(model, faces, mean, std)["mirror_consistency"] == pytest.approx(1.0)
    monkeypatch.setattr(explain, "compute_cams", stays_put)
    assert sanity_check(model, faces, mean, std)["mirror_consistency"] == pytest.approx(-1.0)


def test_cam_overlays_are_rgb_per_head_and_flag_empty_maps(loaded, monkeypatch):
    import faceattr.explain as explain

    ckpt, model, age, test = loaded
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    real = explain.compute_cams

    def no_heat_for_age(model, images, mean, std, output, *args, **kwargs):
        cams = real(model, images, mean, std, output, *args, **kwargs)
        return np.zeros_like(cams) if output == "age_bin" else cams

    monkeypatch.setattr(explain, "compute_cams", no_heat_for_age)
    out = explain.cam_overlays(model, test.images[:3], mean, std, age, 96)
    assert set(out) == {"gender", "ethnicity", "age"}
    for head, (images, empty) in out.items():
        assert images.shape == (3, 96, 96, 3) and images.dtype == np.uint8
        assert empty.tolist() == [head == "age"] * 3


def test_explain_run_writes_grids_mean_maps_and_index(tiny):
    run_dir, data_dir = tiny
    out = run_dir / "explain-test"
    index = explain_run(run_dir, data_dir, out, n_errors=4, n_correct=4, sanity_faces=8, log=lambda *_: None)
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk == index and index["title"] == "Grad-CAM"
    assert all(isinstance(t, str) and "\n" not in t for t in index["text"])
    assert any(t.startswith("Sanity check") for t in index["text"])
    paths = [f["path"] for f in index["figures"]]
    assert "gender_mean_maps.png" in paths and "age_mean_maps.png" in paths and "sanity_check.png" in paths
    assert "gender_errors.png" in paths or "gender_correct.png" in paths
    for f in index["figures"]:
        assert (out / f["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f["caption"]
    details = json.loads((out / "explain.json").read_text())
    assert 0 <= details["findings"]["gender"]["n_wrong"] <= 72


def test_explain_images_mode_needs_no_data(tiny, tmp_path):
    from PIL import Image

    run_dir, data_dir = tiny
    rng = np.random.default_rng(0)
    files = []
    for k in range(2):
        files.append(tmp_path / f"face{k}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(files[-1])
    out = tmp_path / "out"
    assert main(["explain", str(run_dir), "--images", *map(str, files), "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert (out / index["figures"][0]["path"]).is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "holdout"], "--split 'holdout': expected one of train, val, test"),
        (["--errors", "-1"], "--errors and --correct must be >= 0"),
        (["--images", "missing.png"], "missing.png: no such image file"),
        (["--images", "BAD"], "not a readable image"),
        (["--data", "NODATA"], "not a prepared data folder"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(tiny, tmp_path, capsys, extra, message):
    run_dir, data_dir = tiny
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    extra = [str(bad) if e == "BAD" else str(tmp_path) if e == "NODATA" else e for e in extra]
    args = ["explain", str(run_dir), "--data", str(data_dir), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("faceattr explain: error:")


def test_cli_refuses_a_missing_run_and_a_foreign_split(tiny, tmp_path, capsys):
    from faceattr.cache import load_prepared, save_prepared

    run_dir, data_dir = tiny
    assert main(["explain", str(tmp_path / "nope"), "--data", str(data_dir)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    prepared = load_prepared(data_dir)
    prepared.split = np.roll(prepared.split, 5)
    other = tmp_path / "other"
    other.mkdir()
    save_prepared(other, prepared)
    assert main(["explain", str(run_dir), "--data", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from the one the model was trained on" in err
