"""Time to Fashion-MNIST test accuracy: our best recipe vs a seed-style baseline, plus Lightning's overhead.
Both race in one run; the JSON holds each time to 90/92/93/94%, their ratios and the two goals' ratios.

    uv run python -m imgclf.bench.time_to_accuracy                       # full run (CPU: ~10-20 minutes)
    uv run python -m imgclf.bench.time_to_accuracy --tiny                # seconds: a check that it all runs
    uv run python -m imgclf.bench.time_to_accuracy --budget-seconds 300 --json runs/bench.json
"""

import argparse
from pathlib import Path

from imgclf.bench.run import BenchOptions, run_benchmark
from imgclf.errors import exit_on_user_error

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        help="our recipe (default: configs/fashion_mnist.yaml; on a GPU fast_fashion_mnist.yaml)")
    parser.add_argument("--data-root", type=Path, help="folder with the Fashion-MNIST idx files (.gz or not)")
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="training-time cap per pipeline")
    parser.add_argument("--evals-per-epoch", type=int, default=4, help="test evaluations per training epoch")
    parser.add_argument("--overhead-steps", type=int, default=100,
                        help="timed steps per overhead measurement (20 on a CPU varied by +-10%% between runs)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 2048 train, 1000 test images, 5 s")
    parser.add_argument("--json", type=Path, default=Path("runs/time_to_accuracy.json"), help="results file")
    args = parser.parse_args()
    with exit_on_user_error():
        run_benchmark(BenchOptions(args.config, args.data_root, args.budget_seconds, args.evals_per_epoch,
                                   args.overhead_steps, args.tiny, args.json))
