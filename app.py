"""Serve model.onnx: a web page to classify images, and a JSON API. Needs no torch.

    uv run python app.py                                    # model.onnx on http://127.0.0.1:8000/
    uv run python app.py --model runs/pipeline/model.onnx --host 0.0.0.0 --port 8080
"""

import argparse
import sys

from imgclf.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx", help="ONNX file written by export.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        from imgclf.deploy.app import serve

        serve(args.model, args.host, args.port)
    except UserError as e:
        sys.exit(f"error: {e}")
