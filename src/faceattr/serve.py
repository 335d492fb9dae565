"""`faceattr serve`: the predictor behind a small HTTP API (FastAPI) and one static page.

One Predictor is built at start-up and shared by every request (ONNX Runtime by default;
sessions are thread-safe), so requests run concurrently in the server's thread pool; Grad-CAM
loads the PyTorch network on first use and runs on a copy of its own, one explanation at a time.

What a hostile or careless client meets (``Limits``): an upload is read into memory (never to
disk) within a deadline and an idle timeout, without holding a processing slot; at most
``max_in_flight`` requests decode and predict at once (more get 503, and ``/readyz`` says so
while ``/healthz`` stays about liveness); each photo's decoding memory is estimated from its
header (bytes per pixel by mode) and refused over a per-request budget, and all requests
together stay under a server-wide one. Every refusal is ``{"error": "..."}`` with its status.
Bound to a loopback address the server answers only requests whose Host is that address and
refuses cross-origin POSTs from browsers (DNS rebinding, drive-by pages); bound elsewhere it
needs a token on every API call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ctypes
import hmac
import io
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from faceattr import __version__
from faceattr.imageio import probe_bytes
from faceattr.inputerror import InputError
from faceattr.labels import CLASS_NAMES
from faceattr.predictor import Face, Predictor, load_predictor

EXPLAIN_SIZE = 144  # side of the Grad-CAM overlays sent to the page (the model sees 64x64 or 48x48)
STATUS_FOR_KIND = {"not_image": 415, "too_large": 413, "corrupt": 422, "missing": 422}
TOKEN_ENV = "FACEATTR_TOKEN"
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/openapi.json")  # answered without the token
TRIM_AFTER_BYTES = 32_000_000  # after a request this large, hand freed memory back to the system
log = logging.getLogger("faceattr.serve")


@dataclass(frozen=True)
class Limits:
    """What one request and the whole server may take. Memory is counted as the bytes decoding
    a photo holds (``imageio.decode_bytes``: 4 a pixel for RGB, 7 for 16-bit gray, 8 with
    transparency, plus 4 for an EXIF rotation), so a small file of many pixels is refused from
    its header, before any decoding."""

    max_upload_bytes: int = 10_000_000  # 10 MB
    max_pixels: int = 40_000_000  # a 40-megapixel photo
    max_in_flight: int = 8  # requests decoding and predicting at once; more get 503
    max_reading: int = 64  # uploads being received at once; more get 503
    body_timeout: float = 30.0  # seconds for a whole upload
    idle_timeout: float = 5.0  # seconds without a byte from the client
    request_bytes: int = 400_000_000  # decoding memory of one request
    server_bytes: int = 1_200_000_000  # decoding memory of all requests together
    memory_wait: float = 10.0  # seconds a request waits for memory before 503
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers


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
    400: {"model": Problem, "description": "Host header not this server's"},
    401: {"model": Problem, "description": "missing or wrong token (server bound to a non-loopback address)"},
    403: {"model": Problem, "description": "cross-origin request from a browser"},
    408: {"model": Problem, "description": "upload too slow (deadline or idle timeout)"},
    413: {"model": Problem, "description": "upload or image too large (bytes, pixels or decoding memory)"},
    415: {"model": Problem, "description": "not an image"},
    422: {"model": Problem, "description": "corrupt image or bad request (e.g. a query parameter)"},
    503: {"model": Problem, "description": "too many requests in progress, or not enough memory now; retry"},
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


class Gone(Exception):
    """The client went away before its upload was complete."""


class Ready(BaseModel):
    status: str = Field(description="ready, or busy when every processing slot is taken")
    in_flight: int = Field(description="requests decoding and predicting now")
    capacity: int = Field(description="at most this many at once")
    reading: int = Field(description="uploads being received now")
    memory_bytes: int = Field(description="decoding memory held by requests now (estimated)")


class MemoryBudget:
    """A server-wide allowance of decoding memory: a request takes its estimate before it
    decodes and gives it back after, waiting a while when others hold too much."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.used + n <= self.total, timeout) and self._add(n)

    def _add(self, n: int) -> bool:
        self.used += n
        return True

    def give(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def header_deadline(seconds: float):
    """uvicorn's HTTP protocol with a deadline on request headers: a connection that has not
    sent a whole request line and headers within ``seconds`` of opening (or of its previous
    response) is closed. uvicorn bounds the body (our read_upload does) and idle keep-alive,
    but not headers sent a byte at a time, which would hold connections forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            self._waiting_for = None
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._waiting_for = self.cycle  # headers are complete once a new cycle exists
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _too_slow(self) -> None:
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                log.warning("%s sent no complete request headers within %g s; closed", _peer(self.client), seconds)
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_for and self._header_timer is not None:
                self._header_timer.cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def trim_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise, so a server that
    once decoded eight large photos would hold their memory for good)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def create_app(
    predictor: Predictor,
    limits: Limits | None = None,
    allowed_hosts: set[str] | None = None,
    token: str | None = None,
) -> FastAPI:
    """The ASGI app around one shared ``predictor``. ``allowed_hosts``: the Host names it
    answers (None: any, for a server bound beyond loopback, which then needs ``token``)."""
    limits = limits or Limits()
    app = FastAPI(
        title="faceattr",
        version=__version__,
        description="Gender, ethnicity and age of every face in a photo, with calibrated probabilities "
        "and Grad-CAM explanations. " + INTENDED_USE,
        docs_url=None,
        redoc_url=None,
    )
    slots = threading.BoundedSemaphore(limits.max_in_flight)
    memory = MemoryBudget(limits.server_bytes)
    state = {"in_flight": 0, "reading": 0}
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
    app.add_middleware(Guard, allowed_hosts=allowed_hosts, token=token)
    install_error_handlers(app)
    from swagger_ui_bundle import swagger_ui_path  # the docs page's script and style, offline

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="faceattr API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("faceattr.static").joinpath("index.html").read_text())

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness: the process answers (see /readyz for whether it has room for work)."""
        return Health(status="ok", model=model_ref.name)

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "saturated"}})
    def readyz() -> JSONResponse:
        """Readiness: 503 while every processing slot is taken."""
        busy = state["in_flight"] >= limits.max_in_flight
        body = Ready(
            status="busy" if busy else "ready",
            in_flight=state["in_flight"],
            capacity=limits.max_in_flight,
            reading=state["reading"],
            memory_bytes=memory.used,
        )
        return JSONResponse(body.model_dump(), status_code=503 if busy else 200)

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS)
    def model_info() -> ModelInfo:
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
            age=predictor.age_decoding,
            metrics=metrics,
            age_range_coverage=predictor.age_range_coverage,
            intended_use=INTENDED_USE,
            limits={
                "max_upload_bytes": limits.max_upload_bytes,
                "max_pixels": limits.max_pixels,
                "max_in_flight": limits.max_in_flight,
                "max_decode_bytes": limits.request_bytes,
            },
        )

    @app.post("/v1/predict", response_model=Prediction, responses=ERRORS, openapi_extra=BODY_DOC)
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add a Grad-CAM overlay per face and head (slower)"),
        detect: bool = Query(True, description="false: the whole image is one ready face chip"),
    ) -> Prediction:
        started = time.perf_counter()
        if explain and not explainer.available:
            raise Refused(422, "explain=true needs the PyTorch weights; this server runs an .onnx file")
        # Receiving an upload holds no processing slot, so slow clients cannot starve the rest;
        # the number of uploads in the air is bounded on its own.
        if state["reading"] >= limits.max_reading:
            raise Refused(503, f"busy: {limits.max_reading} uploads being received; retry shortly")
        state["reading"] += 1
        try:
            data = await read_upload(request, limits)
        finally:
            state["reading"] -= 1
        # The header alone, off the event loop: pixels and decoding memory are refused before
        # any decoding, slot or memory is taken.
        width, height, cost = await run_in_threadpool(probe_bytes, data) or (0, 0, 0)
        if width * height > limits.max_pixels:
            raise Refused(
                413, f"upload: {width}x{height} = {width * height:,} pixels, over the limit of {limits.max_pixels:,}"
            )
        if cost > limits.request_bytes:
            raise Refused(
                413,
                f"upload: decoding this image would take about {cost / 1e6:.0f} MB; the limit is "
                f"{limits.request_bytes / 1e6:.0f} MB (16-bit, transparent and rotated photos cost more per pixel)",
            )
        # A bounded number of requests decode and predict at once; the rest are told to come
        # back rather than queueing photos in memory.
        if not slots.acquire(blocking=False):
            raise Refused(503, f"busy: {limits.max_in_flight} requests in progress; retry shortly")
        state["in_flight"] += 1
        try:
            # Decoding, detection and Grad-CAM run in the thread pool, never on the event loop.
            size, faces, overlays = await run_in_threadpool(answer, data, detect, explain, cost)
        finally:
            state["in_flight"] -= 1
            slots.release()
        out = [FaceOut(**f.to_dict()) for f in faces]
        for face, maps in zip(out, overlays or []):
            face.explain, face.explain_empty = maps["explain"], maps["explain_empty"]
        return Prediction(
            model=model_ref,
            image={"width": size[0], "height": size[1]},
            faces=out,
            seconds=round(time.perf_counter() - started, 4),
        )

    def answer(data: bytes, detect: bool, explain: bool, cost: int):
        if not memory.take(cost, limits.memory_wait):
            raise Refused(503, "busy: not enough memory for this photo now; retry shortly")
        try:
            pending = predictor.prepare(data, detect, max_pixels=limits.max_pixels, max_bytes=limits.request_bytes)
            if pending.error:
                status = STATUS_FOR_KIND.get(pending.error_kind, 422)
                raise Refused(status, "upload: " + pending.error.removeprefix("<bytes>: "))
            result = next(predictor.finish([pending]))
        finally:
            memory.give(cost)
            if cost > TRIM_AFTER_BYTES:
                trim_memory()
        overlays = explainer.explain(result.faces) if explain and result.faces else None
        return result.size, result.faces, overlays

    return app


