"""model.onnx as a web service (FastAPI on uvicorn): a page to drop images on, and a JSON API. Torch-free.

    GET  /         the page: pick or drop images, see each with its top-5 classes (or its error), the model's card
    POST /predict  multipart form: `images` (one or more files), `top_k` (default 5) -> one answer per file
    GET  /model    the model's metadata (classes, input size, dataset, test metrics, sha256, ...)
    GET  /health   alive: {"status": "ok"}
    GET  /ready    the model loaded and one warm-up inference run (both before the server accepts connections)
    GET  /metrics  Prometheus text format (deploy/serving.py)

Each file gets its own answer: `{"filename", "top_k"}` when classified, `{"filename", "error"}` when it is
not a readable image or passes the request's pixel budget, so one bad file does not cost the others theirs.
Request-level faults (no files, over the upload limits, a bad top_k, a malformed body) get a 4xx JSON
`{"error": ...}`; overload a 503 with Retry-After; a request over its time-out a 504. Decoding and model
input are the predictor's (deploy/predictor.py), so the app and its command line classify a file identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.data.decode import decode_image  # also makes Pillow's decompression-bomb warning an error
from imgclf.deploy import uploads
from imgclf.deploy.predictor import Predictor, model_input
from imgclf.deploy.serving import Batcher, Metrics, ServeOptions, ServingMiddleware
from imgclf.deploy.uploads import BadUpload, Upload, read_form
from imgclf.errors import UserError

# Decoded pixels per request: a 9400 x 9400 PNG is 280 KB on the wire and 88 megapixels (265 MB as RGB)
# once decoded; 3 requests of 16 of them held 2.4 GB. 48 MP is four 12-megapixel photos; files past the
# budget are answered with an error from their header alone, never decoded.
MAX_PIXELS_PER_REQUEST = 48_000_000
PAGE = Path(__file__).with_name("static") / "index.html"
# One ONNX Runtime thread per inference: requests already run in parallel, and ONNX Runtime's default
# per-core worker threads spin between runs: measured here, 17.4 ms of server CPU per one-image request
# with them vs 5.6 ms with one thread (src/imgclf/bench/app_load.py).
INFERENCE_THREADS = 1
# Threads that decode and run the model per worker: the cores; more would only hold more decoded images.
WORK_THREADS = min(4, os.cpu_count() or 1)
MODEL_ENV, OPTIONS_ENV = "IMGCLF_APP_MODEL", "IMGCLF_APP_OPTIONS"  # for worker processes (serve)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def model_card(model_path: Path, predictor: Predictor) -> dict:
    with open(model_path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {**asdict(predictor.metadata), "file": model_path.name, "sha256": sha256,
            "limits": {"max_image_bytes": uploads.MAX_IMAGE_BYTES, "max_images": uploads.MAX_IMAGES,
                       "max_pixels_per_request": MAX_PIXELS_PER_REQUEST}}


def decode_uploads(files: list[Upload], predictor: Predictor) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each file as model input, or None and its error; the request's pixel budget is checked from each
    header before that file is decoded."""
    mode = "L" if predictor.metadata.in_channels == 1 else "RGB"
    budget = MAX_PIXELS_PER_REQUEST
    arrays: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for upload in files:
        array, message = None, None
        if not upload.data:
            message = f"{upload.filename} is empty (0 bytes); send a PNG or JPEG file."
        else:
            try:
                with Image.open(io.BytesIO(upload.data)) as image:
                    pixels = image.width * image.height
                    if pixels > budget:
                        message = (f"{upload.filename} is {image.width} x {image.height} pixels, over what is left "
                                   f"of this request's budget of {MAX_PIXELS_PER_REQUEST:,} decoded pixels; send "
                                   f"it downscaled or in a request of its own.")
                    else:
                        budget -= pixels
                if message is None:  # decode_image reads the header again: microseconds, one decoding path
                    array = model_input(decode_image(io.BytesIO(upload.data), mode), predictor.metadata)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning, UserError) as e:  # PIL's errors for bad files
                reason = re.sub(r" ?<_io\.BytesIO object at \w+>", "", str(e))  # the server's object, not the file
                message = (f"{upload.filename} is not an image PIL can read ({type(e).__name__}: {reason}); send "
                           f"PNG or JPEG files (grayscale or RGB, any size).")
        arrays.append(array)
        errors.append(message)
    return arrays, errors


def answers(files: list[Upload], errors: list[str | None], probs: np.ndarray, names: list[str], top_k: int) -> dict:
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    rows = iter(zip(probs, best, strict=True))
    result = []
    for upload, message in zip(files, errors, strict=True):
        if message is not None:
            result.append({"filename": upload.filename, "error": message})
            continue
        row, order = next(rows)
        result.append({"filename": upload.filename,
                       "top_k": [{"class": names[j], "probability": float(row[j])} for j in order]})
    return {"predictions": result}


def parse_top_k(value: str | None, classes: int) -> int:
    if value is None:
        return 5 if classes >= 5 else classes
    try:
        top_k = int(value)
    except ValueError:
        raise BadUpload(422, f"top_k: {value[:20]!r} is not a whole number; send 1 to {classes}.") from None
    if not 1 <= top_k <= classes:
        raise BadUpload(422, f"top_k must be between 1 and {classes} (the model's class count), got {top_k}.")
    return top_k


