"""Release: the ONNX export (one self-contained file, dynamic batch, the same numbers as PyTorch
on every output), the ONNX Runtime backend of the predictor, the float16 release weights and
the rule that only a better model replaces the shipped one."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from faceattr import release
from faceattr.align import model_chip
from faceattr.calibration import half_widths
from faceattr.checkpoint import load_checkpoint
from faceattr.cli import main
from faceattr.inference import inference_model, onnx_bytes
from faceattr.inputerror import InputError
from faceattr.onnxmodel import OnnxModel, chips_to_pixels
from faceattr.predictor import Predictor
from faceattr.pretrained import PRETRAINED, pretrained_path
from faceattr.readers import read_kaggle_csv
from faceattr.release import CANONICAL_SPLIT, MAX_RELEASE_BYTES, PARITY_TOLERANCE, sha256
from tiny_model import make_tiny_run

TEMPERATURE = {"gender": 0.7, "ethnicity": 1.3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained run with a calibration.json, and its prepared data."""
    run_dir, data_dir = make_tiny_run(tmp_path_factory.mktemp("release"))
    (run_dir / "calibration.json").write_text(json.dumps({"temperature": TEMPERATURE, "checkpoint": "best.pt"}))
    return run_dir, data_dir


@pytest.fixture(scope="module")
def sample_faces() -> np.ndarray:
    """Real 48x48 faces: the first 64 of the UTKFace sample that ships with faceattr."""
    with resources.as_file(resources.files("faceattr.sample").joinpath("utkface48_sample.csv.gz")) as path:
        data, _ = read_kaggle_csv(path)
    return data.images[:64]


def max_diffs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    assert set(a) == set(b)
    return {name: float(np.abs(a[name] - b[name]).max()) for name in a}


