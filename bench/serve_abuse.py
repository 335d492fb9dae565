"""`faceattr serve` under abuse, the long versions of tests/test_hostile.py, against a server in
its own process on 127.0.0.1 (the shipped model, default settings):

1. unloaded: one good client, sequential requests -> p50/p95 latency;
2. slow clients: 8 connections that announce a 1 MB upload and send one byte every few
   seconds (reconnecting when refused) for --slow-seconds, while a good client keeps asking;
3. worst-case uploads: 8 parallel uploads of a ~100 KB 16-bit PNG of 6000x6600 pixels, for
   --rounds rounds -> statuses, peak RSS of the server (VmHWM) and its RSS afterwards;
4. mixed: 16 clients for --mixed-seconds, each cycling good photos, corrupt bytes, text, an
   oversized body, bad query values and disconnects -> statuses (no 5xx but 503 allowed).

Writes results/serve_abuse.json.

python bench/serve_abuse.py --out results/serve_abuse.json
"""

from __future__ import annotations

import argparse
import io
import itertools
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from skimage import data as skdata

from faceattr.atomic import write_json
from faceattr.serve import Limits, free_port

TARGETS = {"p95_ratio_under_slow_clients": 3.0, "peak_rss_gb": 2.5}


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def memory(pid: int) -> dict[str, float]:
    """Resident and peak-resident memory of a process, GB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1e6, 3)
    return {"rss_gb": fields["VmRSS"], "peak_rss_gb": fields["VmHWM"]}


def latencies(url: str, photo: bytes, n: int) -> tuple[list[float], Counter]:
    times, statuses = [], Counter()
    for _ in range(n):
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/predict", data=photo, timeout=60)
        times.append(time.perf_counter() - t0)
        statuses[r.status_code] += 1
    return times, statuses


def summary(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
    }


def slow_clients(url: str, n: int, seconds: float, interval: float, stop: threading.Event) -> Counter:
    """n connections trickling an upload; each reconnects when the server answers it."""
    host, port = url.removeprefix("http://").split(":")
    answers: Counter = Counter()

    def one() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=interval + 60) as conn:
                    conn.sendall(
                        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                        "Content-Length: 1000000\r\n\r\n".encode()
                        + b"\xff"
                    )
                    conn.settimeout(interval)
                    while not stop.is_set():
                        try:
                            reply = conn.recv(4096)
                        except TimeoutError:
                            conn.sendall(b"\x00")  # one more byte, then wait again
                            continue
                        answers[reply.split(b" ", 2)[1].decode() if reply else "closed"] += 1
                        break
            except OSError as e:
                answers[type(e).__name__] += 1
                time.sleep(0.5)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow-seconds", type=float, default=60.0)
    ap.add_argument("--slow-interval", type=float, default=4.0, help="seconds between a slow client's bytes")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of 8 worst-case uploads")
    ap.add_argument("--mixed-seconds", type=float, default=30.0)
    ap.add_argument("--unloaded", type=int, default=40, help="good requests for the unloaded latency")
    ap.add_argument("--out", type=Path, default=Path("results/serve_abuse.json"))
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "faceattr", "serve", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log_lines: list[str] = []
    threading.Thread(target=lambda: log_lines.extend(server.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start:\n" + "".join(log_lines))
            time.sleep(0.2)
        result = run(url, server.pid, args)
    finally:
        server.terminate()
        server.wait(30)
    tracebacks = sum("Traceback" in line for line in log_lines)
    result["server_log"] = {"lines": len(log_lines), "tracebacks": tracebacks}
    result["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    write_json(result, args.out)
    print(
        f"unloaded p95 {result['unloaded']['p95_ms']} ms; under slow clients p95 "
        f"{result['slow_clients']['good']['p95_ms']} ms; worst-case peak RSS "
        f"{result['worst_case_uploads']['peak_rss_gb']} GB; tracebacks {tracebacks}; wrote {args.out}"
    )


def run(url: str, pid: int, args) -> dict:
    photo = encode(Image.fromarray(skdata.astronaut()), "JPEG", quality=90)
    out: dict = {"server": "faceattr serve, default settings (ONNX Runtime), own process", "limits": vars(Limits())}
    out["rss_at_start_gb"] = memory(pid)["rss_gb"]
    latencies(url, photo, 3)  # warm-up
    times, statuses = latencies(url, photo, args.unloaded)
    out["unloaded"] = {**summary(times), "statuses": dict(statuses)}

    print("slow clients ...", file=sys.stderr)
    stop = threading.Event()
    answers = slow_clients(url, 8, args.slow_seconds, args.slow_interval, stop)
    time.sleep(1.0)
    good_times, good_status, ready = [], Counter(), Counter()
    end = time.monotonic() + args.slow_seconds
    while time.monotonic() < end:
        t, s = latencies(url, photo, 1)
        good_times += t
        good_status.update(s)
        ready[requests.get(url + "/readyz", timeout=10).status_code] += 1
    stop.set()
    good = summary(good_times)
    out["slow_clients"] = {
        "clients": 8,
        "seconds": args.slow_seconds,
        "byte_every_s": args.slow_interval,
        "good": {**good, "statuses": dict(good_status)},
        "slow_answers": dict(answers),
        "readyz": dict(ready),
        "p95_ratio": round(good["p95_ms"] / out["unloaded"]["p95_ms"], 2),
    }

    print("worst-case uploads ...", file=sys.stderr)
    wide = np.tile(np.arange(6000, dtype=np.uint16)[None, :] % 7, (6600, 1))  # a few values: tiny PNG
    worst = encode(Image.fromarray(wide), "PNG", optimize=True)
    statuses_w: Counter = Counter()
    seconds = []

    def send() -> None:
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/predict", data=worst, timeout=300)
        seconds.append(time.perf_counter() - t0)
        statuses_w[r.status_code] += 1

    for _ in range(args.rounds):
        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    time.sleep(2.0)
    mem = memory(pid)
    out["worst_case_uploads"] = {
        "file_bytes": len(worst),
        "image": "6000x6600 16-bit gray PNG",
        "parallel": 8,
        "rounds": args.rounds,
        "statuses": dict(statuses_w),
        "seconds_p50": round(statistics.median(seconds), 2),
        "peak_rss_gb": mem["peak_rss_gb"],
        "rss_after_gb": mem["rss_gb"],
    }

    print("mixed clients ...", file=sys.stderr)
    bad = {
        "good": ("/v1/predict", photo),
        "corrupt": ("/v1/predict", photo[: len(photo) // 3]),
        "text": ("/v1/predict", b"hello, this is not a photo"),
        "oversize": ("/v1/predict", b"\xff" * 11_000_000),
        "bad_query": ("/v1/predict?explain=maybe", photo),
        "empty": ("/v1/predict", b""),
    }
    mixed: dict[str, Counter] = {k: Counter() for k in bad}
    end = time.monotonic() + args.mixed_seconds

    def client(k: int) -> None:
        for kind in itertools.islice(itertools.cycle(bad), k, None):
            if time.monotonic() > end:
                return
            path, body = bad[kind]
            try:
                mixed[kind][requests.post(url + path, data=body, timeout=60).status_code] += 1
            except requests.RequestException as e:
                mixed[kind][type(e).__name__] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_errors = sum(n for c in mixed.values() for s, n in c.items() if isinstance(s, int) and s >= 500 and s != 503)
    out["mixed"] = {
        "clients": 16,
        "seconds": args.mixed_seconds,
        "statuses": {k: dict(v) for k, v in mixed.items()},
        "server_errors": server_errors,
    }
    out["rss_at_end_gb"] = memory(pid)["rss_gb"]
    out["targets"] = {
        "p95_ratio_under_slow_clients": {
            "want": f"<= {TARGETS['p95_ratio_under_slow_clients']}",
            "got": out["slow_clients"]["p95_ratio"],
        },
        "peak_rss_gb": {"want": f"<= {TARGETS['peak_rss_gb']}", "got": out["worst_case_uploads"]["peak_rss_gb"]},
        "good_requests_answered_under_slow_clients": set(good_status) == {200},
        "no_server_errors": server_errors == 0,
    }
    out["targets"]["met"] = (
        out["slow_clients"]["p95_ratio"] <= TARGETS["p95_ratio_under_slow_clients"]
        and out["worst_case_uploads"]["peak_rss_gb"] <= TARGETS["peak_rss_gb"]
        and out["targets"]["good_requests_answered_under_slow_clients"]
        and server_errors == 0
    )
    return out


if __name__ == "__main__":
    main()
