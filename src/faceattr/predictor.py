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
from faceattr.inference import InferenceModel, OnnxModel, chips_to_pixels, inference_model, onnx_bytes
from faceattr.inputerror import InputError
from faceattr.metrics import CLASS_NAMES
from faceattr.train import load_checkpoint, select_device

CALIBRATION_FILE = "calibration.json"
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One face and what the model says about it.

    box: x1, y1, x2, y2 in the photo's pixels (the whole image with detection off); score: the
    detector's probability (None without detection); landmarks: (5, 2) x, y (None without
    detection); age: years (None if the model has no age head); age_range: (low, high) years,
    fitted on validation faces to hold the true age with the predictor's ``age_range_coverage``
    (None if the model has no fitted ranges); gender / ethnicity: class name -> probability
    (None if the model lacks the head); chip: the model's input, uint8 (S, S) gray or (S, S, 3)
    RGB, S = 48 for the published models.
    """

    box: tuple[float, float, float, float]
    score: float | None
    landmarks: np.ndarray | None
    age: float | None
    gender: dict[str, float] | None
    ethnicity: dict[str, float] | None
    chip: np.ndarray = field(repr=False)
    age_range: tuple[float, float] | None = None  # low, high years

    def to_dict(self) -> dict:
        """JSON-ready values (no chip), rounded to what is meaningful."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": None if self.score is None else round(self.score, 4),
            "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist(),
            "age": None if self.age is None else round(self.age, 1),
            "age_range": None if self.age_range is None else [round(v, 1) for v in self.age_range],
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
    error_kind: str | None = None  # ImageLoadError.kind of the error


@dataclass
class _Pending:
    source: str
    boxes: list[tuple]  # (box, score, landmarks) per face
    chips: list[np.ndarray]
    error: str | None = None
    error_kind: str | None = None


