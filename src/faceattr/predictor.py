"""The photo predictor: faces found and aligned in any photo (or images taken as ready chips), run
through a trained faceattr checkpoint in batches across faces and photos, with calibrated
probabilities when the run folder has a calibration.json. ``predict_files`` is what
``faceattr predict`` calls: the same predictor plus input expansion, output formats and
annotated copies."""

from __future__ import annotations

import csv
import glob
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from faceattr.align import FaceDetector, align_face, model_chip
from faceattr.atomic import atomic_path
from faceattr.imageio import PHOTO_SUFFIXES, ImageLoadError, ImageSource, load_image
from faceattr.inputerror import InputError
from faceattr.metrics import CLASS_NAMES
from faceattr.tasks import AgeSpec
from faceattr.train import load_checkpoint, model_from_checkpoint, predict_outputs, select_device

CALIBRATION_FILE = "calibration.json"
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One face and what the model says about it.

    box: x1, y1, x2, y2 in the photo's pixels (the whole image with detection off); score: the
    detector's probability (None without detection); landmarks: (5, 2) x, y (None without
    detection); age: years (None if the model has no age head); gender / ethnicity: class name ->
    probability (None if the model lacks the head); chip: the model's input, uint8 (S, S) gray
    or (S, S, 3) RGB, S = 48 for the published models.
    """

    box: tuple[float, float, float, float]
    score: float | None
    landmarks: np.ndarray | None
    age: float | None
    gender: dict[str, float] | None
    ethnicity: dict[str, float] | None
    chip: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready values (no chip), rounded to what is meaningful."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": None if self.score is None else round(self.score, 4),
            "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist(),
            "age": None if self.age is None else round(self.age, 1),
            "gender": _rounded(self.gender),
            "ethnicity": _rounded(self.ethnicity),
        }


def _rounded(probs: dict[str, float] | None) -> dict[str, float] | None:
    return None if probs is None else {k: round(v, 4) for k, v in probs.items()}


@dataclass
class FileResult:
    """The faces of one input, or the one-line reason it could not be read."""

    source: str
    faces: list[Face]
    error: str | None = None


@dataclass
class _Pending:
    source: str
    boxes: list[tuple]  # (box, score, landmarks) per face
    chips: list[np.ndarray]
    error: str | None = None


class Predictor:
    """A trained model plus the detector and the preprocessing its checkpoint records.

    >>> predictor = Predictor.from_checkpoint("runs/age/age-two_stage")  # doctest: +SKIP
    >>> [(f.age, f.gender["female"]) for f in predictor.predict("photo.jpg")]  # doctest: +SKIP
    """

    def __init__(
        self,
        ckpt: dict,
        device: str = "cpu",
        temperature: dict[str, float] | None = None,
        min_score: float = 0.9,
        max_side: int = 1600,
        min_face_size: int = 20,
        batch_size: int = 64,
        source: str = "",
    ):
        pre = ckpt["preprocessing"]
        if pre.get("resize") != "area" or pre.get("color") not in ("gray", "rgb"):
            raise InputError(f"{source or 'checkpoint'}: unknown preprocessing {pre} (expected area resize, gray/rgb)")
        self.device = select_device(device)
        self.model = model_from_checkpoint(ckpt, self.device)
        self.size = int(pre["size"])
        self.gray = pre["color"] == "gray"
        self.mean, self.std = float(pre["mean"]), float(pre["std"])
        self.age_spec = AgeSpec(**ckpt["age"]) if ckpt.get("age") else None
        self.temperature = dict(temperature or {})
        self.detector_options = {"min_score": min_score, "max_side": max_side, "min_face_size": min_face_size}
        self.batch_size = batch_size
        self.source = source
        self._detector: FaceDetector | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **options) -> Predictor:
        """A predictor from a run folder (its best.pt) or a checkpoint file. The run folder's
        calibration.json, when there is one, rescales the class probabilities."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        run_dir, name = (path, "best.pt") if path.is_dir() else (path.parent, path.name)
        return cls(ckpt, device=device, temperature=load_temperature(run_dir, name), source=str(path), **options)

    @classmethod
    def from_pretrained(cls, name: str = "default", **options) -> Predictor:
        """Published weights; none ship yet, so this says what to do instead."""
        raise InputError(
            f"no pretrained faceattr weights ship yet (asked for {name!r}); train a model "
            "(`faceattr run` or `faceattr train`) and pass its run folder: --model RUN or "
            "Predictor.from_checkpoint(RUN)"
        )

    @property
    def calibrated(self) -> bool:
        return bool(self.temperature)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:  # built on first use, so --no-detect never loads MTCNN
            self._detector = FaceDetector(device=str(self.device), **self.detector_options)
        return self._detector

    def predict(self, source: ImageSource, detect: bool = True) -> list[Face]:
        """Every face in one photo (a path, bytes, PIL image or RGB array), left to right; with
        ``detect=False`` the whole image is one ready chip. Raises ImageLoadError for a bad file."""
        return self.predict_many([source], detect)[0]

    def predict_many(self, sources: Iterable[ImageSource], detect: bool = True) -> list[list[Face]]:
        """The faces of each photo, batched through the model across photos; the first bad
        input raises ImageLoadError."""
        out = []
        for result in self.iter_predict(sources, detect):
            if result.error is not None:
                raise ImageLoadError(result.error)
            out.append(result.faces)
        return out

    def iter_predict(self, sources: Iterable[ImageSource], detect: bool = True) -> Iterator[FileResult]:
        """One FileResult per input, in order; an unreadable input yields its reason instead of
        raising, so a run over many files goes on. The model runs once per batch_size faces."""
        pending: list[_Pending] = []
        n_chips = 0
        for source in sources:
            item = self._prepare(source, detect)
            pending.append(item)
            n_chips += len(item.chips)
            if n_chips >= self.batch_size or len(pending) >= self.batch_size:
                yield from self._finish(pending)
                pending, n_chips = [], 0
        yield from self._finish(pending)

    def _prepare(self, source: ImageSource, detect: bool) -> _Pending:
        label = str(source) if isinstance(source, str | Path) else f"<{type(source).__name__}>"
        try:
            image = load_image(source)
        except ImageLoadError as e:
            return _Pending(label, [], [], error=str(e))
        if not detect:
            w, h = image.size
            return _Pending(label, [((0.0, 0.0, float(w), float(h)), None, None)], [self.chip(image)])
        faces = self.detector.detect(image)
        boxes = [(tuple(float(v) for v in d.box), d.score, d.landmarks) for d in faces]
        return _Pending(label, boxes, [self.chip(align_face(image, d.landmarks)) for d in faces])

    def chip(self, image: Image.Image) -> np.ndarray:
        """The model input from an aligned (or ready) chip: the training recipe at this model's size."""
        return model_chip(image, self.size, self.gray)

    def _finish(self, pending: list[_Pending]) -> Iterator[FileResult]:
        chips = [c for p in pending for c in p.chips]
        attrs = self.attributes(np.stack(chips)) if chips else []
        k = 0
        for p in pending:
            faces = []
            for (box, score, landmarks), chip in zip(p.boxes, p.chips):
                faces.append(Face(box, score, landmarks, chip=chip, **attrs[k]))
                k += 1
            yield FileResult(p.source, faces, p.error)

    def attributes(self, chips: np.ndarray) -> list[dict]:
        """age / gender / ethnicity of each model-ready chip, uint8 (N, S, S[, 3])."""
        pred = predict_outputs(self.model, chips, self.mean, self.std, self.device, self.age_spec, self.batch_size)
        for task, t in self.temperature.items():
            if task in pred:
                pred[task] = apply_temperature(pred[task], t)
        out = []
        for i in range(len(chips)):
            out.append(
                {
                    "age": float(pred["age"][i]) if "age" in pred else None,
                    "gender": _named(pred, "gender", i),
                    "ethnicity": _named(pred, "ethnicity", i),
                }
            )
        return out


