"""What a model server adds around the model: metrics, back-pressure, batching across requests.

- Metrics: prometheus-client, the names BentoML and LitServe expose (requests by route and status, a latency
  histogram, requests in flight, images classified, batch sizes, the model's sha256). With several worker
  processes every worker writes to PROMETHEUS_MULTIPROC_DIR and /metrics sums them (prometheus-client's
  multiprocess mode), so any worker's answer covers the whole server.
- Back-pressure: a bound on /predict requests in flight per worker; beyond it a 503 with Retry-After at
  once, before the body is read, so an overload is refused early instead of growing every latency.
- Batching (opt-in): images from concurrent requests wait up to `max_wait_ms` to run as one ONNX Runtime
  call of at most `max_batch_size` images; one thread runs the model, so batches do not compete for cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = {"/", "/predict", "/model", "/health", "/ready", "/metrics"}  # other paths count as "other"


@dataclass(frozen=True)
class ServeOptions:
    max_inflight: int = 64  # /predict requests per worker; at ~2 ms each a full queue clears in ~0.1 s
    timeout_s: float = 30.0  # LitServe's default request time-out
    max_batch_size: int = 0  # 0: no batching across requests
    max_wait_ms: float = 5.0
    retry_after_s: int = 1

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


class Metrics:
    def __init__(self, model_file: str, sha256: str) -> None:
        # Own registry per app: tests create several apps in one process.
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgclf_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("imgclf_request_duration_seconds", "HTTP request latency", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=r)
        self.inflight = Gauge("imgclf_requests_in_flight", "/predict requests being served", registry=r,
                              multiprocess_mode="livesum")
        self.images = Counter("imgclf_images", "Images classified", registry=r)
        self.file_errors = Counter("imgclf_file_errors", "Uploaded files answered with an error", registry=r)
        self.rejected = Counter("imgclf_rejected", "/predict requests refused with 503 (too many in flight)",
                                registry=r)
        self.batch_size = Histogram("imgclf_batch_size", "Images per ONNX Runtime run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        # An info metric as a gauge: prometheus-client's Info has no multiprocess mode.
        Gauge("imgclf_model_info", "The served model file", ["file", "sha256"], registry=r,
              multiprocess_mode="max").labels(model_file, sha256).set(1)

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def json_answer(status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    body = json.dumps({"error": message}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": body}


class ServingMiddleware:
    """Plain ASGI (no BaseHTTPMiddleware, whose task per request costs CPU): counts every request by route
    and status, times it, and refuses /predict beyond `max_inflight` with a 503."""

    def __init__(self, app, metrics: Metrics, options: ServeOptions) -> None:
        self.app, self.metrics, self.options = app, metrics, options
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        predict = route == "/predict"
        try:
            if predict and self.inflight >= self.options.max_inflight:
                self.metrics.rejected.inc()
                for message in json_answer(503, f"The server is at its limit of {self.options.max_inflight} "
                                                f"requests in flight; retry in {self.options.retry_after_s} s.",
                                           [(b"retry-after", str(self.options.retry_after_s).encode())]):
                    await send_status(message)
                return
            if predict:
                self.inflight += 1
                self.metrics.inflight.inc()
            try:
                await self.app(scope, receive, send_status)
            finally:
                if predict:
                    self.inflight -= 1
                    self.metrics.inflight.dec()
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


class Batcher:
    """Images from concurrent requests, run together: up to `max_batch_size` images, waiting at most
    `max_wait_ms` after the first for others to join."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], options: ServeOptions, metrics: Metrics) -> None:
        self.run, self.options, self.metrics = run, options, metrics
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="imgclf-batch")
        self.task: asyncio.Task | None = None

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.get_loop() is not loop:  # started in the serving loop, on first use
            # (a TestClient used without `with` runs each request in a loop of its own)
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self.loop())
        future = loop.create_future()
        await self.queue.put((images, future))
        return await future

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            count = len(pending[0][0])
            deadline = loop.time() + self.options.max_wait_ms / 1000
            while count < self.options.max_batch_size:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                pending.append(item)
                count += len(item[0])
            pending = [(images, future) for images, future in pending if not future.cancelled()]  # timed out
            if not pending:
                continue
            batch = np.concatenate([images for images, _ in pending])
            self.metrics.batch_size.observe(len(batch))
            try:
                probs = await loop.run_in_executor(self.executor, self.run, batch)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request, which answers it
                for _, future in pending:
                    if not future.done():
                        future.set_exception(e)
                continue
            offset = 0
            for images, future in pending:
                if not future.done():
                    future.set_result(probs[offset:offset + len(images)])
                offset += len(images)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False)
