"""Classify image files (PNG/JPEG, any size, grayscale or RGB) with model.onnx; a folder stands for every
image in it (any depth). Needs no torch: only onnxruntime, numpy and Pillow.

    uv run python predict.py photo1.jpg photo2.png --top-k 3
    uv run python predict.py holiday_photos/
"""

import argparse
import sys

from imgclf.deploy.predictor import predict
from imgclf.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--model", default="model.onnx", help="ONNX file written by export.py")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to show per image")
    args = parser.parse_args()
    try:
        predict(args.images, args.model, args.top_k)
    except UserError as e:
        sys.exit(f"error: {e}")
