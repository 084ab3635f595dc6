"""model.onnx as a web service (FastAPI on uvicorn): a page to drop images on, and a JSON API. Torch-free.

    GET  /         the page: pick or drop images, see each with its top-5 classes, and the model's card
    POST /predict  multipart form: `images` (one or more files), `top_k` (default 5) -> JSON predictions
    GET  /model    the model's metadata (classes, input size, dataset, test metrics, sha256, ...)
    GET  /health   {"status": "ok"}

Decoding and inference are the predictor's (deploy/predictor.py), as for predict.py, so the app and the
command line classify a file identically. Several images in one request run as one batch. Bad input (not
an image, empty or truncated file, too large, missing field, bad top_k) gets a 4xx JSON `{"error": ...}`
and the server carries on.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from imgclf.deploy.predictor import Predictor
from imgclf.errors import UserError

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # per file: a 12-megapixel JPEG fits; a 10 MiB cap bounds decode memory
MAX_IMAGES = 32  # per request
MAX_REQUEST_BYTES = MAX_IMAGES * MAX_IMAGE_BYTES + 64 * 1024  # plus the form's own bytes
PAGE = Path(__file__).with_name("static") / "index.html"
# One ONNX Runtime thread per inference: requests already run in parallel (FastAPI's thread pool), and ONNX
# Runtime's default per-core worker threads spin between runs: measured here, 17.4 ms of server CPU per
# one-image request with them vs 5.6 ms with one thread, and p50 latency 38 ms vs 6 ms (bench/app_load.py).
INFERENCE_THREADS = 1


class BadUpload(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def model_card(model_path: Path, predictor: Predictor) -> dict:
    with open(model_path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {**asdict(predictor.metadata), "file": model_path.name, "sha256": sha256,
            "limits": {"max_image_bytes": MAX_IMAGE_BYTES, "max_images": MAX_IMAGES}}


def read_uploads(images: list[UploadFile], folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Each upload into its own file (the predictor decodes files); returns the paths and path -> file name."""
    if len(images) > MAX_IMAGES:
        raise BadUpload(413, f"{len(images)} images in one request; send at most {MAX_IMAGES}.")
    paths, names = [], {}
    for i, upload in enumerate(images):
        name = upload.filename or f"image {i + 1}"
        data = upload.file.read(MAX_IMAGE_BYTES + 1)
        if not data:
            raise BadUpload(400, f"{name} is empty (0 bytes); send a PNG or JPEG file.")
        if len(data) > MAX_IMAGE_BYTES:
            raise BadUpload(413, f"{name} is larger than the {MAX_IMAGE_BYTES // 2**20} MiB limit per image; "
                                 f"send a smaller file (the model sees it at its input size anyway).")
        path = folder / f"upload-{i}"
        path.write_bytes(data)
        paths.append(path)
        names[str(path)] = name
    return paths, names


def create_app(model_path: str | Path = "model.onnx") -> FastAPI:
    """The app for one model file; a missing or unreadable model raises UserError before anything serves."""
    model_path = Path(model_path)
    predictor = Predictor(model_path, INFERENCE_THREADS)
    card = model_card(model_path, predictor)
    app = FastAPI(title="imgclf", summary=f"{predictor.metadata.network} on {predictor.metadata.dataset}")

    @app.middleware("http")
    async def refuse_oversized_requests(request: Request, call_next):
        # Refused from the header, before the body is read; uploads without Content-Length are still held
        # to the per-file limit in read_uploads.
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return error(413, f"Request of {int(length)} bytes; the limit is {MAX_IMAGES} images of at most "
                              f"{MAX_IMAGE_BYTES // 2**20} MiB each.")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def readable_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}" for e in exc.errors())
        return error(422, f"{problems}. Send multipart/form-data with one or more files in the field `images` "
                          f"and optionally `top_k` (1 to {len(predictor.metadata.class_names)}).")

    @app.exception_handler(BadUpload)
    async def bad_upload(request: Request, exc: BadUpload) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": card["file"]}

    @app.get("/model")
    def model() -> dict:
        return card

    @app.post("/predict")
    def predict(images: Annotated[list[UploadFile], File()], top_k: Annotated[int, Form()] = 5) -> dict:
        with tempfile.TemporaryDirectory(prefix="imgclf-app-") as tmp:
            paths, names = read_uploads(images, Path(tmp))
            try:
                predictions = predictor.predict([str(p) for p in paths], top_k)
            except UserError as e:  # a file that is not an image, or top_k out of range: name the upload
                message = str(e)
                for path, name in names.items():
                    message = message.replace(path, name)
                raise BadUpload(422, message.replace("--top-k", "top_k")) from e
        return {"predictions": [{"filename": names[p.path], "top_k": [{"class": c, "probability": prob}
                                                                     for c, prob in p.top_k]}
                                for p in predictions]}

    return app


def serve(model_path: str | Path, host: str, port: int) -> None:
    """app.py: load the model (a clear error when it is missing), then serve until interrupted."""
    import uvicorn

    app = create_app(model_path)
    print(f"Serving {model_path} on http://{host}:{port}/ (JSON API: POST /predict, GET /model, GET /health)")
    uvicorn.run(app, host=host, port=port)
