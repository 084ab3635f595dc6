"""Export a trained checkpoint to ONNX (raw 0-255 float32 pixels in, logits out, dynamic batch axis).

    uv run python export.py                                  # runs/latest/best.ckpt -> model.onnx
    uv run python export.py --ckpt runs/<run>/best.ckpt --output model.onnx
    uv run python export.py --opset 18                       # for onnxruntime 1.14-1.16 (default 20: >= 1.17)
"""

import argparse
import sys

from imgclf.deploy.compat import DEFAULT_OPSET
from imgclf.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="runs/latest/best.ckpt", help="checkpoint written by main.py")
    parser.add_argument("--output", default="model.onnx", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="ONNX opset (default %(default)s, IR version 9: loads in onnxruntime 1.17 and newer, "
                        "OpenCV 5's DNN module and onnx's reference evaluator; 18, IR version 8: onnxruntime 1.14 "
                        "and newer; higher opsets need newer runtimes)")
    args = parser.parse_args()
    try:
        from imgclf.deploy.export import export

        export(args.ckpt, args.output, args.opset)
    except UserError as e:
        sys.exit(f"error: {e}")
