"""Serve model.onnx: a web page to classify images, and a JSON API with metrics. Needs no torch.

    uv run python app.py                                    # model.onnx on http://127.0.0.1:8000/
    uv run python app.py --model runs/pipeline/model.onnx --host 0.0.0.0 --port 8080
    uv run python app.py --workers 2 --max-batch-size 32 --max-wait-ms 5     # batching across requests

docs/deployment.md ("Serving") describes the endpoints, metrics and flags.
"""

import argparse

from imgclf.errors import exit_on_user_error

if __name__ == "__main__":
    from imgclf.deploy.serving import ServeOptions

    default = ServeOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model.onnx", help="ONNX file written by export.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    parser.add_argument("--max-inflight", type=int, default=default.max_inflight,
                        help="/predict requests in flight per worker; beyond: 503 with Retry-After")
    parser.add_argument("--timeout", type=float, default=default.timeout_s,
                        help="seconds per request before a 504")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help="batch images across requests, at most this many per model run (0: off)")
    parser.add_argument("--max-wait-ms", type=float, default=default.max_wait_ms,
                        help="with batching: how long the first image waits for others")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs CPU)")
    args = parser.parse_args()
    with exit_on_user_error():
        if min(args.workers, args.max_inflight) < 1 or args.timeout <= 0 or args.max_batch_size < 0 \
                or args.max_wait_ms < 0:
            from imgclf.errors import UserError

            raise UserError("--workers and --max-inflight must be at least 1, --timeout above 0, "
                            "--max-batch-size and --max-wait-ms 0 or more.")
        from imgclf.deploy.app import serve

        options = ServeOptions(max_inflight=args.max_inflight, timeout_s=args.timeout,
                               max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
        serve(args.model, args.host, args.port, options, args.workers, args.access_log)
