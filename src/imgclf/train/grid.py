"""The seed study's experiment grid: three (lr, batch size) settings of main.py, each over seeds, one table.

    uv run python -m imgclf.train.grid                                   # on digits (configs/default.yaml)
    uv run python -m imgclf.train.grid --seeds 0 1 2 --data.dataset fashion_mnist --trainer.max_epochs 3

Any main.py argument passes through. Each setting runs once per seed (`--seed_everything`: initialization,
shuffling, augmentation; the train/val split keeps its own `data.split_seed`), so a difference between two
rows can be told from the spread within a row. Results land in runs/grid-<time>/: results.csv (one row a
run) and results.md (one row a setting: mean, std and range of the test accuracy over the seeds).

Each run is a separate main.py process (so DDP flags work as for any run) with its own run folder
<grid>/<setting>/seed<N>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from imgclf.atomic import atomic_path, write_text
from imgclf.errors import UserError, exit_on_user_error
from imgclf.train.config import PROJECT
from imgclf.train.run_folder import RUN_DIR_ENV

SEED_STUDY = [(0.001, 64), (0.01, 64), (0.001, 128)]  # (lr, batch size), as in the seed study


def run_grid(main_script: Path, extra_args: list[str], grid_dir: Path | None = None,
             experiments: list[tuple[float, int]] = SEED_STUDY, seeds: list[int] | None = None) -> pd.DataFrame:
    """Run every experiment once per seed with `extra_args` (e.g. --config ...); return and save the table
    of settings (mean and spread over the seeds). Without seeds, each runs once with the config's seed."""
    grid_dir = grid_dir or Path("runs") / f"grid-{datetime.now():%Y%m%d-%H%M%S}"
    grid_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for lr, batch_size in experiments:
        name = f"lr{lr:g}-bs{batch_size}"
        for seed in seeds or [None]:
            run_dir = grid_dir / name if seed is None else grid_dir / name / f"seed{seed}"
            seed_args = [] if seed is None else ["--seed_everything", str(seed)]
            cmd = [sys.executable, str(main_script), *extra_args, *seed_args, "--model.lr", str(lr),
                   "--data.batch_size", str(batch_size)]
            print(f"\n=== {run_dir.relative_to(grid_dir)}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            done = subprocess.run(cmd, env={**os.environ, RUN_DIR_ENV: str(run_dir)})
            if done.returncode != 0:
                raise UserError(f"Experiment {name} failed (exit {done.returncode}); its output is above and its "
                                f"files in {run_dir}. Results of the finished runs are in {grid_dir}.")
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            metrics = json.loads((run_dir / "metrics.json").read_text())
            runs.append({"experiment": name, "seed": config["seed_everything"], "lr": lr, "batch_size": batch_size,
                         "epochs": config["trainer"]["max_epochs"], "test_acc": round(metrics["test/acc"], 4),
                         "train_seconds": round(metrics.get("fit_seconds", float("nan")), 1)})
            write_results(pd.DataFrame(runs), grid_dir)  # after every run: a crash keeps what finished
    table = summarize(pd.DataFrame(runs))
    print(f"\n{table.to_markdown(index=False)}\n\nResults: {grid_dir}/results.md and results.csv", file=sys.stderr)
    return table


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: test accuracy's mean, sample std (0 for a single seed) and range over the seeds."""
    by_setting = runs.groupby(["experiment", "lr", "batch_size", "epochs"], sort=False)
    table = by_setting.agg(seeds=("seed", "count"), test_acc=("test_acc", "mean"),
                           test_acc_std=("test_acc", lambda acc: acc.std(ddof=1) if len(acc) > 1 else 0.0),
                           test_acc_min=("test_acc", "min"), test_acc_max=("test_acc", "max"),
                           train_seconds=("train_seconds", "mean"))
    return table.reset_index().round({"test_acc": 4, "test_acc_std": 4, "train_seconds": 1})


def write_results(runs: pd.DataFrame, grid_dir: Path) -> None:
    with atomic_path(grid_dir / "results.csv", "grid results") as temporary:
        runs.to_csv(temporary, index=False)
    write_text(grid_dir / "results.md", summarize(runs).to_markdown(index=False) + "\n", "grid results")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(usage="python -m imgclf.train.grid [--seeds N ...] [main.py arguments]")
    parser.add_argument("--seeds", type=int, nargs="+", help="run each setting once per seed (--seed_everything)")
    options, main_args = parser.parse_known_args()
    with exit_on_user_error():
        run_grid(PROJECT / "main.py", main_args, seeds=options.seeds)
