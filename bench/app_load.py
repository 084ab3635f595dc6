"""Load on app.py: requests/s and p50/p99 latency with 1 and 8 concurrent clients, server memory (RSS)
before and after each 1,000 requests. Starts `app.py` as a real server on a free port, posts one image per
request (POST /predict, multipart) over keep-alive connections, then stops it.

    uv run python bench/app_load.py --model model.onnx --image some.png
    uv run python bench/app_load.py --model model.onnx            # a grey image at the model's input size
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server so far: per request, it depends far less on the load from other
    processes than wall-clock latency does."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"image.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client_loop(port: int, body: bytes, content_type: str, count: int, latencies: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/predict", body, {"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        latencies.append(time.perf_counter() - start)
    connection.close()


def load(port: int, body: bytes, content_type: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    threads = [threading.Thread(target=client_loop, args=(port, body, content_type, requests // clients, latencies))
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {"clients": clients, "requests": len(ms), "requests_per_s": len(ms) / elapsed,
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx")
    parser.add_argument("--image", type=Path, help="the image every request posts (default: grey, input size)")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    args = parser.parse_args()
    if args.image:
        image = args.image.read_bytes()
    else:
        buffer = io.BytesIO()
        Image.fromarray(np.full((28, 28), 128, np.uint8)).save(buffer, format="PNG")
        image = buffer.getvalue()
    body, content_type = multipart(image)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", args.model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                sys.exit(f"app.py exited: {server.stderr.read()}")
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("app.py did not start within 60 s")
                time.sleep(0.2)
        at_start = rss_mib(server.pid)
        load(port, body, content_type, 1, 50)  # warm-up: first requests allocate buffers
        results = {"rss_mib_at_start": at_start, "rss_mib_after_warmup": rss_mib(server.pid), "load": []}
        for clients in (1, 8):
            cpu_before = cpu_seconds(server.pid)
            row = load(port, body, content_type, clients, args.requests)
            row["server_cpu_ms_per_request"] = (cpu_seconds(server.pid) - cpu_before) * 1000 / row["requests"]
            row["rss_mib_after"] = rss_mib(server.pid)
            results["load"].append(row)
        results["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"server RSS at start {results['rss_mib_at_start']:.1f} MiB, after 50 warm-up requests "
          f"{results['rss_mib_after_warmup']:.1f} MiB")
    print("clients  requests  req/s   p50 ms  p99 ms  server CPU ms/request  RSS after (MiB)")
    for r in results["load"]:
        print(f"{r['clients']:>7}  {r['requests']:>8}  {r['requests_per_s']:6.1f}  {r['p50_ms']:6.2f}  "
              f"{r['p99_ms']:6.2f}  {r['server_cpu_ms_per_request']:21.2f}  {r['rss_mib_after']:.1f}")
    print(f"load average at the end: {' '.join(results['loadavg'])}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
