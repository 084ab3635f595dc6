"""Verify model.onnx against its checkpoint on the full test split; exit 1 on any mismatch.

    uv run python verify_onnx.py                             # model.onnx, report in onnx_report.json
    uv run python verify_onnx.py --model model.onnx --ckpt runs/<run>/best.ckpt --quantize
"""

import argparse
import sys

from imgclf.errors import exit_on_user_error

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx", help="ONNX file written by export.py")
    parser.add_argument("--ckpt", default=None, help="checkpoint to compare with (default: the one recorded "
                        "in the model's metadata if it exists, else runs/latest/best.ckpt)")
    parser.add_argument("--report", default="onnx_report.json", help="where to write the JSON report")
    parser.add_argument("--quantize", action="store_true", help="also write an int8 copy (<model>.int8.onnx) "
                        "and report its accuracy change and latency")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the latency table, the same "
                        "for PyTorch and ONNX Runtime (default 1: stable on a shared machine)")
    args = parser.parse_args()
    with exit_on_user_error():
        from imgclf.deploy.verify import verify

        report = verify(args.model, args.ckpt, args.report, quantize=args.quantize, threads=args.threads)
    sys.exit(0 if report["passed"] else 1)
