"""`faceattr serve`: the HTTP API through FastAPI's test client (good photo, no face, several
faces, bad files, limits, Grad-CAM, concurrency, nothing written to disk), a property-based
run of schemathesis against the app's own OpenAPI schema, and the page driven end to end in
headless Chromium against a real server on a loopback port. The shipped model answers."""

from __future__ import annotations

import base64
import io
import json
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance
from skimage import data as skdata

from faceattr.cli import build_parser
from faceattr.predictor import Predictor
from faceattr.pretrained import PRETRAINED, pretrained_path
from faceattr.serve import Limits, create_app, running
from test_predict import ASTRONAUT_BOX, _bomb_png

LIMIT = 600_000  # bytes: small, so the oversize tests stay small too
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained(backend="torch")  # Grad-CAM needs PyTorch


@pytest.fixture(scope="module")
def app(predictor):
    return create_app(predictor, Limits(max_upload_bytes=LIMIT, max_pixels=4_000_000))


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def jpeg(im: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=90, **kw)
    return buffer.getvalue()


def png(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_model_and_docs(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok", "model": PRETRAINED["default"]}
    info = client.get("/v1/model").json()
    assert info["name"] == PRETRAINED["default"] and info["calibrated"] and info["backend"] == "torch"
    assert info["classes"]["ethnicity"] == ["White", "Black", "Asian", "Indian", "Others"]
    assert info["metrics"]["test"] == predictor.release["test"]  # the release's own test metrics
    assert info["metrics"]["test_95ci"]["gender_accuracy"]["ci"][0] < info["metrics"]["test"]["gender_acc"]
    assert info["limits"]["max_upload_bytes"] == LIMIT and "decide" in info["intended_use"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/octet-stream"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "<script>" in page.text


def test_good_photo_as_multipart_and_as_raw_bytes(client, astronaut):
    data = jpeg(astronaut)
    multipart = client.post("/v1/predict", files={"file": ("astronaut.jpg", data, "image/jpeg")})
    raw = client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"})
    assert multipart.status_code == raw.status_code == 200
    doc = multipart.json()
    assert doc["faces"] == raw.json()["faces"]
    assert doc["image"] == {"width": 512, "height": 512}
    created = Predictor.from_pretrained().release["created"]
    assert doc["model"] == {"name": PRETRAINED["default"], "version": created, "backend": "torch", "calibrated": True}
    (face,) = doc["faces"]
    np.testing.assert_allclose(face["box"], ASTRONAUT_BOX, atol=4)
    assert sum(face["gender"].values()) == pytest.approx(1, abs=1e-3) and face["gender"]["female"] > 0.8
    assert len(face["ethnicity"]) == 5 and 25 < face["age"] < 60 and len(face["landmarks"]) == 5
    low, high = face["age_range"]
    assert low < face["age"] < high
    assert face["explain"] is None


def test_a_phone_photo_in_heic_is_read(client, astronaut):
    buffer = io.BytesIO()
    astronaut.save(buffer, format="HEIF", quality=90)
    r = client.post("/v1/predict", files={"file": ("IMG_0001.HEIC", buffer.getvalue(), "image/heic")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_no_face_and_several_faces(client, astronaut):
    wall = client.post("/v1/predict", content=png(Image.new("RGB", (300, 200), (200, 180, 160))))
    assert wall.status_code == 200 and wall.json()["faces"] == []
    head = astronaut.crop((130, 10, 320, 230))
    group = Image.new("RGB", (600, 260), (90, 90, 90))
    group.paste(head, (10, 20))
    group.paste(head.resize((150, 174)), (400, 40))
    faces = client.post("/v1/predict", content=jpeg(group)).json()["faces"]
    assert len(faces) == 2 and faces[0]["box"][0] < 200 < 400 < faces[1]["box"][0]
    chip = client.post("/v1/predict?detect=false", content=png(Image.new("L", (48, 48), 128))).json()["faces"]
    assert len(chip) == 1 and chip[0]["box"] == [0, 0, 48, 48] and chip[0]["score"] is None


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"hello, this is text", 415, "not an image"),
        (b"", 422, "empty upload"),
        ("truncated", 422, "corrupt"),
        ("bomb", 413, "pixels, over the limit of"),
    ],
)
def test_bad_files_get_a_status_and_a_one_line_reason(client, astronaut, body, status, reason):
    if body == "truncated":
        body = jpeg(astronaut)[:3000]
    elif body == "bomb":
        body = _bomb_png(5000, 5000)  # 25 Mpx declared in a few dozen bytes; the server allows 4 Mpx
    for kwargs in ({"content": body}, {"files": {"file": ("x.jpg", body, "image/jpeg")}}):
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert reason in error and "\n" not in error


def test_oversize_uploads_are_refused_whole_or_streamed(client):
    big = np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)
    data = png(Image.fromarray(big))
    assert len(data) > LIMIT
    r = client.post("/v1/predict", content=data)
    assert r.status_code == 413 and f"{LIMIT:,}" in r.json()["error"]

    def chunks():  # no Content-Length: the server must count while it reads
        for k in range(0, len(data), 65536):
            yield data[k : k + 65536]

    r = client.post("/v1/predict", content=chunks())
    assert r.status_code == 413
    r = client.post("/v1/predict", files={"file": ("big.png", data, "image/png")})
    assert r.status_code == 413


def test_explain_adds_a_grad_cam_overlay_per_face_and_head(client, astronaut):
    r = client.post("/v1/predict?explain=true", content=jpeg(astronaut))
    (face,) = r.json()["faces"]
    assert set(face["explain"]) == {"gender", "ethnicity", "age"} and set(face["explain_empty"]) <= set(face["explain"])
    for url in face["explain"].values():
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert im.size == (144, 144) and im.mode == "RGB"


def test_concurrent_requests_share_one_model_and_agree(app, astronaut, monkeypatch):
    import faceattr.align
    import faceattr.predictor

    def no_second_model(*args, **kwargs):
        pytest.fail("a request loaded a model")

    # Everything that builds a model or a detector; the app built both before these requests.
    monkeypatch.setattr(faceattr.checkpoint, "load_checkpoint", no_second_model)
    monkeypatch.setattr(faceattr.inference, "inference_model", no_second_model)
    monkeypatch.setattr(faceattr.align.FaceDetector, "__init__", no_second_model)
    photos = [jpeg(astronaut), jpeg(astronaut.rotate(8)), jpeg(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    client = TestClient(app)
    alone = [client.post("/v1/predict?explain=true", content=d).json()["faces"] for d in photos]
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(client.post, f"/v1/predict?explain={k % 2 == 0}", content=photos[k % 3]) for k in range(12)]
        answers = [j.result() for j in jobs]
    for k, r in enumerate(answers):
        assert r.status_code == 200
        (face,) = r.json()["faces"]
        (want,) = alone[k % 3]
        assert face["age"] == pytest.approx(want["age"], abs=1e-3)
        assert face["gender"] == pytest.approx(want["gender"], abs=1e-4)
        # Grad-CAM under concurrent predictions explains this photo, not a neighbour's.
        assert face["explain"] == (want["explain"] if k % 2 == 0 else None)


def test_requests_beyond_the_in_flight_limit_get_503_and_readyz_says_busy(predictor, astronaut, monkeypatch):
    import requests

    release = threading.Event()
    entered = threading.Event()
    prepare = predictor.prepare

    def held(*args, **kwargs):  # the first request holds the only slot until released
        entered.set()
        release.wait(20)
        return prepare(*args, **kwargs)

    app = create_app(predictor, Limits(max_in_flight=1))
    with running(app) as url:
        monkeypatch.setattr(predictor, "prepare", held)
        first = threading.Thread(target=requests.post, args=(url + "/v1/predict",), kwargs={"data": jpeg(astronaut)})
        first.start()
        assert entered.wait(20)
        assert requests.get(url + "/healthz", timeout=10).status_code == 200  # alive, but
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "busy"
        r = requests.post(url + "/v1/predict", data=jpeg(astronaut), timeout=10)
        assert r.status_code == 503 and r.json()["error"].startswith("busy: 1 requests in progress")
        monkeypatch.setattr(predictor, "prepare", prepare)
        release.set()
        first.join(20)
        assert requests.get(url + "/readyz", timeout=10).json()["status"] == "ready"
        r = requests.post(url + "/v1/predict", data=jpeg(astronaut), timeout=10)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_no_file_is_written_per_request(predictor, tmp_path, monkeypatch):
    # A multipart upload over 1 MB is where Starlette's own form parser would spool to disk.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (900, 900, 3), dtype=np.uint8))
    app = create_app(predictor)  # the default 10 MB limit
    data = jpeg(big, subsampling=0)
    assert len(data) > 1024 * 1024
    r = TestClient(app).post("/v1/predict", files={"file": ("big.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    assert list(scratch.iterdir()) == []


def test_serve_binds_to_loopback_by_default():  # reachable from this machine only, unless asked
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.backend) == ("127.0.0.1", 8000, None)  # None: ONNX for the shipped model


def test_the_default_onnx_server_explains_by_loading_pytorch_on_demand(astronaut):
    predictor = Predictor.from_pretrained()
    client = TestClient(create_app(predictor))
    info = client.get("/v1/model").json()
    assert info["backend"] == "onnx" and info["age"]["head"] == "two_stage" and len(info["age"]["bin_edges"]) == 7
    plain = client.post("/v1/predict", content=jpeg(astronaut)).json()["faces"][0]
    assert plain["gender"]["female"] > 0.8 and plain["explain"] is None
    explained = client.post("/v1/predict?explain=true", content=jpeg(astronaut)).json()["faces"][0]
    assert set(explained["explain"]) == {"gender", "ethnicity", "age"}
    assert explained["age"] == pytest.approx(plain["age"], abs=1e-6)  # the answers still come from ONNX


def test_a_server_of_an_onnx_file_refuses_explain_with_a_reason(astronaut):
    client = TestClient(create_app(Predictor.from_onnx(pretrained_path(suffix=".onnx"))))
    assert client.get("/v1/model").json()["backend"] == "onnx"
    for body in (jpeg(astronaut), png(Image.new("RGB", (64, 64)))):  # refused before any work, face or not
        r = client.post("/v1/predict?explain=true", content=body)
        assert r.status_code == 422 and "needs the PyTorch weights" in r.json()["error"]


# --- the API against its own OpenAPI schema ----------------------------------------------------


def test_api_conforms_to_its_openapi_schema(app):
    # Schemathesis generates requests from the app's own schema (random bodies, content types,
    # query values) and checks every answer: no 5xx, documented status codes and content types,
    # bodies that match their schemas. Bounded: 30 cases per operation, derandomised. One check
    # is left out: "schema-valid data is accepted" cannot hold for an image API, since an
    # OpenAPI schema can say "binary" but not "a decodable photo", and random bytes are refused.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /healthz",
        "GET /readyz",
        "GET /v1/model",
        "POST /v1/predict",
    }
    # One error shape: nothing in the schema is FastAPI's own {"detail": ...} validation body.
    assert "HTTPValidationError" not in json.dumps(app.openapi())
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case):
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


# --- the page in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(app):
    with running(app) as url:  # a real uvicorn server on a free loopback port
        yield url


def test_page_shows_a_prediction_and_grad_cam_in_chromium(browser, server_url, astronaut, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    astronaut.save(photo, quality=92)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server_url + "/")
    page.wait_for_function(f"document.getElementById('model').textContent.includes('{PRETRAINED['default']}')")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("article.face")
    card = page.locator("article.face").first
    assert "Face 1" in card.inner_text() and "years" in card.inner_text() and "80 % range" in card.inner_text()
    assert card.locator(".row").count() == 7  # 2 gender + 5 ethnicity bars
    top = card.locator(".row.top[data-name='female']")
    assert top.count() == 1 and float(top.locator(".fill").evaluate("e => parseFloat(e.style.width)")) > 80
    assert page.locator("#canvas").is_visible()
    assert "1 face" in page.locator("#status").inner_text()
    page.click("#why")
    page.wait_for_selector(".cams img")
    assert page.locator(".cams img").count() == 3
    assert page.locator(".cams img").first.evaluate("img => img.complete && img.naturalWidth") == 144
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"))
    # Dropping a photo on the page works like choosing it: here a photo with two faces.
    head = astronaut.crop((130, 10, 320, 230))
    group = Image.new("RGB", (600, 260), (90, 90, 90))
    group.paste(head, (10, 20))
    group.paste(head.resize((150, 174)), (400, 40))
    payload = base64.b64encode(jpeg(group)).decode("ascii")
    transfer = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "group.jpg", {type: "image/jpeg"}));
            return dt;
        }""",
        payload,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelectorAll('article.face').length === 2")
    assert "2 faces" in page.locator("#status").inner_text()
    # A HEIC photo, which Chromium cannot display: the faces are listed, the photo is not drawn.
    heic = tmp_path / "IMG_0001.HEIC"
    astronaut.save(heic, format="HEIF", quality=90)
    page.set_input_files("#file", str(heic))
    page.wait_for_function("document.getElementById('status').textContent.includes('cannot display')")
    assert page.locator("article.face").count() == 1 and page.locator("#canvas").is_hidden()
    # A refusal shows its reason on the page.
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    assert "415" in page.locator("#status").inner_text() and "not an image" in page.locator("#status").inner_text()
    assert [p for p in problems if "415" not in p] == []  # the browser logs the refused request itself
    page.close()


def test_serve_refuses_a_taken_port_in_one_line(capsys):

    from faceattr.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"faceattr serve: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err
    assert main(["serve", "--port", "70000"]) == 2
