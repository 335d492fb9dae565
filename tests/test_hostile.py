"""Hostile and careless input, one test per defect found by probing `faceattr serve` and
`faceattr predict` as an attacker would: slow uploads, small files that decode huge, unwritable
outputs, folders with odd entries, error shapes, disconnecting clients, files without line
breaks, cross-site requests. Every case is bounded to a few seconds (short timeouts configured
for the test) and runs against 127.0.0.1 only; bench/serve_abuse.py runs the long versions."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from faceattr.cli import main
from faceattr.imageio import decode_bytes, load_image
from faceattr.predictor import Predictor
from faceattr.serve import Limits, create_app, running


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained()  # the default: ONNX Runtime


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def slow_client(url: str, declared: int = 1_000_000) -> socket.socket:
    """A client that announces a large upload and sends one byte of it."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)))
    conn.sendall(
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + b"\xff"
    )
    return conn


def status_line(conn: socket.socket, timeout: float) -> str:
    conn.settimeout(timeout)
    return conn.recv(4096).split(b"\r\n", 1)[0].decode()


# 1. Slow uploads held a processing slot with no deadline: eight of them made every request 503.
def test_slow_uploads_neither_starve_others_nor_stay_forever(predictor, astronaut_jpeg):
    limits = Limits(max_in_flight=2, idle_timeout=0.6, body_timeout=1.5)
    with running(create_app(predictor, limits)) as url:
        slow = [slow_client(url) for _ in range(8)]
        try:
            time.sleep(0.2)
            ready = requests.get(url + "/readyz", timeout=5).json()
            assert ready["status"] == "ready" and ready["reading"] == 8
            r = requests.post(url + "/v1/predict", data=astronaut_jpeg, timeout=10)
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
            # Each slow client is answered 408 once it has been idle too long.
            assert all(status_line(c, 5).endswith("408 Request Timeout") for c in slow)
        finally:
            for c in slow:
                c.close()


def test_a_trickling_upload_meets_the_whole_body_deadline(predictor):
    limits = Limits(idle_timeout=1.0, body_timeout=1.2)
    with running(create_app(predictor, limits)) as url:
        conn = slow_client(url)
        try:
            started = time.monotonic()
            for _ in range(10):  # one byte every 0.3 s: never idle for long, never done
                time.sleep(0.3)
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    break
            line = status_line(conn, 5)
            assert line.endswith("408 Request Timeout") and time.monotonic() - started < 5
        finally:
            conn.close()


def test_headers_sent_a_byte_at_a_time_meet_a_deadline(predictor, astronaut_jpeg):
    """The classic slowloris: request headers that never end. The connection is closed."""
    with running(create_app(predictor), header_timeout=0.6) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started, closed = time.monotonic(), False
            conn.settimeout(0.25)
            while time.monotonic() - started < 5 and not closed:
                try:
                    closed = conn.recv(1024) == b""
                except TimeoutError:
                    try:
                        conn.sendall(b"X")  # one more byte of a header that never ends
                    except OSError:
                        closed = True
            assert closed and time.monotonic() - started < 3
        r = requests.post(url + "/v1/predict", data=astronaut_jpeg, timeout=10)  # others are served
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        with requests.Session() as keep:  # a kept-alive connection answers request after request
            assert [keep.get(url + "/healthz", timeout=5).status_code for _ in range(3)] == [200] * 3


# 2. A 93 KB 16-bit PNG of 40 Mpx took 1.3 GB: the memory a photo's decoding holds is counted
# from its header, refused over the request budget, and rationed across the server.
def test_decoding_memory_is_counted_from_the_header_and_refused_over_budget(predictor):
    wide = Image.fromarray(np.zeros((3000, 3000), np.uint16))
    with Image.open(io.BytesIO(png_bytes(wide))) as im:
        assert decode_bytes(im) == 3000 * 3000 * 7  # 16-bit: 2 bytes, 8-bit gray 1, RGB 4
    client = TestClient(create_app(predictor, Limits(request_bytes=50_000_000)))
    r = client.post("/v1/predict", content=png_bytes(wide))
    assert r.status_code == 413 and "would take about 63 MB" in r.json()["error"]
    rgb = png_bytes(Image.new("RGB", (3000, 3000), (90, 100, 110)))  # 36 MB to decode: within budget
    assert client.post("/v1/predict", content=rgb).json()["faces"] == []
    rationed = TestClient(create_app(predictor, Limits(server_bytes=10_000_000, memory_wait=0.2)))
    r = rationed.post("/v1/predict", content=rgb)
    assert r.status_code == 503 and "not enough memory" in r.json()["error"]