def _named(pred: dict[str, np.ndarray], task: str, i: int) -> dict[str, float] | None:
    if task not in pred:
        return None
    return {name: float(p) for name, p in zip(CLASS_NAMES[task], pred[task][i])}


def load_temperature(run_dir: Path, checkpoint: str = "best.pt") -> dict[str, float]:
    """Temperatures from RUN/calibration.json ({"temperature": {"gender": T, "ethnicity": T}}),
    or {} when the run has none or they were fitted for another of its checkpoints (a
    "checkpoint" entry naming, say, best.pt does not apply to last.pt)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    expected = 'expected {"temperature": {"gender": T, "ethnicity": T}} with T > 0'
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); {expected}") from None
    if isinstance(data, dict) and data.get("checkpoint", checkpoint) != checkpoint:
        return {}
    temps = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(temps, dict):
        raise InputError(f"{path}: no temperature table; {expected}")
    out = {}
    for task, t in temps.items():
        if task not in CLASS_NAMES:
            continue
        if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t > 0):
            raise InputError(f"{path}: temperature.{task} = {t!r}; {expected}")
        out[task] = float(t)
    return out


def apply_temperature(prob: np.ndarray, t: float) -> np.ndarray:
    """softmax(log(p) / T) row-wise, i.e. the logits divided by T. prob: (N, K).

    >>> np.round(apply_temperature(np.array([[0.8, 0.2]]), 2.0), 4).tolist()
    [[0.6667, 0.3333]]
    """
    logits = np.log(np.clip(prob, 1e-12, 1.0)) / t
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def expand_inputs(patterns: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to read from paths, folders (their images, recursively, in name order) and globs,
    without repeats; plus (input, reason) for each input that names nothing."""
    files: dict[Path, None] = {}
    missing: list[tuple[str, str]] = []

    def add_folder(folder: Path) -> int:
        found = sorted(f for f in folder.rglob("*") if f.is_file() and f.name.lower().endswith(PHOTO_SUFFIXES))
        files.update(dict.fromkeys(found))
        return len(found)

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            if not add_folder(path):
                missing.append((pattern, f"folder holds no image files ({', '.join(PHOTO_SUFFIXES)})"))
        elif path.exists():
            files[path] = None
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            for m in matches:
                if Path(m).is_dir():
                    add_folder(Path(m))
                else:
                    files[Path(m)] = None
            if not matches:
                missing.append((pattern, "no file matches this pattern"))
        else:
            missing.append((pattern, "no such file or folder"))
    return list(files), missing