def install_error_handlers(app: FastAPI) -> None:
    """One error shape everywhere: ``{"error": "one line"}`` with the status."""

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug, not the client's fault
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, str(exc).splitlines()[:1])
        return JSONResponse({"error": "internal error; the server log has the reason"}, status_code=500)

    @app.exception_handler(Gone)
    async def gone(request: Request, exc: Gone) -> JSONResponse:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.warning("%s disconnected during its upload (%s)", client, exc)
        return JSONResponse({"error": "client disconnected"}, status_code=400)


class Guard:
    """ASGI middleware in front of every route: the Host check (DNS rebinding), the Origin
    check for browser POSTs (a page elsewhere must not make this server work) and the token."""

    def __init__(self, app, allowed_hosts: set[str] | None, token: str | None):
        self.app, self.allowed_hosts, self.token = app, allowed_hosts, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            problem = self.check(scope["method"], scope["path"], headers)
            if problem is not None:
                await JSONResponse({"error": problem[1]}, status_code=problem[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "").lower()
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            return 400, f"Host {host!r} is not this server's name; open it as http://127.0.0.1:PORT/"
        origin = headers.get("origin")
        # Same origin only: the page this server serves posts with Origin http://<its Host>; a
        # page of another site, or of another local service (another port), does not.
        if method not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            parts = urlsplit(origin.lower())
            if parts.scheme not in ("http", "https") or parts.netloc != host:
                return 403, f"cross-origin request from {origin} refused"
        if self.token and path not in OPEN_PATHS and not path.startswith("/docs-assets/"):
            scheme, _, value = headers.get("authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else headers.get("x-faceattr-token", "")
            # Headers arrive as latin-1 text: back to their bytes, compared with the token's.
            if not hmac.compare_digest(given.encode("latin-1", "replace"), self.token.encode("utf-8")):
                return 401, "missing or wrong token: send Authorization: Bearer <token>"
        return None


def host_name(host: str) -> str:
    """The name part of a Host header value ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '::1')."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


async def read_upload(request: Request, limits: Limits) -> bytes:
    """The image bytes of a request (raw body or the first file of a multipart form), read into
    memory: refused with 413 as soon as the body passes the byte limit, with 408 when the whole
    upload takes longer than ``body_timeout`` or the client sends nothing for ``idle_timeout``."""
    limit = limits.max_upload_bytes
    # A multipart envelope adds a few hundred bytes around the file: the body may exceed the
    # limit by this much, and the file itself is checked once parsed.
    body_limit = limit + 64 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise Refused(413, f"upload of {int(declared):,} bytes; the limit is {limit:,} bytes")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    deadline = time.monotonic() + limits.body_timeout
    while True:
        wait = min(limits.idle_timeout, deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise Refused(
                408,
                f"upload too slow: {size:,} bytes received; send the whole photo within "
                f"{limits.body_timeout:g} s, with no pause over {limits.idle_timeout:g} s",
            ) from None
        except ClientDisconnect:
            raise Gone(f"after {size:,} bytes") from None
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
    """Grad-CAM for the server. It runs on its own copy of the network, made on first use (on
    the ONNX backend, from the PyTorch weights the graph was exported from): Grad-CAM hooks the
    layer it explains, and hooks on a shared model would also fire (and mix activations) for
    the plain predictions running beside it. One explanation at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.lock = threading.Lock()
        self.net = None
        self.model = predictor.torch_model

    @property
    def available(self) -> bool:
        return self.model is not None or self.predictor.weights is not None

    def explain(self, faces: list[Face]) -> list[dict]:
        """Per face: Grad-CAM overlays (PNG data URLs) for each head's own prediction, and the
        heads whose map came out empty."""
        from faceattr.explain import cam_overlays

        chips = np.stack([f.chip for f in faces])
        with self.lock:
            if self.model is None:  # the same weights and calibration, on PyTorch
                torch_predictor = Predictor.from_checkpoint(
                    self.predictor.weights, device=self.predictor.device, backend="torch"
                )
                self.model = torch_predictor.torch_model
            model = self.model
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
def running(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0, header_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread for the duration of a ``with`` block;
    yields its base URL (port 0: a free port picked by the system). For tests and tools."""
    import uvicorn

    port = port or free_port(host)  # uvicorn needs a concrete port to report back
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=header_deadline(header_timeout))
    server = uvicorn.Server(config)
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


def serve(
    model: str | None,
    host: str,
    port: int,
    backend: str | None,
    device: str,
    token: str | None = None,
    log_level: str = "info",
) -> int:
    """`faceattr serve`: load the model once and run uvicorn until interrupted. Bound to a
    loopback address, only that Host is answered; bound elsewhere, a token is required."""
    import uvicorn

    token = token or os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(host)
    if not loopback and not token:
        raise InputError(
            f"--host {host} is reachable from other machines: pass --token TOKEN (or set {TOKEN_ENV}) so that "
            "only clients that know it are answered"
        )
    predictor = load_predictor(model, backend, device)
    app = create_app(predictor, allowed_hosts=LOOPBACK_NAMES | {host} if loopback else None, token=token)
    if not loopback:
        print(
            f"faceattr serve: warning: listening on {host}, reachable from other machines; every API call must "
            "carry the token (Authorization: Bearer ...)",
            flush=True,
        )
    print(f"faceattr serve: {predictor.source} on http://{host}:{port}/ (API docs at /docs)", flush=True)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))  # as uvicorn's own lines
    log.addHandler(handler)
    log.propagate = False
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=5,
        http=header_deadline(Limits.header_timeout),
    )
    return 0