def test_a_small_file_declaring_huge_pixels_is_refused_from_its_header(predictor):
    """A 300 KB PNG of 9000x9000 transparent pixels: its header is read off the event loop and
    refused before anything is decoded (Pillow would decode a PNG to look for EXIF)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (9000, 9000)).save(buffer, format="PNG")
    client = TestClient(create_app(predictor))
    r = client.post("/v1/predict", content=buffer.getvalue())
    assert r.status_code == 413 and "81,000,000 pixels" in r.json()["error"]


def test_sixteen_bit_photos_convert_in_strips_to_the_same_values():
    values = np.arange(700 * 600, dtype=np.uint32).reshape(700, 600) * 65535 // (700 * 600 - 1)
    image = load_image(png_bytes(Image.fromarray(values.astype(np.uint16))))
    expected = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], expected)


# 3. --annotate into a folder that cannot be made printed a traceback (exit 1).
@pytest.mark.parametrize("target", ["/proc/faceattr-annot", "{file}/sub"])
def test_annotate_into_an_unwritable_place_is_one_line_and_exit_2(tmp_path, capsys, target):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(photo)
    assert main(["predict", str(photo), "--annotate", target.format(file=photo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("faceattr predict: error: --annotate") and "\n" not in err and "Traceback" not in err


# 4. Odd folder entries vanished from the output and the counts.
def test_every_folder_entry_gets_a_result_or_a_named_failure(tmp_path, capsys, monkeypatch):
    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(root / "plain.png")
    Image.new("RGB", (64, 48)).save(root / "locked" / "hidden.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (64, 48)).save(elsewhere / "linked.png")
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    os.symlink(root / "self.png", root / "self.png")
    os.symlink(elsewhere, root / "linked-folder")
    os.symlink(root, root / "loop")
    scandir = os.scandir

    def locked(path="."):  # root reads any folder, so a denied listing is simulated
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    assert main(["predict", str(root), "--json", "--no-progress"]) == 1
    doc = json.loads(capsys.readouterr().out)
    by_name = {os.path.basename(r["file"]): r for r in doc["results"]}
    assert by_name["plain.png"]["faces"] == [] and "error" not in by_name["plain.png"]
    assert by_name["linked.png"]["faces"] == []  # a linked folder is read
    assert "broken symbolic link" in by_name["dangling.png"]["error"]
    assert "points to itself" in by_name["self.png"]["error"]
    assert "already read" in by_name["loop"]["error"]
    assert "permission denied" in by_name["locked"]["error"]
    assert doc["summary"] == {"files": 6, "faces": 0, "failed": 4, "skipped_not_images": 0}
    assert main(["predict", str(root / "locked"), "--no-progress"]) == 1
    assert "permission denied" in capsys.readouterr().err


# 5. Bad query values and wrong methods answered FastAPI's {"detail": ...}.
def test_one_error_shape_everywhere(predictor):
    client = TestClient(create_app(predictor))
    for method, path, status in [
        ("post", "/v1/predict?explain=maybe", 422),
        ("post", "/v1/predict?detect=garbage", 422),
        ("get", "/v1/predict", 405),
        ("delete", "/healthz", 405),
        ("get", "/nowhere", 404),
    ]:
        r = getattr(client, method)(path)
        assert r.status_code == status and set(r.json()) == {"error"}, (path, r.text)
    assert "explain" in client.post("/v1/predict?explain=maybe").json()["error"]


# 6. Every client that disconnected mid-upload left a traceback in the log.
def test_a_client_that_disconnects_mid_upload_is_one_log_line(predictor, caplog, capfd):
    with caplog.at_level(logging.WARNING, logger="faceattr.serve"), running(create_app(predictor)) as url:
        conn = slow_client(url)
        conn.sendall(b"\x00" * 1000)
        time.sleep(0.2)
        conn.close()
        time.sleep(0.5)
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
    ours = [r for r in caplog.records if r.name == "faceattr.serve"]
    assert len(ours) == 1 and "disconnected during its upload" in ours[0].getMessage() and ours[0].exc_info is None
    assert "Traceback" not in capfd.readouterr().err  # uvicorn logs an unhandled error with one


# 7. `faceattr prepare` on a file with no line breaks read the whole "line" first.
def test_prepare_refuses_an_overlong_line_early(tmp_path, capsys):
    blob = tmp_path / "blob.csv"
    with open(blob, "wb") as f:
        f.truncate(50_000_000)  # 50 MB of zeros, no line break (sparse: no disk used)
    assert main(["prepare", str(blob), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "a line longer than 1,000,000 characters" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# 8. Any web page could make the server work, any Host was answered, /docs called a CDN.
def test_host_origin_and_token_checks(predictor, astronaut_jpeg, monkeypatch, capsys):
    local = TestClient(create_app(predictor, allowed_hosts={"127.0.0.1", "localhost"}), base_url="http://127.0.0.1")
    assert local.get("/v1/model").status_code == 200
    r = local.get("/v1/model", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and "Host" in r.json()["error"]
    for content_type in ("text/plain", "image/jpeg"):  # a form post from a page elsewhere
        r = local.post(
            "/v1/predict",
            content=astronaut_jpeg,
            headers={"Origin": "http://attacker.example", "Content-Type": content_type},
        )
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    same = local.post("/v1/predict", content=astronaut_jpeg, headers={"Origin": "http://127.0.0.1"})
    assert same.status_code == 200
    other_port = local.post("/v1/predict", content=astronaut_jpeg, headers={"Origin": "http://127.0.0.1:3000"})
    assert other_port.status_code == 403  # another local service's page is another origin
    assert local.get("/v1/model", headers={"Host": "LOCALHOST"}).status_code == 200

    guarded = TestClient(create_app(predictor, token="s3cret"))
    assert guarded.get("/v1/model").status_code == 401
    assert guarded.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert guarded.get("/v1/model", headers={"Authorization": "bearer s3cret"}).status_code == 200
    assert guarded.get("/healthz").status_code == 200

    monkeypatch.delenv("FACEATTR_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token" in err and "\n" not in err


def test_docs_are_served_from_the_package(predictor):
    client = TestClient(create_app(predictor))
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


# 9. Small ones: a server setting named to API clients; negative box coordinates.
def test_limit_messages_name_no_server_setting_and_boxes_stay_inside_the_photo(predictor, capsys, tmp_path):
    client = TestClient(create_app(predictor, Limits(max_pixels=100_000)))
    r = client.post("/v1/predict", content=png_bytes(Image.new("RGB", (400, 300))))
    assert r.status_code == 413 and "PIL" not in r.json()["error"] and "MAX_IMAGE_PIXELS" not in r.json()["error"]
    edge = Image.fromarray(skdata.astronaut()).crop((150, 0, 512, 512))  # the face touches the left edge
    faces = predictor.predict(edge)
    assert faces and all(0 <= v for f in faces for v in f.box)
    assert all(f.box[2] <= edge.size[0] and f.box[3] <= edge.size[1] for f in faces)
    path = tmp_path / "edge.png"
    edge.save(path)
    assert main(["predict", str(path), "--no-progress"]) == 0
    assert "(-" not in capsys.readouterr().out


def test_eight_parallel_uploads_of_a_small_file_that_decodes_huge_are_all_answered(predictor):
    """The short version of bench/serve_abuse.py's worst case: a tiny 16-bit PNG of many
    pixels, eight at once, against a tight budget: each is refused or answered, none fails."""
    wide = png_bytes(Image.fromarray(np.zeros((2000, 2500), np.uint16)))  # 35 MB to decode
    assert len(wide) < 100_000
    limits = Limits(request_bytes=40_000_000, server_bytes=80_000_000, memory_wait=5.0)
    with running(create_app(predictor, limits)) as url:
        statuses: list[int] = []

        def send():
            statuses.append(requests.post(url + "/v1/predict", data=wide, timeout=30).status_code)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(statuses) == 8 and set(statuses) <= {200, 503} and statuses.count(200) >= 2
