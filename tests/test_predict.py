"""Prediction on photos: robust loading of what users hand us (formats, EXIF, modes, bombs,
broken files), MTCNN detection and the similarity warp, the preprocessing identity with training,
the Predictor API and `faceattr predict`. A real face comes from scikit-image's astronaut photo;
the model is a tiny one trained here on 48x48 synthetic faces (its answers are not meaningful,
their shape and plumbing are)."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from faceattr import predictor as predictor_module
from faceattr.align import CHIP_SIZE, TEMPLATE, align_face, chip_scale, model_chip, similarity_transform
from faceattr.cache import Prepared, save_prepared
from faceattr.cli import main
from faceattr.config import resolve_config
from faceattr.dataset import FaceData
from faceattr.evaluation import apply_temperature
from faceattr.imageio import ImageLoadError, load_image, load_photo
from faceattr.inputerror import InputError
from faceattr.inputs import expand_inputs
from faceattr.onnxmodel import chips_to_pixels
from faceattr.predictor import MIN_DETAIL, Predictor, detail_factor
from faceattr.readers import decode_image
from faceattr.train import train

# Where MTCNN finds the astronaut's face in the 512x512 photo (x1, y1, x2, y2), within a few px.
ASTRONAUT_BOX = (179, 60, 268, 174)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny gender + ethnicity + two-stage age run on 48x48 gray faces (the real input size)."""
    rng = np.random.default_rng(0)
    n, side = 160, 48
    gender = rng.integers(0, 2, n)
    ethnicity = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    yy = np.mgrid[0:side, 0:side][0]
    stripes = 50 * np.sin(yy[None] * (0.3 + 0.2 * ethnicity[:, None, None]))
    images = np.clip(80 + 60 * gender[:, None, None] + stripes + rng.normal(0, 10, (n, side, side)), 0, 255)
    data = FaceData(
        images=images.astype(np.uint8),
        age=rng.integers(1, 80, n).astype(np.int16),
        gender=gender.astype(np.int8),
        ethnicity=ethnicity.astype(np.int8),
        ids=np.array([f"f{k}" for k in range(n)]),
        names=np.array([f"f{k}.jpg" for k in range(n)]),
        source="synthetic",
    )
    split = np.array(["train"] * 112 + ["val"] * 24 + ["test"] * 24)
    root = tmp_path_factory.mktemp("predict_run")
    manifest = {"input": {"path": "synthetic", "sha256": "0" * 64}}
    save_prepared(root, Prepared(data=data, split=split, group=np.arange(n), sha=data.ids, manifest=manifest))
    cfg = resolve_config(
        overrides={
            "name": "tiny",
            "tasks": ["gender", "ethnicity", "age"],
            "stem": "s2pool",
            "width": 8,
            "epochs": 1,
            "batch_size": 32,
            "device": "cpu",
            "warmup_epochs": 0.0,
            "threads": 1,
        }
    )
    train(cfg, root, root / "run", log=lambda *_: None)
    return root / "run"


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_checkpoint(run_dir)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header declares width x height pixels (a few dozen bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# --- geometry and preprocessing -------------------------------------------------------------


def test_similarity_transform_recovers_a_known_similarity_without_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ (scale * rot).T + shift)
    np.testing.assert_allclose(m, np.hstack([scale * rot, shift[:, None]]), atol=1e-9)
    mirrored = src * [-1, 1]  # the best fit to a mirror image must still be a rotation
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


def test_model_chip_is_the_training_recipe_of_decode_image():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    png = _encode(im, "PNG")
    assert np.array_equal(model_chip(im, 48, gray=True), decode_image(png, 48, gray=True))
    assert np.array_equal(model_chip(im, 32, gray=False), decode_image(png, 32, gray=False))


def test_align_face_is_the_identity_on_a_template_chip_and_averages_larger_faces():
    rng = np.random.default_rng(2)
    chip = rng.integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    same = np.asarray(align_face(Image.fromarray(chip), TEMPLATE))
    assert np.abs(same.astype(int) - chip).max() <= 1
    # The same chip at 3x, shifted inside a larger photo: box-averaged back to the chip.
    photo = np.zeros((700, 800, 3), np.uint8)
    photo[50:650, 120:720] = chip.repeat(3, 0).repeat(3, 1)
    back = np.asarray(align_face(Image.fromarray(photo), TEMPLATE * 3 + [120, 50]))
    assert np.abs(back.astype(int) - chip).max() <= 1


