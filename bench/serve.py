"""A small load check of `faceattr serve` on loopback, one run: starts the server as its own
process (the shipped model, default options), then sends the same photo (scikit-image's
astronaut, 512x512 JPEG, one face) from 1 and from 4 concurrent clients, and once more with
explain=true from 1 client. Each phase is bounded by a request count and a time limit.
Writes results/bench_serve.json.

python bench/serve.py --out results/bench_serve.json
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image
from skimage import data as skdata

from faceattr.atomic import write_json
from faceattr.serve import free_port


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            proc.log.seek(0)
            tail = proc.log.read()[-2000:]
            raise SystemExit(f"the server exited with code {proc.returncode}:\n{tail}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return time.monotonic() - start
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /healthz within {timeout} s")


def phase(url: str, body: bytes, clients: int, requests_per_client: int, time_limit: float, explain: bool) -> dict:
    """``clients`` threads, each with its own connection, each sending up to
    ``requests_per_client`` requests one after another, all stopping at ``time_limit`` s."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}  # HTTP status or exception name -> count
    lock = threading.Lock()
    stop_at = time.monotonic() + time_limit
    target = f"{url}/v1/predict?explain={'true' if explain else 'false'}"

    def client() -> None:
        with requests.Session() as session:
            for _ in range(requests_per_client):
                if time.monotonic() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    r = session.post(target, data=body, headers={"content-type": "image/jpeg"}, timeout=60)
                    outcome = str(r.status_code)
                except requests.RequestException as e:  # counted, never lost with its thread
                    outcome = type(e).__name__
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    statuses[outcome] = statuses.get(outcome, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    return {
        "clients": clients,
        "explain": explain,
        "requests": len(ms),
        "statuses": dict(sorted(statuses.items())),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(ms) / wall, 2),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1),
        "max_ms": round(ms[-1], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100, help="requests per client per phase (default 100)")
    ap.add_argument("--time-limit", type=float, default=60, help="seconds per phase at most (default 60)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_serve.json"))
    args = ap.parse_args()

    buffer = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buffer, format="JPEG", quality=92)
    body = buffer.getvalue()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "faceattr", "serve", "--port", str(port)]
    # The server's log goes to a file, so a long run cannot fill (and stall on) a pipe.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    try:
        startup = wait_healthy(url, proc)
        print(f"server up in {startup:.1f} s", file=sys.stderr)
        phase(url, body, 1, 5, 30, False)  # warm-up: first-call allocations, thread pool
        phases = []
        for clients, explain in ((1, False), (4, False), (1, True)):
            print(f"{clients} client(s), explain={explain} ...", file=sys.stderr)
            phases.append(phase(url, body, clients, args.requests, args.time_limit, explain))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "server": "faceattr serve (uvicorn, one process, shipped model, torch backend, CPU), own process",
        "client": "python requests, one session (keep-alive) per client thread, same machine, loopback",
        "photo": "scikit-image astronaut, 512x512 JPEG, 1 face, raw body",
        "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "startup_seconds": round(startup, 1),
        "phases": phases,
    }
    write_json(result, args.out)
    for p in phases:
        print(
            f"{p['clients']} client(s){' explain' if p['explain'] else ''}: {p['requests_per_s']} req/s, "
            f"p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms, statuses {p['statuses']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