def predict_files(
    inputs: list[str],
    model: str | Path | None,
    fmt: str = "table",
    annotate: Path | None = None,
    detect: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    min_score: float = 0.9,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`faceattr predict`: every face of every input as a table, JSON or CSV on ``out``; a
    one-line reason on ``err`` for each input that fails, the others still processed; with
    ``annotate``, a copy of each photo with boxes and labels. Returns 1 if any input failed, else 0.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in ("table", "json", "csv"):
        raise InputError(f"output format {fmt!r}: expected table, json or csv")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive number")
    if model is None:
        predictor = Predictor.from_pretrained()
    else:
        predictor = Predictor.from_checkpoint(model, device=device, min_score=min_score, batch_size=batch_size)
    files, missing = expand_inputs(inputs)
    if annotate is not None:
        if annotate.exists() and not annotate.is_dir():
            raise InputError(f"--annotate {annotate}: exists and is not a folder")
        annotate.mkdir(parents=True, exist_ok=True)
    writer = _Writer(fmt, out, predictor, width=max([len(str(f)) for f in files] + [len(m) for m, _ in missing] + [4]))
    n_faces = n_failed = 0
    for name, reason in missing:
        print(f"faceattr predict: {name}: {reason}", file=err)
        writer.add(FileResult(name, [], f"{name}: {reason}"))
        n_failed += 1
    used_names: set[str] = set()
    inputs_resolved = {f.resolve() for f in files}
    for result in predictor.iter_predict([str(f) for f in files], detect):
        if result.error:
            print(f"faceattr predict: {result.error}", file=err)
            n_failed += 1
        else:
            n_faces += len(result.faces)
            if annotate is not None:
                target = _annotated_name(Path(result.source), annotate, used_names, inputs_resolved)
                try:
                    write_annotated(load_image(result.source), result.faces, target)
                except (ImageLoadError, OSError) as e:
                    print(f"faceattr predict: {target}: cannot write the annotated copy ({e})", file=err)
                    n_failed += 1
        writer.add(result)
    n_files = len(files) + len(missing)
    summary = {"files": n_files, "faces": n_faces, "failed": n_failed}
    writer.close(summary)
    print(f"{n_files} files, {n_faces} faces, {n_failed} failed", file=out if fmt == "table" else err)
    return 1 if n_failed else 0


class _Writer:
    """Streams results as a table or CSV rows; JSON is one document written at the end."""

    def __init__(self, fmt: str, out: TextIO, predictor: Predictor, width: int):
        self.fmt, self.out, self.width = fmt, out, min(width, 60)
        self.results: list[dict] = []
        self.meta = {"model": predictor.source, "calibrated": predictor.calibrated}
        self.classes = {t: CLASS_NAMES[t] for t in ("gender", "ethnicity")}
        if fmt == "csv":
            self.csv = csv.writer(out)
            lm = [f"{n}_{c}" for n in LANDMARK_NAMES for c in "xy"]
            probs = [f"p_{t}_{c}" for t, names in self.classes.items() for c in names]
            self.csv.writerow(["file", "face", "x1", "y1", "x2", "y2", "score", *lm, "age", *probs, "error"])
        elif fmt == "table":
            print(
                f"{'file':<{self.width}}  face  {'box (x1,y1,x2,y2)':<24} score    age  {'gender':<13}  ethnicity",
                file=out,
            )

    def add(self, r: FileResult) -> None:
        if self.fmt == "json":
            item = {"file": r.source, "faces": [f.to_dict() for f in r.faces]}
            self.results.append({**item, "error": r.error} if r.error else item)
        elif self.fmt == "csv":
            self._csv_rows(r)
        else:
            self._table_rows(r)
        self.out.flush()

    def _csv_rows(self, r: FileResult) -> None:
        blank_probs = [""] * sum(len(v) for v in self.classes.values())
        if r.error or not r.faces:
            self.csv.writerow([r.source, "", "", "", "", "", "", *[""] * 10, "", *blank_probs, r.error or ""])
            return
        for k, f in enumerate(r.faces, 1):
            d = f.to_dict()
            lm = [v for pt in d["landmarks"] for v in pt] if d["landmarks"] else [""] * 10
            probs = []
            for task, names in self.classes.items():
                probs += [d[task][c] if d[task] else "" for c in names]
            score = "" if d["score"] is None else d["score"]
            age = "" if d["age"] is None else d["age"]
            self.csv.writerow([r.source, k, *d["box"], score, *lm, age, *probs, ""])

    def _table_rows(self, r: FileResult) -> None:
        name = r.source if len(r.source) <= self.width else "…" + r.source[-self.width + 1 :]
        if r.error:
            print(f"{name:<{self.width}}     -  failed (see the message above)", file=self.out)
            return
        if not r.faces:
            print(f"{name:<{self.width}}     -  no face", file=self.out)
            return
        for k, f in enumerate(r.faces, 1):
            box = "(" + ",".join(f"{v:.0f}" for v in f.box) + ")"
            score = "    -" if f.score is None else f"{f.score:5.2f}"
            age = "    -" if f.age is None else f"{f.age:5.1f}"
            print(
                f"{name:<{self.width}}  {k:>4}  {box:<24} {score}  {age}  {_top(f.gender):<13}  {_top(f.ethnicity)}",
                file=self.out,
            )

    def close(self, summary: dict) -> None:
        if self.fmt == "json":
            json.dump({**self.meta, "results": self.results, "summary": summary}, self.out, indent=2)
            self.out.write("\n")


def _top(probs: dict[str, float] | None) -> str:
    if not probs:
        return "-"
    name = max(probs, key=probs.get)
    return f"{name} {probs[name]:.2f}"


ANNOTATE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def _annotated_name(source: Path, folder: Path, used: set[str], inputs: set[Path]) -> Path:
    """folder/<name of the photo>, in a format Pillow writes (PNG otherwise); never one of the
    inputs, never a name already written in this run."""
    suffix = source.suffix.lower() if source.suffix.lower() in ANNOTATE_FORMATS else ".png"
    stem = source.name[: -len(source.suffix)] if source.suffix else source.name
    k = 1
    while True:
        name = f"{stem}{suffix}" if k == 1 else f"{stem}-{k}{suffix}"
        target = folder / name
        if name not in used and target.resolve() not in inputs:
            used.add(name)
            return target
        k += 1


def label_text(face: Face) -> str:
    """The short label drawn on a photo: gender, age, most likely ethnicity."""
    parts = []
    if face.gender:
        g = max(face.gender, key=face.gender.get)
        parts.append(f"{g} {face.gender[g]:.2f}")
    if face.age is not None:
        parts.append(f"{face.age:.0f} y")
    if face.ethnicity:
        parts.append(_top(face.ethnicity))
    return " | ".join(parts)


def draw_faces(image: Image.Image, faces: list[Face]) -> Image.Image:
    """A copy of the RGB photo with each face's box, landmarks and label drawn on it."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    line = max(2, round(side / 300))
    font = ImageFont.load_default(size=max(11, round(side / 40)))
    for f in faces:
        x1, y1, x2, y2 = f.box
        draw.rectangle([x1, y1, x2, y2], outline=(255, 220, 0), width=line)
        if f.landmarks is not None:
            r = line
            for x, y in f.landmarks:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 255))
        text = label_text(f)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1 + line  # above the box, inside if no room
        tx = min(max(0, x1), max(0, image.size[0] - tw - 2 * line))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=(0, 0, 0))
        draw.text((tx + line - left, ty + line - top), text, fill=(255, 255, 255), font=font)
    return image


def write_annotated(image: Image.Image, faces: list[Face], path: Path) -> Path:
    """Draw the faces on the photo and write it atomically, format chosen by the suffix."""
    fmt = ANNOTATE_FORMATS.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        draw_faces(image, faces).save(tmp, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    return path