def test_chip_reaching_past_the_photo_is_mirrored_not_black():
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(100, 200, (200, 200, 3), dtype=np.uint8))
    shifted = TEMPLATE - [60, 0]  # the face sits 60 px further left: the chip's left 60 columns are outside
    assert np.asarray(align_face(photo, shifted)).min() >= 95  # bilinear rounding may lose a level
    black = np.asarray(align_face(photo, shifted, border="black"))
    assert black[:, :55].max() == 0 and black[:, 65:].min() >= 95


def test_tight_crop_is_detected_again_inside_a_margin(predictor, astronaut):
    """MTCNN misplaces the landmarks of a face that fills the frame (here by ~40 px); the
    detector's second pass inside a black margin puts them back near the template."""
    face = predictor.detector.detect(astronaut)[0]
    tight = align_face(astronaut, face.landmarks)
    (again,) = predictor.detector.detect(tight)
    assert np.abs(again.landmarks - TEMPLATE).max() < 12


def test_utkface_style_chip_goes_through_detect_align_to_its_kaggle_row(predictor, astronaut):
    """The photo path on a UTKFace chip lands on the chip's own 48x48 row: build the astronaut's
    chip the UTKFace way (aligned 200x200 JPEG), make its Kaggle row with the reader, then run
    detect -> align -> 48x48 on the JPEG and compare."""
    face = predictor.detector.detect(astronaut)[0]
    jpeg = _encode(align_face(astronaut, face.landmarks), "JPEG", quality=95)
    kaggle_row = decode_image(jpeg, 48, gray=True)
    (found,) = predictor.predict(jpeg)
    diff = np.abs(found.chip.astype(float) - kaggle_row).mean()
    assert diff < 4.0, f"re-aligned chip differs from its Kaggle row by {diff:.2f} gray levels"
    (ready,) = predictor.predict(jpeg, detect=False)
    assert np.array_equal(ready.chip, kaggle_row)


# --- loading what users have ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "HEIF"])
def test_common_formats_load_as_rgb(fmt, tmp_path):
    rng = np.random.default_rng(3)
    arr = np.kron(rng.integers(0, 256, (3, 4, 3)), np.ones((20, 20, 1))).astype(np.uint8)
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP", "HEIF") else {}))
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (80, 60)
    assert np.abs(np.asarray(im).astype(int) - arr).mean() < 6


