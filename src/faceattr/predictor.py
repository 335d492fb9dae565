"""The photo predictor: faces found and aligned in any photo (or images taken as ready chips),
run through a faceattr model in batches across faces and photos, with calibrated probabilities.

The shipped model runs on ONNX Runtime by default, so a prediction imports neither torch nor
the training code; ``backend="torch"`` (or a run folder / checkpoint) loads PyTorch on demand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.align import DETECT_SIDE, FaceDetector, align_face, chip_scale, model_chip
from faceattr.imageio import ImageLoadError, ImageSource, load_photo
from faceattr.inputerror import InputError
from faceattr.labels import CLASS_NAMES
from faceattr.onnxmodel import OnnxModel, chips_to_pixels

BACKENDS = ("onnx", "torch")
# A face is cut from a reduced decode only if that still gives at least 2 x 2 photo pixels per
# model input pixel (chip scale <= 0.5): the area resize to the model's size then loses nothing
# that the whole photo would add.
MIN_DETAIL = 0.5
JPEG_FACTORS = (8, 4, 2, 1)  # the reductions a JPEG decodes at straight from its DCT


def detail_factor(factor: float, chip_scales: list[float]) -> float:
    """The decode to cut the faces from, as photo pixels per decoded pixel: ``factor`` (the
    detection decode's) when it gives every face MIN_DETAIL, else the largest JPEG reduction
    that does (1: the photo whole). ``chip_scales``: chip pixels per pixel of the detection decode."""
    need = max(chip_scales, default=0.0) / MIN_DETAIL  # how much finer the decode must be
    if need <= 1:
        return factor
    return float(next((k for k in JPEG_FACTORS if k <= factor / need), 1))


@dataclass
class Face:
    """One face and what the model says about it.

    box: x1, y1, x2, y2 in the photo's pixels (the whole image with detection off); score: the
    detector's probability (None without detection); landmarks: (5, 2) x, y (None without
    detection); age: years (None if the model has no age head); age_range: (low, high) years,
    fitted on validation faces to hold the true age with the predictor's ``age_range_coverage``
    (None if the model has no fitted ranges); gender / ethnicity: class name -> probability
    (None if the model lacks the head); chip: the model's input, uint8 (S, S) gray or (S, S, 3)
    RGB, S the model's input side (64 RGB for the default model, 48 gray for reference48).
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
            "box": [_coordinate(v) for v in self.box],
            "score": None if self.score is None else round(self.score, 4),
            "landmarks": None if self.landmarks is None else [[_coordinate(v) for v in p] for p in self.landmarks],
            "age": None if self.age is None else round(self.age, 1),
            "age_range": None if self.age_range is None else [round(v, 1) for v in self.age_range],
            "gender": _rounded(self.gender),
            "ethnicity": _rounded(self.ethnicity),
        }


