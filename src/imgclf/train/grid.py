"""The seed study's experiment grid: three (lr, batch size) runs of main.py, then one results table.

    uv run python -m imgclf.train.grid                                   # on digits (configs/default.yaml)
    uv run python -m imgclf.train.grid --config configs/fashion_mnist.yaml --trainer.max_epochs 3

Any main.py argument passes through; results land in runs/grid-<time>/results.{md,csv}.

Each experiment is a separate main.py process (so DDP flags work as for any run) with its own run folder
under the grid's folder; the table is written as Markdown and CSV next to them.
"""

from __future__ import annotations

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
             experiments: list[tuple[float, int]] = SEED_STUDY) -> pd.DataFrame:
    """Run every experiment with `extra_args` (e.g. --config ...), return and save the results table."""
    grid_dir = grid_dir or Path("runs") / f"grid-{datetime.now():%Y%m%d-%H%M%S}"
    grid_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for lr, batch_size in experiments:
        name = f"lr{lr:g}-bs{batch_size}"
        run_dir = grid_dir / name
        cmd = [sys.executable, str(main_script), *extra_args, "--model.lr", str(lr),
               "--data.batch_size", str(batch_size)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env={**os.environ, RUN_DIR_ENV: str(run_dir)})
        if done.returncode != 0:
            raise UserError(f"Experiment {name} failed (exit {done.returncode}); its output is above and its "
                            f"files in {run_dir}. Results of the finished experiments are in {grid_dir}.")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        epochs = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"]
        rows.append({"experiment": name, "lr": lr, "batch_size": batch_size, "epochs": epochs,
                     "test_acc": round(metrics["test/acc"], 4),
                     "train_seconds": round(metrics.get("fit_seconds", float("nan")), 1)})
        write_results(pd.DataFrame(rows), grid_dir)  # after every run: a crash keeps what finished
    table = pd.DataFrame(rows)
    print(f"\n{table.to_markdown(index=False)}\n\nResults: {grid_dir}/results.md and results.csv", file=sys.stderr)
    return table


def write_results(table: pd.DataFrame, grid_dir: Path) -> None:
    with atomic_path(grid_dir / "results.csv", "grid results") as temporary:
        table.to_csv(temporary, index=False)
    write_text(grid_dir / "results.md", table.to_markdown(index=False) + "\n", "grid results")


if __name__ == "__main__":
    with exit_on_user_error():
        run_grid(PROJECT / "main.py", sys.argv[1:])
