"""The same model behind LitServe, to choose the serving engine by measurement (docs/deployment.md, "Serving").
Not part of the project's dependencies: run it, and app_load against it, in a throwaway venv (LitServe 0.2.19
pulls no torch, but it is a second web stack to maintain):

    uv venv /tmp/ls && uv pip install --python /tmp/ls/bin/python litserve onnxruntime pillow numpy \\
        python-multipart psutil
    /tmp/ls/bin/python src/imgclf/bench/app_load.py --app src/imgclf/bench/litserve_app.py --json \\
        --model model.onnx

POST /predict takes JSON `{"images": [{"filename", "data": base64}]}` (LitServe cannot pass a multipart
upload to its workers: see decode_request) and answers app.py's JSON for one image per request (what the
benchmark sends); it decodes as the predictor does for an image already at the model's size.
"""

from __future__ import annotations

import argparse
import base64
import io
import json

import litserve as ls
import numpy as np
import onnxruntime as ort
from PIL import Image


class ImageClassifier(ls.LitAPI):
    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # as app.py
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.names = json.loads(props["class_names"])
        self.mode = "L" if json.loads(props["in_channels"]) == 1 else "RGB"
        self.size = tuple(json.loads(props["image_size"]))[::-1]

    def decode_request(self, request):
        # LitServe pickles each request to its inference worker: a multipart form's UploadFile cannot be
        # pickled (500 "Pickling an AuthenticationString object is disallowed"), so this takes LitServe's
        # documented JSON with the image in base64 (app_load --json).
        upload = request["images"][0]
        image = Image.open(io.BytesIO(base64.b64decode(upload["data"]))).convert(self.mode)
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        return upload["filename"], pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def batch(self, inputs):
        return [name for name, _ in inputs], np.stack([pixels for _, pixels in inputs])

    def predict(self, x):
        if isinstance(x, tuple) and isinstance(x[0], list):  # a batch
            names, pixels = x
        else:
            names, pixels = [x[0]], x[1][None]
        logits = self.session.run(None, {"images": pixels})[0]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return [(name, row) for name, row in zip(names, probs, strict=True)]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        name, row = output[0] if isinstance(output, list) else output
        order = np.argsort(-row, kind="stable")[:5]
        return {"predictions": [{"filename": name, "top_k": [{"class": self.names[j], "probability": float(row[j])}
                                                             for j in order]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    args = parser.parse_args()
    api = ImageClassifier(args.model, api_path="/predict", max_batch_size=args.max_batch_size,
                          batch_timeout=args.max_wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=30)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