def _coordinate(v: float) -> float:
    return round(float(v), 1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _rounded(probs: dict[str, float] | None) -> dict[str, float] | None:
    return None if probs is None else {k: round(v, 4) for k, v in probs.items()}


@dataclass
class FileResult:
    """The faces of one input, or the one-line reason it could not be read."""

    source: str
    faces: list[Face]
    error: str | None = None
    error_kind: str | None = None  # ImageLoadError.kind of the error
    size: tuple[int, int] | None = None  # width, height of the (upright) photo


@dataclass
class PendingPhoto:
    """One input, decoded, detected and aligned, waiting for the model: (box, score, landmarks)
    and the model-ready chip of each face, or the reason it failed."""

    source: str
    boxes: list[tuple]
    chips: list[np.ndarray]
    error: str | None = None
    error_kind: str | None = None
    size: tuple[int, int] | None = None


class Predictor:
    """A model plus the detector and the preprocessing it was trained with.

    ``runner`` is an ``OnnxModel`` or (backend torch) a ``faceattr.inference.InferenceModel``;
    both map uint8 chips to named outputs. ``threads``: ONNX Runtime threads per network (None:
    every usable core; the bulk command gives each worker one).

    >>> predictor = Predictor.from_pretrained()  # doctest: +SKIP
    >>> [(f.age, f.gender["female"]) for f in predictor.predict("photo.jpg")]  # doctest: +SKIP
    """

    def __init__(
        self,
        runner,
        size: int,
        gray: bool,
        calibrated: bool,
        source: str = "",
        release: dict | None = None,
        device: str = "cpu",
        min_score: float = 0.9,
        max_side: int = DETECT_SIDE,
        min_face_size: int = 20,
        batch_size: int = 64,
        threads: int | None = None,
    ):
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: expected a positive number")
        if max_side < min_face_size:
            raise InputError(
                f"--detect-size {max_side}: expected at least the smallest face searched for, {min_face_size} px"
            )
        self.runner = runner
        self.size, self.gray = int(size), bool(gray)
        self.calibrated = calibrated
        self.age_range_coverage: float | None = None  # set by the constructors when ranges are fitted
        self.source = source
        self.release = release or {}
        self.device = str(device)
        self.detector_options = {"min_score": min_score, "max_side": max_side, "min_face_size": min_face_size}
        self.batch_size = batch_size
        self.threads = threads
        self.weights: Path | None = None  # the PyTorch checkpoint behind the model (Grad-CAM needs it)
        self.age_decoding: dict | None = None  # {"head", "bin_edges"} of the age head, if any
        self._detector: FaceDetector | None = None

    @property
    def backend(self) -> str:
        return "onnx" if isinstance(self.runner, OnnxModel) else "torch"

    @property
    def torch_model(self):
        """The PyTorch model (for Grad-CAM); None on the ONNX backend."""
        return None if isinstance(self.runner, OnnxModel) else self.runner

    @classmethod
    def from_pretrained(cls, name: str = "default", device: str = "cpu", backend: str = "onnx", **options) -> Predictor:
        """The weights that ship inside the package (see MODEL_CARD.md); no training needed.
        ``backend="onnx"`` (default) runs the shipped ONNX graph; ``"torch"`` the .pt file."""
        from faceattr.pretrained import pretrained_path

        _check_backend(backend)
        if backend == "onnx":
            predictor = cls.from_onnx(pretrained_path(name, ".onnx"), device=device, **options)
            predictor.source = f"pretrained:{predictor.runner.metadata.get('faceattr.model', name)}"
            predictor.weights = pretrained_path(name)
            return predictor
        return cls.from_checkpoint(pretrained_path(name), device=device, backend="torch", **options)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", backend: str = "torch", **options) -> Predictor:
        """A predictor from a run folder (its best.pt), a checkpoint or release file, or an
        exported .onnx file. A run folder's calibration.json, or the calibration a release file
        carries, rescales the class probabilities. Loads PyTorch (not for .onnx files)."""
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device, **options)
        _check_backend(backend)
        from faceattr.calibration import calibration_of, half_widths
        from faceattr.checkpoint import load_checkpoint
        from faceattr.device import select_device
        from faceattr.inference import inference_model, onnx_bytes
        from faceattr.runs import checkpoint_path

        ckpt = load_checkpoint(path)
        calibration = calibration_of(ckpt, path)
        pre = ckpt["preprocessing"]
        if pre.get("resize") != "area" or pre.get("color") not in ("gray", "rgb"):
            raise InputError(f"{path}: unknown preprocessing {pre} (expected area resize, gray/rgb)")
        gray, size = pre["color"] == "gray", int(pre["size"])
        temperature = calibration.get("temperature") or {}
        torch_device = select_device(device)
        model = inference_model(ckpt, temperature, torch_device, half_widths(calibration, ckpt))
        runner = model
        if backend == "onnx":
            runner = OnnxModel(onnx_bytes(model, 1 if gray else 3, size), device=device, threads=options.get("threads"))
        release = ckpt.get("release")
        label = f"pretrained:{release['name']}" if release and _is_packaged(path) else str(path)
        predictor = cls(runner, size, gray, bool(temperature), label, release, device=str(torch_device), **options)
        predictor.weights = checkpoint_path(path)
        if model.age is not None:
            predictor.age_decoding = {"head": model.age.head, "bin_edges": list(model.age.edges)}
        if "age_low" in model.output_names:
            predictor.age_range_coverage = float(calibration["age_interval"]["coverage"])
        return predictor

    @classmethod
    def from_onnx(cls, path: str | Path, device: str = "cpu", **options) -> Predictor:
        """A predictor over an exported faceattr .onnx file (its input shape gives the chip)."""
        runner = OnnxModel(path, device=device, threads=options.get("threads"))
        shape = runner.input_shape
        if len(shape) != 4 or shape[1] not in (1, 3) or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise InputError(f"{path}: input shape {shape}; expected (batch, 1 or 3, S, S)")
        _, channels, size, _ = shape
        meta = runner.metadata
        calibrated = meta.get("faceattr.calibrated") == "true"
        release = json.loads(meta["faceattr.release"]) if "faceattr.release" in meta else None
        predictor = cls(runner, size, channels == 1, calibrated, str(path), release, device=device, **options)
        if "age_low" in runner.output_names and "faceattr.age_range_coverage" in meta:
            predictor.age_range_coverage = float(meta["faceattr.age_range_coverage"])
        if "faceattr.age" in meta:
            predictor.age_decoding = json.loads(meta["faceattr.age"])
        return predictor

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:  # built on first use, so --no-detect never loads MTCNN
            device = "cuda" if self.device.startswith("cuda") else "cpu"
            self._detector = FaceDetector(device=device, threads=self.threads, **self.detector_options)
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
        return self.finish_batches(self.prepare(source, detect) for source in sources)

    def finish_batches(self, prepared: Iterable[PendingPhoto]) -> Iterator[FileResult]:
        """FileResults of prepared inputs, in order, the model run on batches of faces."""
        pending: list[PendingPhoto] = []
        n_chips = 0
        for item in prepared:
            pending.append(item)
            n_chips += len(item.chips)
            if n_chips >= self.batch_size or len(pending) >= self.batch_size:
                yield from self.finish(pending)
                pending, n_chips = [], 0
        yield from self.finish(pending)

    def prepare(
        self, source: ImageSource, detect: bool = True, max_pixels: int | None = None, max_bytes: int | None = None
    ) -> PendingPhoto:
        """Decode, detect and align one input (thread-safe: the bulk command runs it in workers).
        ``max_pixels`` / ``max_bytes``: refuse larger photos from their header (``load_photo``).

        A JPEG is decoded at reduced size for detection when it is much larger than the
        detector's copy; a face that the reduced image would give fewer than two pixels per
        model input pixel (across and down) is cut from a finer decode (``detail_factor``)."""
        label = str(source) if isinstance(source, str | Path) else f"<{type(source).__name__}>"
        try:
            limits = {"max_pixels": max_pixels, "max_bytes": max_bytes}
            min_side = self.detector_options["max_side"] if detect else None
            image, scale = load_photo(source, min_side=min_side, **limits)
            size = (round(image.size[0] * scale[0]), round(image.size[1] * scale[1]))
            if not detect:
                w, h = image.size
                return PendingPhoto(
                    label, [((0.0, 0.0, float(w), float(h)), None, None)], [self.chip(image)], size=size
                )
            faces = self.detector.detect(image)
            full, full_scale = image, scale
            factor = detail_factor(scale[0], [chip_scale(d.landmarks, self.size) for d in faces])
            if factor < scale[0]:  # a finer decode, not always the whole photo: 12 MP cost 2x otherwise
                full, full_scale = load_photo(source, factor=int(factor), **limits)
        except ImageLoadError as e:
            return PendingPhoto(label, [], [], error=str(e), error_kind=e.kind)
        except Exception as e:  # a bug or an input no check foresaw: this photo fails, the run goes on
            reason = f"{label}: could not be processed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
            return PendingPhoto(label, [], [], error=reason, error_kind="corrupt")
        boxes, chips = [], []
        to_full = np.array(scale) / np.array(full_scale)  # reduced image -> the image the chips come from
        for d in faces:
            landmarks = d.landmarks * np.array(scale)  # in the photo's pixels
            # MTCNN's square boxes may reach past the photo; report the part inside it.
            box = np.clip(d.box * np.tile(scale, 2), 0, np.tile(size, 2))
            boxes.append((tuple(float(v) for v in box), d.score, landmarks))
            chips.append(self.chip(align_face(full, d.landmarks * to_full)))
        return PendingPhoto(label, boxes, chips, size=size)

    def chip(self, image: Image.Image) -> np.ndarray:
        """The model input from an aligned (or ready) chip: the training recipe at this model's size."""
        return model_chip(image, self.size, self.gray)

    def finish(self, pending: list[PendingPhoto]) -> Iterator[FileResult]:
        """Run the model once over the chips of several prepared inputs."""
        chips = [c for p in pending for c in p.chips]
        attrs = self.attributes(np.stack(chips)) if chips else []
        k = 0
        for p in pending:
            faces = []
            for (box, score, landmarks), chip in zip(p.boxes, p.chips):
                faces.append(Face(box, score, landmarks, chip=chip, **attrs[k]))
                k += 1
            yield FileResult(p.source, faces, p.error, p.error_kind, p.size)

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


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r}: expected onnx or torch")


def _is_packaged(path: Path) -> bool:
    from faceattr.pretrained import PRETRAINED, packaged_file

    return any(path.resolve() == packaged_file(name).resolve() for name in PRETRAINED)


def load_predictor(model: str | Path | None, backend: str | None = None, device: str = "cpu", **options) -> Predictor:
    """What ``--model`` and ``--backend`` name: the shipped weights (no model, or a packaged
    name such as ``reference48``; ONNX Runtime unless torch is asked for), a run folder or
    checkpoint (PyTorch unless onnx is asked for), or an exported .onnx file (ONNX Runtime only)."""
    from faceattr.pretrained import packaged_name

    name = packaged_name(model)
    if name is not None:
        return Predictor.from_pretrained(name, device=device, backend=backend or "onnx", **options)
    if Path(model).suffix.lower() == ".onnx":
        if backend == "torch":
            raise InputError(f"--model {model}: an ONNX file runs with --backend onnx")
        return Predictor.from_onnx(model, device=device, **options)
    return Predictor.from_checkpoint(model, device=device, backend=backend or "torch", **options)