class Predictor:
    """A trained model plus the detector and the preprocessing its checkpoint records.

    backend: ``torch`` (default) or ``onnx`` (the same model exported in memory and run on ONNX
    Runtime); ``from_onnx`` runs an exported .onnx file.

    >>> predictor = Predictor.from_pretrained()  # doctest: +SKIP
    >>> [(f.age, f.gender["female"]) for f in predictor.predict("photo.jpg")]  # doctest: +SKIP
    """

    def __init__(
        self,
        runner: InferenceModel | OnnxModel,
        size: int,
        gray: bool,
        calibrated: bool,
        source: str = "",
        release: dict | None = None,
        device: str = "cpu",
        min_score: float = 0.9,
        max_side: int = 1600,
        min_face_size: int = 20,
        batch_size: int = 64,
    ):
        self.runner = runner
        self.size, self.gray = int(size), bool(gray)
        self.calibrated = calibrated
        self.age_range_coverage: float | None = None  # set by the constructors when ranges are fitted
        self.source = source
        self.release = release or {}
        self.device = select_device(device)
        self.detector_options = {"min_score": min_score, "max_side": max_side, "min_face_size": min_face_size}
        self.batch_size = batch_size
        self._detector: FaceDetector | None = None

    @property
    def backend(self) -> str:
        return "onnx" if isinstance(self.runner, OnnxModel) else "torch"

    @property
    def torch_model(self) -> InferenceModel | None:
        """The PyTorch model (for Grad-CAM); None on the ONNX backend."""
        return self.runner if isinstance(self.runner, InferenceModel) else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", backend: str = "torch", **options) -> Predictor:
        """A predictor from a run folder (its best.pt), a checkpoint or release file, or an
        exported .onnx file. A run folder's calibration.json, or the calibration a release file
        carries, rescales the class probabilities."""
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device, **options)
        ckpt = load_checkpoint(path)
        run_dir, name = (path, "best.pt") if path.is_dir() else (path.parent, path.name)
        return cls._from_loaded(ckpt, calibration_of(ckpt, run_dir, name), str(path), device, backend, **options)

    @classmethod
    def from_pretrained(
        cls, name: str = "default", device: str = "cpu", backend: str = "torch", **options
    ) -> Predictor:
        """The weights that ship inside the package (see MODEL_CARD.md); no training needed."""
        from faceattr.release import pretrained_path

        path = pretrained_path(name)
        ckpt = load_checkpoint(path)
        label = f"pretrained:{(ckpt.get('release') or {}).get('name', name)}"
        return cls._from_loaded(ckpt, ckpt.get("calibration") or {}, label, device, backend, **options)

    @classmethod
    def from_onnx(cls, path: str | Path, device: str = "cpu", **options) -> Predictor:
        """A predictor over an exported faceattr .onnx file (its input shape gives the chip)."""
        runner = OnnxModel(path, device=device)
        shape = runner.input_shape
        if len(shape) != 4 or shape[1] not in (1, 3) or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise InputError(f"{path}: input shape {shape}; expected (batch, 1 or 3, S, S)")
        _, channels, size, _ = shape
        meta = runner.session.get_modelmeta().custom_metadata_map
        calibrated = meta.get("faceattr.calibrated") == "true"
        predictor = cls(runner, size, channels == 1, calibrated, str(path), device=device, **options)
        if "age_low" in runner.output_names and "faceattr.age_range_coverage" in meta:
            predictor.age_range_coverage = float(meta["faceattr.age_range_coverage"])
        return predictor

    @classmethod
    def _from_loaded(
        cls, ckpt: dict, calibration: dict, source: str, device: str, backend: str, **options
    ) -> Predictor:
        pre = ckpt["preprocessing"]
        if pre.get("resize") != "area" or pre.get("color") not in ("gray", "rgb"):
            raise InputError(f"{source or 'checkpoint'}: unknown preprocessing {pre} (expected area resize, gray/rgb)")
        if backend not in ("torch", "onnx"):
            raise InputError(f"backend {backend!r}: expected torch or onnx")
        gray, size = pre["color"] == "gray", int(pre["size"])
        temperature = calibration.get("temperature") or {}
        model = inference_model(ckpt, temperature, select_device(device), half_widths(calibration, ckpt))
        runner: InferenceModel | OnnxModel = model
        if backend == "onnx":
            runner = OnnxModel(onnx_bytes(model, 1 if gray else 3, size), device=device)
        predictor = cls(runner, size, gray, bool(temperature), source, ckpt.get("release"), device=device, **options)
        if "age_low" in model.output_names:
            predictor.age_range_coverage = float(calibration["age_interval"]["coverage"])
        return predictor

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
                raise ImageLoadError(result.error, result.error_kind)
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
            return _Pending(label, [], [], error=str(e), error_kind=e.kind)
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
            yield FileResult(p.source, faces, p.error, p.error_kind)

    def attributes(self, chips: np.ndarray) -> list[dict]:
        """age / gender / ethnicity of each model-ready chip, uint8 (N, S, S[, 3])."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(chips), self.batch_size):
            for name, value in self.runner.run(chips_to_pixels(chips[start : start + self.batch_size])).items():
                parts.setdefault(name, []).append(value)
        pred = {name: np.concatenate(v) for name, v in parts.items()}
        return [
            {
                "age": float(pred["age"][i]) if "age" in pred else None,
                "age_range": (float(pred["age_low"][i]), float(pred["age_high"][i])) if "age_low" in pred else None,
                "gender": _named(pred, "gender", i),
                "ethnicity": _named(pred, "ethnicity", i),
            }
            for i in range(len(chips))
        ]


def _named(pred: dict[str, np.ndarray], task: str, i: int) -> dict[str, float] | None:
    if f"{task}_prob" not in pred:
        return None
    return {name: float(p) for name, p in zip(CLASS_NAMES[task], pred[f"{task}_prob"][i])}


def load_calibration(run_dir: Path, checkpoint: str = "best.pt") -> dict:
    """What ``faceattr evaluate`` fitted on validation, from RUN/calibration.json:
    ``{"temperature": {"gender": T, "ethnicity": T}}`` plus, when present, ``"age_interval"``
    (``half_width`` per predicted age bin). {} when the run has none or it was fitted for another
    of its checkpoints (a "checkpoint" entry naming, say, best.pt does not apply to last.pt)."""
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
    out: dict = {"temperature": {}}
    for task, t in temps.items():
        if task not in CLASS_NAMES:
            continue
        if not _positive(t):
            raise InputError(f"{path}: temperature.{task} = {t!r}; {expected}")
        out["temperature"][task] = float(t)
    interval = data.get("age_interval")
    if interval is not None:
        half = interval.get("half_width") if isinstance(interval, dict) else None
        cover = interval.get("coverage") if isinstance(interval, dict) else None
        if not (isinstance(cover, float) and 0 < cover < 1):
            raise InputError(f"{path}: age_interval.coverage = {cover!r}; expected a share between 0 and 1")
        if not isinstance(half, list) or not half or not all(_positive(h) or _is_zero(h) for h in half):
            raise InputError(f"{path}: age_interval.half_width = {half!r}; expected a list of years >= 0, one per bin")
        out["age_interval"] = interval
    return out


def _is_zero(x) -> bool:
    return not isinstance(x, bool) and x == 0


def _positive(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x) and x > 0


def calibration_of(ckpt: dict, run_dir: Path, checkpoint: str) -> dict:
    """A release file carries its calibration; a run keeps it beside the checkpoint."""
    return ckpt.get("calibration") or load_calibration(run_dir, checkpoint)


def half_widths(calibration: dict, ckpt: dict) -> list[float] | None:
    """The age-range half-widths of a calibration, if they fit this model's age bins."""
    half = (calibration.get("age_interval") or {}).get("half_width")
    n_bins = len((ckpt.get("age") or {}).get("edges", [])) - 1
    return half if half is not None and len(half) == n_bins else None


