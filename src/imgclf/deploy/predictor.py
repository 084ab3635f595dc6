"""Image files -> top-k classes with model.onnx. Imports only numpy, PIL, onnxruntime and json (through
metadata.py), so it runs where torch is not installed. A folder stands for every image in it (any depth):

    uv run python -m imgclf.deploy.predictor photo1.jpg photo2.png --top-k 3
    uv run python -m imgclf.deploy.predictor holiday_photos/

Preprocessing matches evaluation: the model takes raw 0-255 pixels and normalizes them itself, so the only
steps here are decoding, converting to the model's channels, and sizing. Models of in-memory datasets
(metadata base_size equal to the input side, or absent): center-crop to the input's aspect ratio and resize
to the input size; an image already of that size and mode reaches the model unchanged. Models of image-file
datasets (base_size above the input side): squash the whole image to a base_size square and take its
centre, as transforms.load_base + eval_view do at evaluation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from imgclf.data.decode import IMAGE_SUFFIXES, decode_image, images_in
from imgclf.deploy.compat import too_old_runtime_error
from imgclf.deploy.metadata import INPUT_NAME, ModelMetadata
from imgclf.errors import UserError, exit_on_user_error, not_a_file

# Images per session.run: bounds ONNX Runtime's activation memory (the decoded files are all stacked
# before the first run, so it does not bound that); the batch axis is dynamic, any size works.
BATCH = 64


def session_options(threads: int | None) -> ort.SessionOptions:
    """ONNX Runtime's defaults, or exactly `threads` CPU threads per run (None: one per core)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    return options


def open_session(model_path: str | Path,
                 threads: int | None = None) -> tuple[ort.InferenceSession, ModelMetadata]:
    """An ONNX Runtime CPU session for the file and its metadata, with clear errors for bad files."""
    model_path = Path(model_path)
    if problem := not_a_file(model_path):
        raise UserError(f"Model file {model_path} {problem}. Fetch the released model with `uv run dvc "
                        f"pull model.onnx.dvc`, or export one with `uv run python export.py --output "
                        f"{model_path}`, or pass --model.")
    try:
        session = ort.InferenceSession(str(model_path), session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
        if too_old := too_old_runtime_error(str(e), model_path):  # the file is fine, the runtime is not
            raise too_old from e
        raise UserError(f"ONNX Runtime cannot load {model_path} ({type(e).__name__}: {str(e)[:300]}). "
                        f"The file is corrupt or not an ONNX model; export it again with export.py.") from e
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(model_path))
    return session, metadata


def run_onnx(session: ort.InferenceSession, images: np.ndarray, batch: int) -> np.ndarray:
    """float32 [N, C, H, W] raw pixels -> [N, num_classes] logits, `batch` images per run."""
    return np.concatenate([session.run(None, {INPUT_NAME: images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # subtract the max: no overflow
    return shifted / shifted.sum(axis=1, keepdims=True)


def center_crop_to_aspect(image: Image.Image, height: int, width: int) -> Image.Image:
    """The largest centered box with the model's aspect ratio: resizing it does not distort shapes."""
    w, h = image.size
    if w * height > h * width:  # too wide
        new_w = round(h * width / height)
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = round(w * height / width)
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def load_image(path: str | Path, metadata: ModelMetadata) -> np.ndarray:
    """float32 [C, H, W] raw pixels 0-255 as the model expects; UserError when the file is not an image."""
    path = Path(path)
    if problem := not_a_file(path):
        raise UserError(f"{path} {problem}; pass image files (PNG, JPEG, ...) or folders of them.")
    try:
        # The decoding training and evaluation use: EXIF rotation applied, 16 bits scaled, huge files refused.
        image = decode_image(path, "L" if metadata.in_channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL's errors for bad files
        raise UserError(f"{path} is not an image PIL can read ({type(e).__name__}: {e}); pass PNG or "
                        f"JPEG files (grayscale or RGB, any size).") from e
    return model_input(image, metadata)


def model_input(image: Image.Image, metadata: ModelMetadata) -> np.ndarray:
    """A decoded image in the model's mode -> float32 [C, H, W] raw pixels at the model's input size (the app
    decodes uploads from memory and shares this step with the command line)."""
    height, width = metadata.image_size
    side = metadata.base_size
    if side is not None and side > max(height, width):
        # Pillow's bilinear resize antialiases when shrinking, like load_base's torchvision resize; on uint8
        # the two differ by at most one grey level, on a few pixels (measured; the test checks it).
        image = image.resize((side, side), Image.Resampling.BILINEAR)
        top, left = round((side - height) / 2), round((side - width) / 2)  # torchvision's CenterCrop anchor
        image = image.crop((left, top, left + width, top + height))
    elif image.size != (width, height):
        image = center_crop_to_aspect(image, height, width).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@dataclass(frozen=True)
class Prediction:
    path: str
    top_k: list[tuple[str, float]]  # (class name, probability), most likely first


class Predictor:
    def __init__(self, model_path: str | Path, threads: int | None = None) -> None:
        self.session, self.metadata = open_session(model_path, threads)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] raw pixels -> [N, num_classes] probabilities."""
        return softmax(run_onnx(self.session, images, BATCH))

    def predict(self, paths: list[str], top_k: int) -> list[Prediction]:
        names = self.metadata.class_names
        if not 1 <= top_k <= len(names):
            raise UserError(f"--top-k must be between 1 and {len(names)} (the model's class count), "
                            f"got {top_k}.")
        # Decode every file before running the model: a bad file fails fast and names itself.
        images = np.stack([load_image(p, self.metadata) for p in paths])
        probs = self.probabilities(images)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        return [Prediction(str(p), [(names[j], float(row[j])) for j in order])
                for p, row, order in zip(paths, probs, best, strict=True)]


def format_predictions(predictions: list[Prediction]) -> str:
    width = max(len(name) for p in predictions for name, _ in p.top_k)
    lines = []
    for p in predictions:
        lines.append(p.path)
        lines += [f"  {name:<{width}}  {prob:7.2%}" for name, prob in p.top_k]
    return "\n".join(lines)


def image_paths(paths: list[str]) -> list[str]:
    """The paths given, each folder replaced by the image files under it (any depth, sorted)."""
    expanded = []
    for path in paths:
        if not Path(path).is_dir():
            expanded.append(path)
            continue
        found = images_in(Path(path))
        if not found:
            raise UserError(f"Folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        expanded += [str(f) for f in found]
    return expanded


def predict(paths: list[str], model_path: str | Path, top_k: int) -> list[Prediction]:
    """Classify the files (and every image in the folders given) and print the top-k classes."""
    if not paths:
        raise UserError("No image files given; pass one or more image files or folders.")
    predictions = Predictor(model_path).predict(image_paths(paths), top_k)
    print(format_predictions(predictions))
    return predictions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--model", default="model.onnx", help="ONNX file written by export.py")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to show per image")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        predict(args.images, args.model, args.top_k)


if __name__ == "__main__":
    main()
