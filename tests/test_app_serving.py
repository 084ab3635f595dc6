"""app.py under load: per-file answers, limits counted as bytes and pixels arrive, /metrics and /ready,
503 back-pressure, 504 time-out, batching across requests, worker processes and a graceful SIGTERM."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from fastapi.testclient import TestClient
from PIL import Image

from imgclf.data.readers import read_digits
from imgclf.deploy import app as app_module
from imgclf.deploy import uploads
from imgclf.deploy.app import create_app
from imgclf.deploy.predictor import Predictor
from imgclf.deploy.serving import ServeOptions

# Every test here serves the session's trained digits model (conftest.digits_onnx trains it).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pngs")
    images = read_digits(train=False).images[:8, 0].numpy()
    paths = [folder / f"digit_{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in items]


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text format (labels included in `name`)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics:\n{text}"
    return float(match.group(1))


@pytest.fixture
def server(digits_onnx):
    """A real uvicorn server in a thread of this process, for the app made with the options given."""
    import uvicorn

    started = []

    def start(options: ServeOptions) -> str:
        server = uvicorn.Server(uvicorn.Config(create_app(digits_onnx, options), host="127.0.0.1", port=0,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return server.servers[0].sockets[0].getsockname()[1]

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


def post(port: int, paths: list[Path], results: list | None = None) -> tuple[int, dict, dict]:
    """POST /predict over a plain connection; appends (status, headers, body) to `results` when given."""
    import json
    import uuid

    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{p.name}\"\r\n"
                    f"Content-Type: image/png\r\n\r\n".encode() + p.read_bytes() + b"\r\n" for p in paths)
    body += f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    answer = (response.status, dict(response.getheaders()), json.loads(response.read()))
    if results is not None:
        results.append(answer)
    return answer


def test_each_file_gets_its_own_answer_and_a_bad_one_costs_the_others_nothing(digits_onnx, digit_pngs):
    client = TestClient(create_app(digits_onnx))
    good = [p.read_bytes() for p in digit_pngs[:3]]
    response = client.post("/predict", data={"top_k": "2"}, files=files(
        ("a.png", good[0]), ("notes.txt", b"hello, not a picture"), ("b.png", good[1]), ("empty.png", b""),
        ("cut.png", good[2][: len(good[2]) // 2]), ("<b>c</b>.png", good[2])))
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["filename"] for a in answers] == ["a.png", "notes.txt", "b.png", "empty.png", "cut.png", "<b>c</b>.png"]
    expected = Predictor(digits_onnx).predict([str(p) for p in digit_pngs[:3]], 2)
    for answer, want in zip([answers[0], answers[2], answers[5]], expected, strict=True):
        assert [c["class"] for c in answer["top_k"]] == [name for name, _ in want.top_k]
        np.testing.assert_allclose([c["probability"] for c in answer["top_k"]], [p for _, p in want.top_k],
                                   rtol=1e-6)
    assert answers[1]["error"].startswith("notes.txt is not an image")
    assert answers[3]["error"].startswith("empty.png is empty")
    assert answers[4]["error"].startswith("cut.png")
    for answer in answers:  # no server path, temp file or object address in any answer
        assert "/tmp" not in str(answer) and "BytesIO" not in str(answer) and "Traceback" not in str(answer)


def test_metrics_health_and_ready(digits_onnx, digit_pngs):
    client = TestClient(create_app(digits_onnx))
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert (ready["status"], ready["model"]) == ("ready", "model.onnx") and ready["warm_up_ms"] > 0
    client.post("/predict", files=files(("a.png", digit_pngs[0].read_bytes()), ("x.txt", b"text")))
    client.post("/predict", files=files(("a.png", digit_pngs[0].read_bytes())), data={"top_k": "99"})
    text = client.get("/metrics").text
    assert metric(text, 'imgclf_requests_total{route="/predict",status="200"}') == 1
    assert metric(text, 'imgclf_requests_total{route="/predict",status="422"}') == 1
    assert metric(text, "imgclf_images_total") == 1 and metric(text, "imgclf_file_errors_total") == 1
    assert metric(text, 'imgclf_request_duration_seconds_count{route="/predict"}') == 2
    assert metric(text, "imgclf_batch_size_sum") == 1 and metric(text, "imgclf_requests_in_flight") == 0
    sha = client.get("/model").json()["sha256"]
    assert metric(text, f'imgclf_model_info{{file="model.onnx",sha256="{sha}"}}') == 1


def test_malformed_bodies_answer_error_not_detail(digits_onnx, monkeypatch):
    client = TestClient(create_app(digits_onnx))
    cases = {
        "garbage": (b"garbage", "multipart/form-data; boundary=xyz", 400, "Malformed multipart"),
        "cut short": (b"--xyz\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\nab",
                      "multipart/form-data; boundary=xyz", 400, "Malformed multipart"),
        "no boundary": (b"x", "multipart/form-data", 400, "boundary"),
        "json": (b"{}", "application/json", 415, "multipart/form-data"),
    }
    for name, (body, content_type, status, words) in cases.items():
        response = client.post("/predict", content=body, headers={"content-type": content_type})
        assert response.status_code == status, (name, response.text)
        assert set(response.json()) == {"error"} and words in response.json()["error"], (name, response.json())
    assert client.get("/no/such/page").json() == {"error": "Not Found"}
    monkeypatch.setattr(uploads, "MAX_IMAGES", 2)
    response = client.post("/predict", files=files(*[("a.png", b"x")] * 3))
    assert response.status_code == 413 and "at most 2" in response.json()["error"]
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json()


def test_pixels_past_the_request_budget_are_refused_from_the_header(digits_onnx, digit_pngs, tmp_path,
                                                                     monkeypatch):
    client = TestClient(create_app(digits_onnx))
    decoded = []
    real_decode = app_module.decode_image
    monkeypatch.setattr(app_module, "decode_image", lambda file, mode: decoded.append(file) or real_decode(file, mode))
    huge = tmp_path / "huge.png"  # 9400 x 9400: 88 megapixels, a few hundred KB on the wire
    Image.new("L", (9400, 9400)).save(huge)
    assert huge.stat().st_size < 1_000_000
    small = digit_pngs[0].read_bytes()
    response = client.post("/predict", files=files(("small.png", small), *[(f"huge{i}.png", huge.read_bytes())
                                                                          for i in range(3)]))
    answers = response.json()["predictions"]
    assert response.status_code == 200 and "top_k" in answers[0]
    for answer in answers[1:]:
        assert "9400 x 9400" in answer["error"] and "decoded pixels" in answer["error"]
    assert len(decoded) == 1  # the small file only: the huge ones were never decoded
    monkeypatch.setattr(app_module, "MAX_PIXELS_PER_REQUEST", 3 * 64)  # three 8 x 8 digits
    answers = client.post("/predict", files=files(*[(p.name, p.read_bytes()) for p in digit_pngs[:5]])).json()
    assert ["top_k" in a for a in answers["predictions"]] == [True, True, True, False, False]


def test_a_chunked_upload_is_refused_as_its_bytes_pass_the_limit(server, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_IMAGES", 2)
    monkeypatch.setattr(uploads, "MAX_IMAGE_BYTES", 256 * 1024)  # a request limit of about 0.6 MB
    port = server(ServeOptions())
    total, sent = 200 * 2**20, 0
    chunk = b"\0" * 65536
    answered: dict = {}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        def read_answer() -> None:
            answered["text"] = connection.recv(65536).decode("latin-1")
            answered["sent"] = sent  # how far the upload had got when the answer came

        reader = threading.Thread(target=read_answer, daemon=True)
        reader.start()
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n")
        part = b"--xyz\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n"
        connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        try:  # without a Content-Length: only counting the bytes as they arrive can stop this early
            while sent < total and reader.is_alive():
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        reader.join(timeout=30)
    assert answered["text"].startswith("HTTP/1.1 413"), answered["text"][:200]
    assert '{"error":' in answered["text"]
    assert answered["sent"] < total / 4, f"the server answered after {answered['sent']} bytes"


def test_overload_gets_503_with_retry_after_at_once(server, digit_pngs):
    # A batch window of 2 s keeps the first request in flight while the second arrives.
    port = server(ServeOptions(max_inflight=1, max_batch_size=64, max_wait_ms=2000))
    results: list = []
    first = threading.Thread(target=post, args=(port, digit_pngs[:1], results))
    first.start()
    time.sleep(0.5)
    status, headers, body = post(port, digit_pngs[1:2])
    assert status == 503 and headers.get("retry-after") == "1" and "in flight" in body["error"]
    assert first.is_alive()  # refused at once, not after waiting for the first
    first.join(timeout=30)
    assert results[0][0] == 200


def test_a_request_past_its_timeout_gets_504(digits_onnx, digit_pngs):
    client = TestClient(create_app(digits_onnx, ServeOptions(timeout_s=0.3, max_batch_size=64, max_wait_ms=3000)))
    response = client.post("/predict", files=files(("a.png", digit_pngs[0].read_bytes())))
    assert response.status_code == 504 and "time-out of 0.3 s" in response.json()["error"]


def test_batching_app_answers_each_request_of_a_test_client(digits_onnx, digit_pngs):
    # A TestClient used without `with` runs each request in an event loop of its own: the batcher follows.
    client = TestClient(create_app(digits_onnx, ServeOptions(timeout_s=10, max_batch_size=8, max_wait_ms=5)))
    for p in digit_pngs[:3]:
        assert client.post("/predict", files=files((p.name, p.read_bytes()))).status_code == 200


def test_batching_runs_concurrent_requests_as_one_model_run(server, digits_onnx, digit_pngs):
    port = server(ServeOptions(max_batch_size=8, max_wait_ms=500))
    results: list = []
    threads = [threading.Thread(target=post, args=(port, [p], results)) for p in digit_pngs[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(status for status, _, _ in results) == [200] * 4
    expected = {p.name: pred.top_k[0][0] for p, pred in zip(
        digit_pngs[:4], Predictor(digits_onnx).predict([str(p) for p in digit_pngs[:4]], 1), strict=True)}
    for _, _, body in results:  # each request gets its own image's answer back from the shared batch
        answer = body["predictions"][0]
        assert answer["top_k"][0]["class"] == expected[answer["filename"]]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    assert metric(text, "imgclf_batch_size_sum") == 4
    assert metric(text, "imgclf_batch_size_count") < 4  # fewer model runs than requests


def start_app(model: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(model), "--port", str(port),
                                *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("app.py did not become ready in 120 s")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_the_request_in_flight_and_exits_0(digits_onnx, digit_pngs, workers):
    process, port = start_app(digits_onnx, "--workers", workers, "--max-batch-size", "64", "--max-wait-ms", "2000")
    try:
        if workers == "2":  # several requests, whichever worker took them: /metrics sums every worker
            for p in digit_pngs[:4]:
                assert post(port, [p])[0] == 200
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/metrics")
            assert metric(connection.getresponse().read().decode(), "imgclf_images_total") == 4
        results: list = []
        in_flight = threading.Thread(target=post, args=(port, digit_pngs[:1], results))
        in_flight.start()
        time.sleep(0.7)  # the request is now waiting in its 2 s batch window
        process.send_signal(signal.SIGTERM)
        in_flight.join(timeout=30)
        assert results and results[0][0] == 200 and "top_k" in results[0][2]["predictions"][0]
        assert process.wait(timeout=60) == 0
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