def create_app(model_path: str | Path = "model.onnx", options: ServeOptions | None = None) -> FastAPI:
    """The app for one model file; a missing or unreadable model raises UserError before anything serves."""
    options = options or ServeOptions()
    model_path = Path(model_path)
    predictor = Predictor(model_path, INFERENCE_THREADS)
    card = model_card(model_path, predictor)
    metadata = predictor.metadata
    names = metadata.class_names
    metrics = Metrics(card["file"], card["sha256"])
    work = ThreadPoolExecutor(WORK_THREADS, thread_name_prefix="imgclf-work")
    batcher = Batcher(predictor.probabilities, options, metrics) if options.max_batch_size > 0 else None
    # The warm-up /ready reports: ONNX Runtime allocates its buffers on the first run.
    start = time.perf_counter()
    predictor.probabilities(np.zeros((1, metadata.in_channels, *metadata.image_size), np.float32))
    warm_up_ms = round((time.perf_counter() - start) * 1000, 2)

    def classify_inline(files: list[Upload], top_k: int) -> dict:
        arrays, errors = decode_uploads(files, predictor)
        good = [a for a in arrays if a is not None]
        probs = predictor.probabilities(np.stack(good)) if good else np.zeros((0, len(names)), np.float32)
        if good:
            metrics.batch_size.observe(len(good))
        return answers(files, errors, probs, names, top_k)

    async def classify(files: list[Upload], top_k: int) -> dict:
        loop = asyncio.get_running_loop()
        if batcher is None:  # decode and run in one hand-off to a thread
            result = await loop.run_in_executor(work, classify_inline, files, top_k)
        else:
            arrays, errors = await loop.run_in_executor(work, decode_uploads, files, predictor)
            good = [a for a in arrays if a is not None]
            probs = (await batcher.probabilities(np.stack(good)) if good
                     else np.zeros((0, len(names)), np.float32))
            result = answers(files, errors, probs, names, top_k)
        failed = sum("error" in p for p in result["predictions"])
        metrics.images.inc(len(files) - failed)
        metrics.file_errors.inc(failed)
        return result

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if batcher is not None:  # after uvicorn has finished the requests in flight
            batcher.close()
        work.shutdown(wait=False)

    app = FastAPI(title="imgclf", summary=f"{metadata.network} on {metadata.dataset}", lifespan=lifespan)
    app.add_middleware(ServingMiddleware, metrics=metrics, options=options)

    @app.exception_handler(BadUpload)
    async def bad_upload(request: Request, exc: BadUpload) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))  # {"error"}, not {"detail"}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": card["file"]}

    @app.get("/ready")
    def readiness() -> dict:
        # The model loaded and warmed up before uvicorn opened its socket: a server that answers is ready;
        # one still loading refuses the connection, which probes count as not ready.
        return {"status": "ready", "model": card["file"], "warm_up_ms": warm_up_ms}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/model")
    def model() -> dict:
        return card

    @app.post("/predict", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "top_k": {"type": "integer", "default": 5}}}}}}})
    async def predict(request: Request) -> JSONResponse:
        try:
            async with asyncio.timeout(options.timeout_s):
                form = await read_form(request)
                if not form.files:
                    raise BadUpload(422, f"images: no files in the field `images`. {uploads.USAGE}")
                top_k = parse_top_k(form.fields.get("top_k"), len(names))
                return JSONResponse(await classify(form.files, top_k))
        except TimeoutError:
            return error(504, f"The request took longer than its time-out of {options.timeout_s:g} s.")

    return app


def app_from_environment() -> FastAPI:
    """The app of a worker process that `serve` started (uvicorn's factory): the model and options by env."""
    return create_app(os.environ[MODEL_ENV], ServeOptions.from_json(os.environ[OPTIONS_ENV]))


def serve(model_path: str | Path, host: str, port: int, options: ServeOptions, workers: int = 1,
          access_log: bool = False) -> None:
    """app.py: load the model (a clear error when it is missing), then serve until SIGTERM or Ctrl-C, which
    stop accepting, finish the requests in flight (for at most their time-out) and exit 0."""
    import tempfile

    import uvicorn

    from imgclf.deploy.serving import MULTIPROC_ENV

    settings = dict(host=host, port=port, access_log=access_log, log_level="info",
                    timeout_graceful_shutdown=int(options.timeout_s) + 1)
    print(f"Serving {model_path} on http://{host}:{port}/ with {workers} worker(s) "
          f"(POST /predict, GET /model /health /ready /metrics)", flush=True)
    # uvicorn finishes the requests in flight, then re-raises the signal it caught, which by default kills the
    # process (exit -15); what Kubernetes and systemd expect after a clean stop is exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if workers == 1:
        uvicorn.run(create_app(model_path, options), **settings)
        return
    Predictor(model_path, INFERENCE_THREADS)  # a missing or bad model: one clear error, before any worker starts
    with tempfile.TemporaryDirectory(prefix="imgclf-metrics-") as metrics_dir:
        os.environ.update({MODEL_ENV: str(model_path), OPTIONS_ENV: options.to_json(), MULTIPROC_ENV: metrics_dir})
        uvicorn.run("imgclf.deploy.app:app_from_environment", factory=True, workers=workers, **settings)