def load_predictor(model: str | Path | None, backend: str = "torch", device: str = "cpu", **options) -> Predictor:
    """What ``--model`` and ``--backend`` name: the shipped weights (no model), a run folder or
    checkpoint on either backend, or an exported .onnx file (ONNX Runtime only)."""
    if model is None:
        return Predictor.from_pretrained(device=device, backend=backend, **options)
    if Path(model).suffix.lower() == ".onnx":
        if backend != "onnx":
            raise InputError(f"--model {model}: an ONNX file runs with --backend onnx")
        return Predictor.from_onnx(model, device=device, **options)
    return Predictor.from_checkpoint(model, device=device, backend=backend, **options)


def expand_inputs(patterns: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]], int]:
    """Files to read from paths, folders (their images, recursively, in name order) and globs,
    without repeats; (input, reason) for each input that names nothing; and how many files in
    the folders were passed over for not having an image suffix (a file named directly is
    always read, and fails with a reason if it is no image)."""
    files: dict[Path, None] = {}
    missing: list[tuple[str, str]] = []
    passed_over: set[Path] = set()

    def add_folder(folder: Path) -> int:
        found = []
        for f in folder.rglob("*"):
            if f.is_file():
                if f.name.lower().endswith(PHOTO_SUFFIXES):
                    found.append(f)
                else:
                    passed_over.add(f)
        files.update(dict.fromkeys(sorted(found)))
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
    return list(files), missing, len(passed_over - set(files))


