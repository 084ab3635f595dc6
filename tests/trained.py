"""Tiny training runs through the real CLI, in the test process, for the deployment tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imgclf.cli import RUN_DIR_ENV, main

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def train(runs_dir: Path, *args: str) -> Path:
    """One tiny training run through the real CLI; returns its run folder."""
    os.environ.pop(RUN_DIR_ENV, None)  # main() records its run folder here for DDP ranks: start afresh
    saved, sys.argv = sys.argv, ["main.py"]  # LightningCLI warns when pytest's own arguments are present
    try:
        return main([*QUICK, *args, "--runs_dir", str(runs_dir)],
                    default_config=REPO / "configs" / "default.yaml")
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        sys.argv = saved
