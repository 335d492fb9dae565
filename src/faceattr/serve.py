"""`faceattr serve`: the predictor behind a small HTTP API (FastAPI) and one static page.

One Predictor is built at start-up and shared by every request: PyTorch inference is
thread-safe, so requests run concurrently in the server's thread pool; Grad-CAM adds hooks to
the network, so it runs on a copy of its own, one explanation at a time. Uploads are read into memory up to a limit (never to
disk: multipart bodies are parsed from memory, not spooled to temporary files), images are
checked against a pixel limit before decoding, and each refusal has its own status code and a
one-line reason. At most ``max_in_flight`` requests hold an upload at a time; more get 503.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from faceattr import __version__
from faceattr.imageio import ImageLoadError, load_image
from faceattr.labels import CLASS_NAMES
from faceattr.predictor import Face, Predictor, load_predictor

MAX_UPLOAD_BYTES = 10_000_000  # 10 MB
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; a larger header is refused before decoding
MAX_IN_FLIGHT = 8  # requests holding an upload at once (each up to ~120 MB decoded at 40 Mpx)
EXPLAIN_SIZE = 144  # side of the Grad-CAM overlays sent to the page (the model sees 48x48)
STATUS_FOR_KIND = {"not_image": 415, "too_large": 413, "corrupt": 422, "missing": 422}


class Problem(BaseModel):
    """Why a request was refused."""

    error: str = Field(description="one-line reason")


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels")
    score: float | None = Field(description="detector probability (null with detect=false)")
    landmarks: list[list[float]] | None = Field(description="eyes, nose, mouth corners: x, y")
    age: float | None = Field(description="years")
    age_range: list[float] | None = Field(
        description="[low, high] years, fitted on held-out faces to hold the true age with the share "
        "given by /v1/model age_range_coverage"
    )
    gender: dict[str, float] | None = Field(description="class -> calibrated probability")
    ethnicity: dict[str, float] | None = Field(description="class -> calibrated probability")
    explain: dict[str, str] | None = Field(
        default=None, description="head -> Grad-CAM overlay of the face, PNG as a data: URL (explain=true)"
    )
    explain_empty: list[str] | None = Field(
        default=None, description="heads whose map is empty: no region of the face raised that output"
    )


class ModelRef(BaseModel):
    name: str = Field(description="release name (or the model file's name for an unreleased model)")
    version: str = Field(description="release date of the weights, or 'unreleased'")
    backend: str
    calibrated: bool


class Prediction(BaseModel):
    model: ModelRef
    image: dict[str, int] = Field(description="width and height of the photo as decoded (EXIF-upright)")
    faces: list[FaceOut]
    seconds: float


class Health(BaseModel):
    status: str
    model: str


class ModelInfo(BaseModel):
    name: str
    version: str
    faceattr_version: str
    backend: str
    calibrated: bool
    input: str
    classes: dict[str, list[str]]
    age: dict | None
    metrics: dict | None = Field(description="test metrics of the release (see MODEL_CARD.md)")
    age_range_coverage: float | None = Field(description="share of true ages the age ranges are fitted to hold")
    intended_use: str
    limits: dict[str, int]


ERRORS = {
    413: {"model": Problem, "description": "upload or image too large"},
    415: {"model": Problem, "description": "not an image"},
    422: {"model": Problem, "description": "corrupt image or bad request"},
    503: {"model": Problem, "description": "too many requests in progress; retry"},
}
BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "the photo: a multipart form with one file field, or the raw image bytes",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "image/heic": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INTENDED_USE = (
    "Research and trying the model. Gender and ethnicity are UTKFace's coarse appearance labels, not identity; "
    "never use the outputs to identify people or to decide anything about them (MODEL_CARD.md)."
)


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> FastAPI:
    """The ASGI app around one shared ``predictor``."""
    app = FastAPI(
        title="faceattr",
        version=__version__,
        description="Gender, ethnicity and age of every face in a photo, with calibrated probabilities "
        "and Grad-CAM explanations. " + INTENDED_USE,
    )
    slots = threading.BoundedSemaphore(max_in_flight)
    explainer = Explainer(predictor)
    release = predictor.release or {}
    model_ref = ModelRef(
        # Never a local path: the endpoints need no authentication.
        name=release.get("name", Path(predictor.source).name),
        version=release.get("created", "unreleased"),
        backend=predictor.backend,
        calibrated=predictor.calibrated,
    )
    predictor.detector  # build MTCNN now, once, not inside the first requests  # noqa: B018

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("faceattr.static").joinpath("index.html").read_text())

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok", model=model_ref.name)

    @app.get("/v1/model", response_model=ModelInfo)
    def model_info() -> ModelInfo:
        spec = predictor.torch_model.age if predictor.torch_model is not None else None
        metrics = None
        if release:
            metrics = {
                "test": release.get("test"),
                "test_95ci": release.get("report"),
                "split": release.get("split_hash"),
            }
        return ModelInfo(
            name=model_ref.name,
            version=model_ref.version,
            faceattr_version=__version__,
            backend=predictor.backend,
            calibrated=predictor.calibrated,
            input=f"{predictor.size}x{predictor.size} {'gray' if predictor.gray else 'RGB'} aligned face",
            classes={t: list(v) for t, v in CLASS_NAMES.items()},
            age=None if spec is None else {"head": spec.head, "bin_edges": list(spec.edges)},
            metrics=metrics,
            age_range_coverage=predictor.age_range_coverage,
            intended_use=INTENDED_USE,
            limits={"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_in_flight": max_in_flight},
        )

    @app.post("/v1/predict", response_model=Prediction, responses=ERRORS, openapi_extra=BODY_DOC)
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add a Grad-CAM overlay per face and head (slower)"),
        detect: bool = Query(True, description="false: the whole image is one ready face chip"),
    ) -> Prediction:
        started = time.perf_counter()
        if explain and predictor.torch_model is None:
            raise Refused(422, "explain=true needs the PyTorch backend (this server runs ONNX Runtime)")
        # A bounded number of requests hold an upload and a decoded photo at once; the rest are
        # told to come back rather than queueing photos in memory.
        if not slots.acquire(blocking=False):
            raise Refused(503, f"busy: {max_in_flight} requests in progress; retry shortly")
        try:
            data = await read_upload(request, max_upload_bytes)
            # Decoding, detection and Grad-CAM run in the thread pool, never on the event loop.
            (w, h), faces, overlays = await run_in_threadpool(answer, data, detect, explain)
        finally:
            slots.release()
        out = [FaceOut(**f.to_dict()) for f in faces]
        for face, maps in zip(out, overlays or []):
            face.explain, face.explain_empty = maps["explain"], maps["explain_empty"]
        return Prediction(
            model=model_ref, image={"width": w, "height": h}, faces=out, seconds=round(time.perf_counter() - started, 4)
        )

    def answer(data: bytes, detect: bool, explain: bool):
        try:
            image = load_image(data, max_pixels=max_pixels)
        except ImageLoadError as e:
            raise Refused(STATUS_FOR_KIND.get(e.kind, 422), "upload: " + str(e).removeprefix("<bytes>: ")) from None
        faces = predictor.predict(image, detect)
        overlays = explainer.explain(faces) if explain and faces else None
        return image.size, faces, overlays

    return app


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a request (raw body or the first file of a multipart form), read into
    memory and refused with 413 as soon as the body passes ``limit`` bytes."""
    # A multipart envelope adds a few hundred bytes around the file: the body may exceed the
    # limit by this much, and the file itself is checked once parsed.
    body_limit = limit + 64 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise Refused(413, f"upload of {int(declared):,} bytes; the limit is {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > body_limit:
            raise Refused(413, f"upload over {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"multipart/form-data":
        body = first_file(body, params.get(b"boundary"))
    if len(body) > limit:
        raise Refused(413, f"upload of {len(body):,} bytes; the limit is {limit:,} bytes")
    if not body:
        raise Refused(422, "empty upload: send an image as the body or as a multipart file field")
    return body


def first_file(body: bytes, boundary: bytes | None) -> bytes:
    """The content of the first part of a multipart body that carries a file name (or, if none
    does, of the first part), parsed in memory."""
    if not boundary:
        raise Refused(422, "multipart upload without a boundary")
    parts: list[dict] = []
    header: dict = {}

    def on_part_begin() -> None:
        parts.append({"data": [], "headers": {}})

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].append(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header.pop("field", b"").lower()] = header.pop("value", b"")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:  # python-multipart raises its own errors for malformed bodies
        raise Refused(422, f"malformed multipart body ({type(e).__name__})") from None
    if not parts:
        raise Refused(422, "multipart upload with no parts: send the image in a file field")
    with_name = [p for p in parts if b"filename=" in p["headers"].get(b"content-disposition", b"")]
    return b"".join((with_name or parts)[0]["data"])


class Explainer:
    """Grad-CAM for the server. It runs on its own copy of the network, made on first use:
    Grad-CAM hooks the layer it explains, and hooks on the shared model would also fire (and
    mix activations) for the plain predictions running beside it. One explanation at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.lock = threading.Lock()
        self.net = None

    def explain(self, faces: list[Face]) -> list[dict]:
        """Per face: Grad-CAM overlays (PNG data URLs) for each head's own prediction, and the
        heads whose map came out empty."""
        from faceattr.explain import cam_overlays

        model = self.predictor.torch_model
        chips = np.stack([f.chip for f in faces])
        with self.lock:
            if self.net is None:
                self.net = copy.deepcopy(model.net).eval()
            maps = cam_overlays(
                self.net, chips, model.mean, model.std, model.age, EXPLAIN_SIZE, device=self.predictor.device
            )
        return [
            {
                "explain": {head: png_data_url(images[i]) for head, (images, _) in maps.items()},
                "explain_empty": [head for head, (_, empty) in maps.items() if empty[i]],
            }
            for i in range(len(faces))
        ]


def png_data_url(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, picked by the system."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread for the duration of a ``with`` block;
    yields its base URL (port 0: a free port picked by the system). For tests and tools."""
    import uvicorn

    port = port or free_port(host)  # uvicorn needs a concrete port to report back
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def serve(model: str | None, host: str, port: int, backend: str, device: str, log_level: str = "info") -> int:
    """`faceattr serve`: load the model once and run uvicorn until interrupted."""
    import uvicorn

    predictor = load_predictor(model, backend, device)
    app = create_app(predictor)
    print(f"faceattr serve: {predictor.source} on http://{host}:{port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    return 0