def test_exif_orientation_turns_the_photo_upright(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[20:, :30] = (255, 0, 0)  # bottom-left quadrant red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    im = np.asarray(load_image(path))
    assert im.shape == (60, 40, 3)
    assert im[5, 5, 0] > 200 and im[5, 5, 1] < 60  # the red quadrant is now top-left


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 77, (77, 77, 77)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),  # 16-bit is scaled, not clipped
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # transparent -> white
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (50, 255), (50, 50, 50)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_every_colour_mode_becomes_8bit_rgb(mode, value, expected, tmp_path):
    im = Image.new(mode, (30, 20), value)
    fmt = {"CMYK": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert tuple(np.asarray(out)[10, 10]) == expected


def test_cmyk_jpeg_and_arrays_load():
    jpeg = _encode(Image.new("CMYK", (32, 32), (0, 0, 0, 0)), "JPEG")
    assert np.asarray(load_image(jpeg)).min() > 245
    assert np.asarray(load_image(np.full((4, 5), 65535, np.uint16))).min() == 255
    assert load_image(np.full((4, 5, 1), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(ImageLoadError, match="expected"):
        load_image(np.zeros((4, 5, 2), np.uint8))


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(100_000, 100_000))
    with pytest.raises(ImageLoadError, match="decompression bomb") as e:
        load_image(path)
    assert "bomb.png" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow only warns up to 2x its limit
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    with pytest.raises(ImageLoadError, match="1,200 pixels, over the limit of 1,000"):
        load_image(small)


def test_broken_inputs_get_a_one_line_reason(tmp_path, astronaut):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(_encode(astronaut, "JPEG")[:3000])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    for path, reason in [(truncated, "corrupt"), (text, "not an image"), (tmp_path / "gone.png", "no such file")]:
        with pytest.raises(ImageLoadError) as e:
            load_image(path)
        assert str(path) in str(e.value) and reason in str(e.value) and "\n" not in str(e.value)


# --- detection and the Predictor ------------------------------------------------------------


def test_astronaut_has_one_face_with_sane_landmarks_and_all_attributes(predictor, astronaut):
    (face,) = predictor.predict(astronaut)
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=8)
    assert face.score > 0.99
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    x1, y1, x2, y2 = face.box
    assert x1 < lx < nx < rx < x2 and y1 < ly < ny < mly < y2 and abs(ly - ry) < 10 and mlx < mrx
    assert set(face.gender) == {"male", "female"} and 0 <= face.gender["female"] <= 1
    assert sum(face.gender.values()) == pytest.approx(1, abs=1e-5)
    assert set(face.ethnicity) == {"White", "Black", "Asian", "Indian", "Others"}
    assert sum(face.ethnicity.values()) == pytest.approx(1, abs=1e-5)
    assert 0 < face.age < 120
    assert face.chip.shape == (48, 48) and face.chip.dtype == np.uint8
    assert json.loads(json.dumps(face.to_dict()))["gender"]["female"] == round(face.gender["female"], 4)


def test_every_face_of_a_group_photo_left_to_right(predictor, astronaut):
    head = astronaut.crop((130, 10, 320, 230))
    group = Image.new("RGB", (600, 260), (90, 90, 90))
    group.paste(head, (10, 20))
    group.paste(head.resize((150, 174)), (400, 40))
    faces = predictor.predict(group)
    assert len(faces) == 2
    assert faces[0].box[0] < 200 < 400 < faces[1].box[0]


def test_exif_rotated_photo_is_detected_upright(predictor, astronaut, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    astronaut.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    (face,) = predictor.predict(path)
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=10)


def test_large_photo_is_detected_downscaled_and_mapped_back(run_dir, astronaut):
    small_detector = Predictor.from_checkpoint(run_dir, max_side=512)
    big = astronaut.resize((1536, 1536), Image.BICUBIC)
    (face,) = small_detector.predict(big)
    np.testing.assert_allclose(face.box, np.array(ASTRONAUT_BOX) * 3, atol=24)
    (reference,) = small_detector.predict(astronaut)
    np.testing.assert_allclose(face.landmarks, reference.landmarks * 3, atol=12)
    assert np.abs(face.chip.astype(float) - reference.chip).mean() < 8  # same framing at any resolution


def test_no_face_is_zero_faces_not_an_error(predictor):
    yy, xx = np.mgrid[0:200, 0:300]
    assert predictor.predict(np.dstack([xx % 256, yy, 128 + 0 * xx]).astype(np.uint8)) == []
    assert predictor.predict(np.zeros((8, 8), np.uint8)) == []  # smaller than the smallest face


def test_batches_across_photos_give_the_same_answers(run_dir, predictor, astronaut):
    one_by_one = Predictor.from_checkpoint(run_dir, batch_size=1)
    chips = [np.full((48, 48), v, np.uint8) for v in (30, 120, 220)]
    together = predictor.predict_many(chips, detect=False)
    apart = [one_by_one.predict(c, detect=False) for c in chips]
    for a, b in zip(together, apart):
        assert a[0].gender["female"] == pytest.approx(b[0].gender["female"], abs=1e-5)
        assert a[0].age == pytest.approx(b[0].age, abs=1e-3)
    with pytest.raises(ImageLoadError):
        predictor.predict_many([chips[0], b"garbage"], detect=False)
    assert predictor.predict(astronaut)[0].gender == pytest.approx(predictor.predict_many([astronaut])[0][0].gender)


def test_calibration_file_rescales_probabilities(run_dir, tmp_path, predictor):
    import shutil

    calibrated_run = tmp_path / "run"
    shutil.copytree(run_dir, calibrated_run)
    (calibrated_run / "calibration.json").write_text(
        json.dumps({"temperature": {"gender": 2.0, "ethnicity": 0.5}, "fitted_on": "val"})
    )
    chip = np.full((48, 48), 140, np.uint8)
    raw = predictor.predict(chip, detect=False)[0]
    cal_predictor = Predictor.from_checkpoint(calibrated_run)
    cal = cal_predictor.predict(chip, detect=False)[0]
    assert cal_predictor.calibrated and not predictor.calibrated
    want = apply_temperature(np.array([list(raw.gender.values())]), 2.0)[0]
    np.testing.assert_allclose(list(cal.gender.values()), want, atol=1e-5)
    want = apply_temperature(np.array([list(raw.ethnicity.values())]), 0.5)[0]
    np.testing.assert_allclose(list(cal.ethnicity.values()), want, atol=1e-5)
    # Age ranges: prediction +- the half-width of the predicted bin, clipped to 1..116.
    assert raw.age_range is None
    half = [1.0, 2.0, 3.0, 4.0, 5.0, 60.0]
    (calibrated_run / "calibration.json").write_text(
        json.dumps({"temperature": {"gender": 2.0}, "age_interval": {"coverage": 0.8, "half_width": half}})
    )
    ranged = Predictor.from_checkpoint(calibrated_run)
    assert ranged.age_range_coverage == 0.8
    chips = np.stack([np.random.default_rng(k).integers(0, 256, (48, 48), dtype=np.uint8) for k in range(12)])
    bins = ranged.runner.run(chips_to_pixels(chips))["age_bin_prob"].argmax(1)  # the bin the model predicts
    for (face,), k in zip(ranged.predict_many(list(chips), detect=False), bins):
        low, high = face.age_range
        assert low == pytest.approx(max(1, face.age - half[k]), abs=1e-3)
        assert high == pytest.approx(min(116, face.age + half[k]), abs=1e-3)
    onnx_ranged = Predictor.from_checkpoint(calibrated_run, backend="onnx")
    assert onnx_ranged.age_range_coverage == 0.8
    assert onnx_ranged.predict(chips[0], detect=False)[0].age_range == pytest.approx(
        ranged.predict(chips[0], detect=False)[0].age_range, abs=1e-3
    )
    (calibrated_run / "calibration.json").write_text(
        json.dumps({"temperature": {"gender": 2.0}, "age_interval": {"coverage": 0.8, "half_width": "wide"}})
    )
    with pytest.raises(InputError, match="age_interval.half_width"):
        Predictor.from_checkpoint(calibrated_run)
    (calibrated_run / "calibration.json").write_text(
        json.dumps({"temperature": {"gender": 2.0}, "checkpoint": "best.pt"})
    )
    assert Predictor.from_checkpoint(calibrated_run / "best.pt").calibrated
    assert not Predictor.from_checkpoint(calibrated_run / "last.pt").calibrated  # fitted for best.pt only
    (calibrated_run / "calibration.json").write_text(json.dumps({"temperature": {"gender": -1}}))
    with pytest.raises(InputError, match="temperature.gender"):
        Predictor.from_checkpoint(calibrated_run)


def test_shipped_weights_predict_a_real_face_without_training(astronaut):
    from faceattr.pretrained import PRETRAINED
    from faceattr.release import MAX_RELEASE_BYTES, pretrained_path

    path = pretrained_path()
    assert path.stat().st_size <= MAX_RELEASE_BYTES
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float16}
    predictor = Predictor.from_pretrained()
    assert predictor.calibrated and predictor.source == f"pretrained:{PRETRAINED['default']}"
    assert predictor.release["test"]["n"] > 3000 and predictor.release["split_hash"]
    (face,) = predictor.predict(astronaut)
    # Eileen Collins, about 40 when photographed: what any sane face model should say.
    assert face.gender["female"] > 0.8 and max(face.ethnicity, key=face.ethnicity.get) == "White"
    assert 25 < face.age < 60
    with pytest.raises(InputError, match="known: default"):
        Predictor.from_pretrained("nope")