def predict_files(
    inputs: list[str],
    model: str | Path | None,
    fmt: str = "table",
    annotate: Path | None = None,
    detect: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    min_score: float = 0.9,
    backend: str = "torch",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`faceattr predict`: every face of every input as a table, JSON or CSV on ``out``; a
    one-line reason on ``err`` for each input that fails, the others still processed; with
    ``annotate``, a copy of each photo with boxes and labels. Returns 1 if any input failed, else 0.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in ("table", "json", "jsonl", "csv"):
        raise InputError(f"output format {fmt!r}: expected table, json, jsonl or csv")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive number")
    predictor = load_predictor(model, backend, device, min_score=min_score, batch_size=batch_size)
    files, missing, passed_over = expand_inputs(inputs)
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
    summary = {"files": n_files, "faces": n_faces, "failed": n_failed, "skipped_not_images": passed_over}
    writer.close(summary)
    skipped = f", {passed_over} non-image files in folders skipped" if passed_over else ""
    print(f"{n_files} files, {n_faces} faces, {n_failed} failed{skipped}", file=out if fmt == "table" else err)
    return 1 if n_failed else 0


class _Writer:
    """Streams results as table rows, CSV rows or JSON Lines (one object per input as soon as it
    is done, then a summary line); JSON is one document written at the end."""

    def __init__(self, fmt: str, out: TextIO, predictor: Predictor, width: int):
        self.fmt, self.out, self.width = fmt, out, min(width, 60)
        self.results: list[dict] = []
        self.meta = {
            "model": predictor.source,
            "backend": predictor.backend,
            "calibrated": predictor.calibrated,
            "age_range_coverage": predictor.age_range_coverage,
        }
        self.classes = {t: CLASS_NAMES[t] for t in ("gender", "ethnicity")}
        if fmt == "csv":
            self.csv = csv.writer(out)
            lm = [f"{n}_{c}" for n in LANDMARK_NAMES for c in "xy"]
            probs = [f"p_{t}_{c}" for t, names in self.classes.items() for c in names]
            header = ["file", "face", "x1", "y1", "x2", "y2", "score", *lm, "age", "age_low", "age_high", *probs]
            self.csv.writerow([*header, "error"])
        elif fmt == "jsonl":
            self._line({"type": "meta", **self.meta})
        elif fmt == "table":
            print(
                f"{'file':<{self.width}}  face  {'box (x1,y1,x2,y2)':<24} score  {'age (range)':<16} "
                f"{'gender':<13}  ethnicity",
                file=out,
            )

    def _line(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def add(self, r: FileResult) -> None:
        item = {"file": r.source, "faces": [f.to_dict() for f in r.faces]}
        item = {**item, "error": r.error} if r.error else item
        if self.fmt == "json":
            self.results.append(item)
        elif self.fmt == "jsonl":
            self._line({"type": "result", **item})
        elif self.fmt == "csv":
            self._csv_rows(r)
        else:
            self._table_rows(r)
        self.out.flush()

    def _csv_rows(self, r: FileResult) -> None:
        blank_probs = [""] * sum(len(v) for v in self.classes.values())
        if r.error or not r.faces:
            self.csv.writerow([r.source, "", "", "", "", "", "", *[""] * 10, "", "", "", *blank_probs, r.error or ""])
            return
        for k, f in enumerate(r.faces, 1):
            d = f.to_dict()
            lm = [v for pt in d["landmarks"] for v in pt] if d["landmarks"] else [""] * 10
            probs = []
            for task, names in self.classes.items():
                probs += [d[task][c] if d[task] else "" for c in names]
            score = "" if d["score"] is None else d["score"]
            age = "" if d["age"] is None else d["age"]
            low, high = d["age_range"] or ("", "")
            self.csv.writerow([r.source, k, *d["box"], score, *lm, age, low, high, *probs, ""])

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
            age = "-" if f.age is None else f"{f.age:.1f}"
            age += "" if f.age_range is None else f" ({f.age_range[0]:.0f}-{f.age_range[1]:.0f})"
            print(
                f"{name:<{self.width}}  {k:>4}  {box:<24} {score}  {age:<16} {_top(f.gender):<13}  {_top(f.ethnicity)}",
                file=self.out,
            )

    def close(self, summary: dict) -> None:
        if self.fmt == "json":
            json.dump({**self.meta, "results": self.results, "summary": summary}, self.out, indent=2)
            self.out.write("\n")
        elif self.fmt == "jsonl":
            self._line({"type": "summary", **summary})


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