def test_onnx_export_is_one_file_with_a_dynamic_batch_and_matches_torch(tiny, tmp_path, capsys):
    run_dir, data_dir = tiny
    out, results = tmp_path / "onnx" / "tiny.onnx", tmp_path / "release.json"
    assert main(["export", str(run_dir), "--onnx", str(out), "--data", str(data_dir), "--results", str(results)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no .data side file, no temp file
    proto = onnx.load(str(out))  # loads with nothing beside it: the weights are inside
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["faceattr.calibrated"] == "true"
    summary = json.loads(results.read_text())
    assert summary["onnx"]["checked_on"].startswith("72 test faces")
    assert max(summary["onnx"]["max_abs_diff"].values()) <= PARITY_TOLERANCE

    torch_model = inference_model(load_checkpoint(run_dir), TEMPERATURE)
    runtime = OnnxModel(out)
    assert (
        runtime.output_names
        == torch_model.output_names
        == [
            "gender_prob",
            "ethnicity_prob",
            "age",
            "age_bin_prob",
            "gender_logits",
            "ethnicity_logits",
            "age_bin_logits",
            "age_reg_logits",
        ]
    )
    faces = np.load(data_dir / "data.npz")["images"]
    for n in (1, 7, 100):  # the batch axis is free, including a batch of one
        pixels = chips_to_pixels(faces[:n])
        diffs = max_diffs(torch_model.run(pixels), runtime.run(pixels))
        assert max(diffs.values()) <= PARITY_TOLERANCE, diffs
    # The graph applies the calibration: its probabilities are softmax(logits / T).
    got = runtime.run(chips_to_pixels(faces[:5]))
    want = torch.softmax(torch.from_numpy(got["gender_logits"]) / TEMPERATURE["gender"], 1).numpy()
    np.testing.assert_allclose(got["gender_prob"], want, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_model_runs_the_same_on_onnx_runtime(sample_faces, name):
    ckpt = load_checkpoint(pretrained_path(name))
    model = inference_model(
        ckpt, ckpt["calibration"]["temperature"], age_half_width=half_widths(ckpt["calibration"], ckpt)
    )
    size, gray = int(ckpt["preprocessing"]["size"]), ckpt["preprocessing"]["color"] == "gray"
    runtime = OnnxModel(onnx_bytes(model, 1 if gray else 3, size))
    # the sample's faces at this model's input, made as the predictor makes its chips
    pixels = chips_to_pixels(np.stack([model_chip(Image.fromarray(face), size, gray) for face in sample_faces]))
    diffs = max_diffs(model.run(pixels), runtime.run(pixels))
    assert max(diffs.values()) <= PARITY_TOLERANCE, diffs
    assert {"age_low", "age_high"} <= set(runtime.output_names)  # the fitted age ranges are in the graph


def test_an_exported_file_carries_what_the_predictor_needs(tmp_path, capsys):
    path = tmp_path / "shipped.onnx"
    assert main(["export", "pretrained", "--onnx", str(path)]) == 0
    from_file, from_weights = Predictor.from_onnx(path), Predictor.from_pretrained()
    assert from_file.calibrated and from_file.age_range_coverage == from_weights.age_range_coverage == 0.8
    chip = np.full((48, 48), 100, np.uint8)
    a, b = from_file.predict(chip, detect=False)[0], from_weights.predict(chip, detect=False)[0]
    assert a.age_range == pytest.approx(b.age_range, abs=1e-3) and a.age == pytest.approx(b.age, abs=1e-3)


def test_predict_backend_onnx_gives_the_torch_answers(tiny, tmp_path, capsys):
    run_dir, data_dir = tiny
    chips = np.load(data_dir / "data.npz")["images"][:9]
    by_torch = Predictor.from_checkpoint(run_dir, batch_size=4)
    by_onnx = Predictor.from_checkpoint(run_dir, backend="onnx", batch_size=4)
    assert (by_torch.backend, by_onnx.backend) == ("torch", "onnx") and by_onnx.calibrated
    assert by_onnx.torch_model is None and by_torch.torch_model is not None
    for a, b in zip(by_torch.predict_many(chips, detect=False), by_onnx.predict_many(chips, detect=False)):
        assert b[0].age == pytest.approx(a[0].age, abs=1e-3)
        assert list(b[0].ethnicity.values()) == pytest.approx(list(a[0].ethnicity.values()), abs=PARITY_TOLERANCE)

    from PIL import Image

    Image.fromarray(chips[0]).save(tmp_path / "chip.png")
    exported = tmp_path / "tiny.onnx"
    assert main(["export", str(run_dir), "--onnx", str(exported)]) == 0
    capsys.readouterr()
    args = ["predict", str(tmp_path / "chip.png"), "--no-detect", "--json"]
    assert main([*args, "--model", str(exported), "--backend", "onnx"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "onnx" and doc["calibrated"] is True
    face = doc["results"][0]["faces"][0]
    want = by_torch.predict(chips[0], detect=False)[0]
    assert face["gender"]["female"] == pytest.approx(want.gender["female"], abs=1e-4)
    assert main([*args, "--model", str(exported)]) == 0  # an .onnx file runs on ONNX Runtime by default
    assert json.loads(capsys.readouterr().out)["backend"] == "onnx"
    assert main([*args, "--model", str(exported), "--backend", "torch"]) == 2
    assert "--backend onnx" in capsys.readouterr().err


def test_release_weights_are_half_precision_and_only_a_better_model_replaces_them(tiny, tmp_path, capsys):
    run_dir, data_dir = tiny
    weights, results = tmp_path / "tiny-v9.pt", tmp_path / "release.json"
    cmd = ["export", str(run_dir), "--weights", str(weights), "--data", str(data_dir)]
    assert main([*cmd, "--results", str(results)]) == 0
    shipped = torch.load(weights, map_location="cpu", weights_only=True)
    assert {v.dtype for v in shipped["model"].values() if v.is_floating_point()} == {torch.float16}
    assert not {"optimizer", "history", "rng"} & set(shipped)
    assert shipped["calibration"]["temperature"] == TEMPERATURE
    record = shipped["release"]
    assert record["name"] == "tiny-v9"  # the file names the release, whatever the default is today
    summary = json.loads(results.read_text())["weights"]
    assert record["test"] == summary["test_float16"] and record["test"]["n"] == 72
    # Halving the weights moves no metric by more than rounding noise on 72 faces.
    full, half = summary["test_float32"], summary["test_float16"]
    assert abs(full["age_mae"] - half["age_mae"]) < 0.05 and abs(full["gender_acc"] - half["gender_acc"]) <= 1 / 72

    chip = np.full((48, 48), 120, np.uint8)
    a = Predictor.from_checkpoint(run_dir).predict(chip, detect=False)[0]
    b = Predictor.from_checkpoint(weights).predict(chip, detect=False)[0]  # calibration travels inside
    assert b.gender["female"] == pytest.approx(a.gender["female"], abs=5e-3)
    assert b.age == pytest.approx(a.age, abs=0.1)

    capsys.readouterr()
    # Another network there, scoring as well as this one: not replaced.
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in shipped["model"].items()}
    torch.save(dict(shipped, model=other), weights)
    before = sha256(weights)
    assert main(cmd) == 2
    assert "not better on the test split" in capsys.readouterr().err
    assert sha256(weights) == before
    # Another network scoring worse: replaced.
    worse = dict(
        shipped, model=other, release={**record, "test": {**record["test"], "score": record["test"]["score"] - 0.1}}
    )
    torch.save(worse, weights)
    assert main(cmd) == 0
    replaced = load_checkpoint(weights)
    assert sha256(weights) != before and replaced["release"]["test"] == record["test"]
    assert all(torch.equal(replaced["model"][k], v) for k, v in shipped["model"].items())
    # The same model may refresh its record and calibration (e.g. after a new `faceattr evaluate`) ...
    assert main([*cmd, "--results", str(results)]) == 0
    assert json.loads(results.read_text())["weights"]["replaced"]["same_model"] is True
    # ... but the same weights decoding age differently are another model, judged by its score.
    best = {**record, "test": {**record["test"], "score": 1.0}}
    other_age = {**shipped["age"], "routing_temperature": shipped["age"]["routing_temperature"] + 0.5}
    torch.save(dict(shipped, age=other_age, release=best), weights)
    assert main(cmd) == 2
    assert "not better on the test split" in capsys.readouterr().err
    # Weights judged on another split: refused, unless forced.
    torch.save(dict(shipped, model=other, release={**record, "split_hash": "another"}), weights)
    before = sha256(weights)
    assert main(cmd) == 2
    assert "canonical split" in capsys.readouterr().err and sha256(weights) == before
    assert main([*cmd, "--force"]) == 0 and sha256(weights) != before


def test_the_packaged_weights_take_only_canonical_split_models_under_the_size_limit(
    tiny, tmp_path, monkeypatch, capsys
):
    run_dir, data_dir = tiny
    packaged = tmp_path / "package" / "utkface48-v1.pt"  # stands in for the file inside faceattr/weights
    monkeypatch.setattr(release, "packaged_file", lambda: packaged)
    cmd = ["export", str(run_dir), "--weights", str(packaged), "--data", str(data_dir)]
    assert main(cmd) == 2
    assert f"canonical split {CANONICAL_SPLIT}" in capsys.readouterr().err and not packaged.exists()
    monkeypatch.setattr(release, "CANONICAL_SPLIT", load_checkpoint(run_dir)["split_hash"])
    monkeypatch.setattr(release, "MAX_RELEASE_BYTES", 10_000)
    assert main(cmd) == 2
    assert "over the 10,000-byte limit" in capsys.readouterr().err and not packaged.parent.exists()


# The release record (written by `faceattr export --results`) of each packaged weight file.
RELEASE_RECORDS = {"utkface48-v1": "release.json", "utkface64rgb-v5": "release_v5.json"}


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_weights_are_the_ones_the_release_record_describes(name):
    record = Path(__file__).resolve().parents[1] / "results" / RELEASE_RECORDS[PRETRAINED[name]]
    summary = json.loads(record.read_text())
    path = pretrained_path(name)
    assert sha256(path) == summary["weights"]["sha256"] and path.stat().st_size == summary["weights"]["bytes"]
    assert path.stat().st_size <= MAX_RELEASE_BYTES
    assert load_checkpoint(path)["split_hash"] == CANONICAL_SPLIT
    assert load_checkpoint(path)["release"]["name"] == PRETRAINED[name]


def test_export_bad_inputs_are_one_line_errors(tiny, tmp_path, capsys):
    run_dir, _ = tiny
    assert main(["export", str(run_dir)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "faceattr export: error: nothing to export: pass --weights FILE and/or --onnx FILE"
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["export", str(junk), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "not a readable faceattr checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", str(run_dir), "--onnx", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("is a folder; name the .onnx file to write")
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    assert main(["export", str(run_dir), "--onnx", str(blocked / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "\n" not in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(InputError, match="bad.onnx: not a loadable ONNX model"):
        Predictor.from_onnx(bad)


def test_the_shipped_model_gives_the_answers_it_gave_before_the_lean_inference_path():
    """tests/data/shipped_outputs_before.npz: the shipped model's outputs on 128 sample faces,
    computed by the code before the refactor (tools/shipped_outputs_fixture.py). PyTorch must
    give them bit for bit; the packaged ONNX graph within the export tolerance, same classes."""
    from importlib import resources

    before = np.load(Path(__file__).parent / "data" / "shipped_outputs_before.npz")
    with resources.as_file(resources.files("faceattr.sample").joinpath("utkface48_sample.csv.gz")) as sample:
        data, _ = read_kaggle_csv(sample)
    assert data.ids[:128].tolist() == before["ids"].tolist()
    pixels = chips_to_pixels(data.images[:128])
    # The reference model (utkface48-v1), whatever ships as the default now.
    by_torch = Predictor.from_pretrained("reference48", backend="torch").runner.run(pixels)
    by_onnx = Predictor.from_pretrained("reference48").runner.run(pixels)
    assert set(by_torch) == set(by_onnx) == set(before.files) - {"ids"}
    for name, want in by_torch.items():
        assert np.array_equal(want, before[name]), name
        assert np.abs(by_onnx[name] - before[name]).max() <= PARITY_TOLERANCE, name
        if want.ndim == 2:
            assert np.array_equal(by_onnx[name].argmax(1), before[name].argmax(1)), name


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_the_packaged_onnx_graph_is_built_from_the_packaged_weights(name):
    onnx_file, weights = pretrained_path(name, suffix=".onnx"), pretrained_path(name)
    meta = OnnxModel(onnx_file).metadata
    assert meta["faceattr.weights_sha256"] == sha256(weights)
    assert json.loads(meta["faceattr.release"]) == load_checkpoint(weights)["release"]
    assert onnx_file.stat().st_size <= MAX_RELEASE_BYTES  # float16 weights inside, losslessly
