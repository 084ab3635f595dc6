"""Export a trained checkpoint to ONNX (raw 0-255 float32 pixels in, logits out, dynamic batch axis).

    uv run python export.py                                  # runs/latest/best.ckpt -> model.onnx
    uv run python export.py --ckpt runs/<run>/best.ckpt --output model.onnx
    uv run python export.py --opset 20                       # a newer opset (default 18: onnxruntime >= 1.14)
"""

import argparse
import sys

from imgclf.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="runs/latest/best.ckpt", help="checkpoint written by main.py")
    parser.add_argument("--output", default="model.onnx", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18, stamped IR version 8: "
                        "loads in onnxruntime 1.14 and newer, OpenCV's DNN module and onnx's reference "
                        "evaluator; higher opsets need newer runtimes)")
    args = parser.parse_args()
    try:
        from imgclf.deploy.export import export

        export(args.ckpt, args.output, args.opset)
    except UserError as e:
        sys.exit(f"error: {e}")
