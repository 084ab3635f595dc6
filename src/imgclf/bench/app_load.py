"""Load on app.py: for 1, 8, 32 and 128 concurrent clients, with batching across requests off and on:
requests/s, p50/p99 latency of the answered requests, the server's CPU time per image (user + system of the
server and its worker processes, from /proc), and how many requests were refused with 503. Starts `app.py`
as a real server on a free port, posts one image per request (POST /predict, multipart) over keep-alive
connections; a client told 503 waits its Retry-After, as a well-behaved client does.

    uv run python -m imgclf.bench.app_load --model model.onnx --image some.png
    uv run python -m imgclf.bench.app_load --model model.onnx --workers 2 --batching on
    uv run python -m imgclf.bench.app_load --model model.onnx     # a grey image at 28 x 28
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[3]  # the checkout, where app.py lives


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of the server and its worker processes: per image, it depends far less on the load
    from other processes than wall-clock latency does."""
    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"image.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def json_body(image: bytes) -> tuple[bytes, str]:
    """The same image as base64 JSON, the body LitServe's examples take (bench/litserve_app.py)."""
    return (json.dumps({"images": [{"filename": "image.png", "data": base64.b64encode(image).decode()}]}).encode(),
            "application/json")


def client_loop(port: int, body: bytes, content_type: str, count: int, latencies: list[float],
                refused: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/predict", body, {"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        if response.status == 503:
            refused.append(1)
            time.sleep(float(response.getheader("Retry-After", "1")))
            continue
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        latencies.append(time.perf_counter() - start)
    connection.close()


def load(port: int, body: bytes, content_type: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    refused: list[int] = []
    per_client = max(5, requests // clients)
    threads = [threading.Thread(target=client_loop, args=(port, body, content_type, per_client, latencies, refused))
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {"clients": clients, "requests": len(ms), "requests_per_s": len(ms) / elapsed,
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "refused_503": len(refused)}


def start_server(app: Path, model: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(app), "--model", model, "--port", str(port), *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            sys.exit(f"app.py exited: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            sys.exit("app.py did not start within 120 s")
        time.sleep(0.2)


def run_mode(args: argparse.Namespace, batching: bool, body: bytes, content_type: str) -> list[dict]:
    extra = (["--workers", str(args.workers)] if args.workers > 1 else []) + args.server_arg
    if batching:
        extra += ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    server, port = start_server(args.app, args.model, extra)
    rows = []
    try:
        load(port, body, content_type, 1, 50)  # warm-up: first requests allocate buffers
        for clients in args.clients:
            cpu_before = server_cpu_seconds(server.pid)
            row = load(port, body, content_type, clients, args.requests)
            # One image per request: per request and per image are the same here.
            row["server_cpu_ms_per_image"] = (server_cpu_seconds(server.pid) - cpu_before) * 1000 / row["requests"]
            row["batching"] = "on" if batching else "off"
            row["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
            rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx")
    parser.add_argument("--image", type=Path, help="the image every request posts (default: grey, 28 x 28)")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level (at least 5 a client)")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128])
    parser.add_argument("--batching", choices=["off", "on", "both"], default="both")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="passed on to the server, e.g. --server-arg=--max-inflight=8")
    parser.add_argument("--json", action="store_true", help="post base64 JSON instead of multipart (LitServe)")
    parser.add_argument("--app", type=Path, default=REPO / "app.py", help="the server script (to compare versions)")
    args = parser.parse_args()
    if args.image:
        image = args.image.read_bytes()
    else:
        buffer = io.BytesIO()
        Image.fromarray(np.full((28, 28), 128, np.uint8)).save(buffer, format="PNG")
        image = buffer.getvalue()
    body, content_type = json_body(image) if args.json else multipart(image)
    rows = []
    for batching in {"off": [False], "on": [True], "both": [False, True]}[args.batching]:
        rows += run_mode(args, batching, body, content_type)
    print("batching  clients  requests  req/s   p50 ms   p99 ms  server CPU ms/image   503s  load avg")
    for r in rows:
        print(f"{r['batching']:>8}  {r['clients']:>7}  {r['requests']:>8}  {r['requests_per_s']:6.1f}  "
              f"{r['p50_ms']:7.2f}  {r['p99_ms']:7.2f}  {r['server_cpu_ms_per_image']:19.2f}  "
              f"{r['refused_503']:5d}  {r['loadavg']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
