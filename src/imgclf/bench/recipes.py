"""A recipe's figures over seeds: test accuracy and training seconds of `main.py --config X`, mean and spread.

Each seed is one full run of main.py's own path (fit, then test of best.ckpt), in this process, one after the
other; the figures are read from each run's metrics.json. The load average is recorded with them: training
seconds on a shared machine are an upper bound, accuracy does not depend on load.

    uv run python -m imgclf.bench.recipes                                 # configs/fashion_mnist.yaml, seeds 0 1 2
    uv run python -m imgclf.bench.recipes --seeds 0 -- --trainer.max_epochs 2   # any main.py argument after --
    uv run python -m imgclf.bench.recipes --config configs/default.yaml
    uv run python -m imgclf.bench.recipes --smoke                         # seconds: it loads, trains, tests
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from imgclf.atomic import write_json
from imgclf.errors import exit_on_user_error
from imgclf.train.config import DEFAULT_CONFIG, PROJECT
from imgclf.train.run import main

# A smoke run checks that the recipe loads, learns and tests: 20 batches of one epoch, 2 of the test split.
SMOKE_ARGS = ["--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
              "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "1",
              "--trainer.limit_test_batches", "2"]


@dataclass
class RecipeOptions:
    config: Path = PROJECT / "configs" / "fashion_mnist.yaml"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    extra_args: list[str] = field(default_factory=list)  # any main.py argument, e.g. --trainer.max_epochs 2
    runs_dir: Path | None = None  # default: runs/recipes-<time>/
    smoke: bool = False


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def run_recipe(opts: RecipeOptions) -> dict:
    runs_dir = opts.runs_dir or PROJECT / "runs" / f"recipes-{datetime.now():%Y%m%d-%H%M%S}"
    extra = [*opts.extra_args, *(SMOKE_ARGS if opts.smoke else [])]
    runs = []
    for seed in opts.seeds:
        load_before = os.getloadavg()
        run_dir = main(["--config", str(opts.config), "--seed_everything", str(seed), "--runs_dir", str(runs_dir),
                        "--run_name", f"seed{seed}", *extra],
                       default_config=DEFAULT_CONFIG)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        runs.append({"seed": seed, "test_acc": metrics["test/acc"], "fit_seconds": metrics["fit_seconds"],
                     "loadavg_1min": [load_before[0], os.getloadavg()[0]], "run_dir": str(run_dir)})
    results = {"config": str(opts.config), "extra_args": extra, "cpu_count": os.cpu_count(), "runs": runs,
               "test_acc": spread([r["test_acc"] for r in runs]),
               "fit_seconds": spread([r["fit_seconds"] for r in runs])}
    write_json(runs_dir / "recipe.json", results)
    print(format_results(results))
    return results


def format_results(results: dict) -> str:
    acc, secs = results["test_acc"], results["fit_seconds"]
    lines = [f"{results['config']} {' '.join(results['extra_args'])}".rstrip(),
             "seed  test acc  fit seconds  load avg (1 min) before/after"]
    lines += [f"{r['seed']:>4}  {r['test_acc']:.4f}  {r['fit_seconds']:>11.1f}  "
              f"{r['loadavg_1min'][0]:.1f}/{r['loadavg_1min'][1]:.1f}" for r in results["runs"]]
    lines.append(f"mean  {acc['mean']:.4f}  {secs['mean']:>11.1f}   (std over {len(results['runs'])} seeds: "
                 f"acc {acc['std']:.4f}, seconds {secs['std']:.1f}; acc range {acc['min']:.4f}-{acc['max']:.4f})")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=RecipeOptions.config, help="main.py config to measure")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed_everything values")
    parser.add_argument("--runs-dir", type=Path, help="parent of the seeds' run folders (default runs/recipes-<time>)")
    parser.add_argument("--smoke", action="store_true", help="20 batches of one epoch per seed, 2 test batches")
    parser.add_argument("main_args", nargs="*", help="after --: extra main.py arguments")
    args = parser.parse_args()
    with exit_on_user_error():
        run_recipe(RecipeOptions(args.config, args.seeds, args.main_args, args.runs_dir, args.smoke))