def test_packaged_models_are_chosen_by_name_and_a_path_of_that_name_wins(tmp_path, monkeypatch, tiny_run):
    from faceattr.predictor import load_predictor
    from faceattr.pretrained import PRETRAINED

    reference = load_predictor("reference48")
    assert reference.source == f"pretrained:{PRETRAINED['reference48']}" and reference.backend == "onnx"
    assert load_predictor("default").source == load_predictor(None).source == f"pretrained:{PRETRAINED['default']}"
    assert load_predictor("reference48", backend="torch").source == reference.source
    # A run folder that happens to be called reference48 is that run, not the packaged model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reference48").symlink_to(tiny_run, target_is_directory=True)
    assert load_predictor("reference48").source == "reference48"


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path, astronaut) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    astronaut.save(folder / "astronaut.jpg", quality=92)
    astronaut.convert("L").save(folder / "sub" / "gray.png")
    Image.new("RGB", (120, 90), (200, 180, 160)).save(folder / "wall.webp")
    (folder / "broken.jpg").write_bytes(_encode(astronaut, "JPEG")[:2000])
    (folder / "README.txt").write_text("not searched: no image suffix\n")
    return folder


def test_cli_json_reports_every_face_and_goes_on_after_failures(photo_folder, run_dir, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    rc = main(["predict", str(photo_folder), str(notes), "--model", str(run_dir), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    doc = json.loads(out)
    by_name = {Path(r["file"]).name: r for r in doc["results"]}
    assert set(by_name) == {"astronaut.jpg", "gray.png", "wall.webp", "broken.jpg", "notes.txt"}
    assert len(by_name["astronaut.jpg"]["faces"]) == 1 and len(by_name["gray.png"]["faces"]) == 1
    assert by_name["wall.webp"]["faces"] == [] and "error" not in by_name["wall.webp"]
    face = by_name["astronaut.jpg"]["faces"][0]
    assert set(face) == {"box", "score", "landmarks", "age", "age_range", "gender", "ethnicity"}
    assert len(face["landmarks"]) == 5 and "female" in face["gender"]
    assert doc["summary"] == {"files": 5, "faces": 2, "failed": 2, "skipped_not_images": 1}  # README.txt
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "5 files, 2 faces, 2 failed, 1 non-image files in folders skipped"
    assert any("broken.jpg" in line and "corrupt" in line for line in lines)
    assert any("notes.txt" in line and "not an image" in line for line in lines)


def test_cli_jsonl_streams_one_line_per_photo_then_a_summary(photo_folder, run_dir, capsys):
    rc = main(["predict", str(photo_folder), "--model", str(run_dir), "--jsonl"])
    out, err = capsys.readouterr()
    assert rc == 1  # broken.jpg
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["type"] for x in lines] == ["meta", "result", "result", "result", "result", "summary"]
    assert lines[0]["backend"] == "torch"
    results = {Path(x["file"]).name: x for x in lines[1:-1]}
    assert len(results["astronaut.jpg"]["faces"]) == 1 and "error" in results["broken.jpg"]
    assert lines[-1] == {"type": "summary", "files": 4, "faces": 2, "failed": 1, "skipped_not_images": 1}
    assert "broken.jpg" in err


def test_cli_table_csv_and_annotate(photo_folder, run_dir, tmp_path, capsys):
    photos = [str(photo_folder / "astronaut.jpg"), str(photo_folder / "*.webp")]
    annotated = tmp_path / "annotated"
    assert main(["predict", *photos, "--model", str(run_dir), "--annotate", str(annotated)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("file") and "astronaut.jpg" in table[1] and "no face" in table[2]
    assert table[-1] == "2 files, 1 faces, 0 failed"
    assert sorted(p.name for p in annotated.iterdir()) == ["astronaut.jpg", "wall.webp"]  # no temp files left

    def yellow(im: Image.Image) -> int:
        r, g, b = np.asarray(im.convert("RGB")).astype(int).transpose(2, 0, 1)
        return int(((r > 200) & (g > 180) & (b < 90)).sum())

    with Image.open(annotated / "astronaut.jpg") as im, Image.open(photo_folder / "astronaut.jpg") as original:
        assert im.size == (512, 512)
        assert yellow(im) > yellow(original) + 300  # the box outline (4 x ~100 px x 2 px)

    assert main(["predict", *photos, "--model", str(run_dir), "--csv", "--batch-size", "1"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["file"]).name for r in rows] == ["astronaut.jpg", "wall.webp"]
    assert rows[0]["face"] == "1" and 0 <= float(rows[0]["p_gender_female"]) <= 1 and rows[1]["face"] == ""
    assert err.strip() == "2 files, 1 faces, 0 failed"


def test_cli_no_detect_takes_chips_as_they_are(run_dir, tmp_path, capsys):
    chip = np.random.default_rng(4).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(chip).save(tmp_path / "chip.png")
    assert main(["predict", str(tmp_path / "chip.png"), "--model", str(run_dir), "--json", "--no-detect"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["results"][0]["faces"]
    assert face["box"] == [0, 0, 48, 48] and face["score"] is None and face["landmarks"] is None


def test_cli_without_inputs_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 1  # the shipped model, but nothing to read
    assert "folder holds no image files" in capsys.readouterr().err
    files, missing, skipped = expand_inputs([str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "nope.png")])
    assert (
        files == []
        and skipped == 0
        and [reason for _, reason in missing]
        == [
            "folder holds no image files (.jpg, .jpeg, .png, .webp, .heic, .heif, .bmp, .tif, .tiff, .gif)",
            "no file matches this pattern",
            "no such file or folder",
        ]
    )


def test_a_small_face_in_a_large_jpeg_is_cut_from_the_coarsest_decode_that_keeps_its_detail():
    """Detection reads a JPEG decoded at 1/4; a face that decode renders too coarsely for the
    model's chip is cut from a finer one, the photo whole only when 1/2 is not enough either."""
    at_limit = MIN_DETAIL  # chip pixels per pixel of the detection decode that is just enough
    assert detail_factor(4.0, [0.8 * at_limit]) == 4.0  # enough detail already: no second decode
    assert detail_factor(4.0, []) == 4.0  # no face
    assert detail_factor(4.0, [0.8 * at_limit, 1.1 * at_limit]) == 2.0  # the finest face decides
    assert detail_factor(8.0, [1.5 * at_limit]) == 4.0
    assert detail_factor(4.0, [2.5 * at_limit]) == 1.0  # 1/2 would still be too coarse
    assert detail_factor(1.0, [3.0 * at_limit]) == 1.0  # already whole


@pytest.mark.parametrize(
    "side, factor, size",
    [
        ((1600, 1200), 2, (800, 600)),
        ((1600, 1200), 4, (400, 300)),
        ((1600, 1200), 8, (200, 150)),
        ((1600, 1200), 1, (1600, 1200)),
        ((1601, 1201), 4, (401, 301)),  # uneven sides: still 1/4 (the DCT rounds the size up)
        ((1601, 1201), 2, (801, 601)),
    ],
)
def test_load_photo_decodes_a_jpeg_at_the_reduction_asked_for(side, factor, size):
    w, h = side
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
    image, scale = load_photo(buffer.getvalue(), factor=factor)
    assert image.size == size and scale == (float(factor), float(factor))
    png = io.BytesIO()
    Image.new("RGB", side).save(png, "PNG")  # only JPEG decodes at reduced size
    assert load_photo(png.getvalue(), factor=factor)[0].size == side


def test_predict_cuts_a_face_the_detection_decode_renders_too_coarsely_from_the_half_size_decode(monkeypatch):
    """A 3200x2400 JPEG is decoded at 1/4 for detection; its face there gives the default model's
    chip too few pixels but 1/2 gives enough, so the face is cut from the 1/2 decode (not from
    the photo decoded whole), and its chip matches the one cut from the whole photo."""
    canvas = Image.new("RGB", (3200, 2400), (96, 110, 128))
    canvas.paste(Image.fromarray(skdata.astronaut()).resize((1600, 1600)), (800, 400))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    photo = buffer.getvalue()
    predictor = Predictor.from_pretrained()
    image, scale = load_photo(photo, min_side=predictor.detector_options["max_side"])
    (face,) = predictor.detector.detect(image)
    assert scale == (4.0, 4.0) and MIN_DETAIL < chip_scale(face.landmarks, predictor.size) <= 2 * MIN_DETAIL
    factors = []
    real_load = predictor_module.load_photo

    def spy(*args, **kwargs):
        factors.append(kwargs.get("factor"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "load_photo", spy)
    (chip,) = predictor.prepare(photo).chips
    assert factors == [None, 2]  # the detection decode, then the 1/2 one
    whole = predictor.chip(align_face(load_image(photo), face.landmarks * 4.0))
    assert np.abs(chip.astype(float) - whole.astype(float)).mean() < 2.0
