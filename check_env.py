"""Check this machine before training: Python packages, GPUs and CUDA kernels, DDP, data and DVC.

    uv run check_env.py                  # one PASS / WARN / FAIL line per check, with a fix for each problem
    uv run check_env.py --json           # the same as one JSON object
    uv run check_env.py --require-gpu    # no usable GPU is a FAIL (default: a WARN, CPU training works)

Exit code 0 when nothing FAILed, 1 otherwise.
"""

import argparse
import sys
from pathlib import Path

try:
    from imgclf.env import report
except ImportError:  # plain `python3 check_env.py` outside the project's environment
    sys.exit("error: the imgclf package is not importable from this Python. Run `uv sync` in the project "
             "folder, then `uv run check_env.py`.")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
    parser.add_argument("--require-gpu", action="store_true", help="make 'no usable GPU' a FAIL")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds before the GPU probe and the all-reduce test are killed (default 90)")
    args = parser.parse_args()
    sys.exit(report(Path(__file__).resolve().parent, args.require_gpu, args.json, args.timeout))
