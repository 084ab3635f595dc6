"""Experiment tracking with DVCLive: what `dvc exp show` and `dvc plots show` read from a run.

DVCLive's Lightning logger writes params, per-step metrics and plots under <run>/dvclive/. dvc.yaml
declares those files itself, so DVCLive must not rewrite dvc.yaml (dvcyaml=None) nor make its own
experiment commits (save_dvc_exp=False): `dvc exp run` does that.

DVCLive comes with DVC. On a machine without it (a GPU box that only has torch and Lightning), runs log to
the CSV logger only and say so once: training must not need the experiment tracker.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import lightning as L
import torch

CONFUSION_PLOT = "confusion_matrix"  # <run>/dvclive/plots/sklearn/confusion_matrix.json


def dvclive_logger_config(run_dir: Path) -> dict | None:
    """LightningCLI's class_path form of the DVCLive logger writing to <run_dir>/dvclive; None without DVCLive."""
    if importlib.util.find_spec("dvclive") is None:
        warnings.warn("dvclive is not installed: this run logs to metrics.csv only (no `dvc exp show` / "
                      "`dvc plots` data). `uv sync` installs it.", stacklevel=2)
        return None
    return {
        "class_path": "dvclive.lightning.DVCLiveLogger",
        "init_args": {"dir": str(run_dir / "dvclive"), "dvcyaml": None, "save_dvc_exp": False},
    }


def confusion_pairs(confusion: torch.Tensor, class_names: list[str]) -> tuple[list[str], list[str]]:
    """(true, predicted) class names, one pair per test image, from a confusion matrix of counts."""
    true, predicted = [], []
    for (i, j), count in zip(confusion.nonzero().tolist(), confusion[confusion > 0].tolist(), strict=True):
        true += [class_names[i]] * int(count)
        predicted += [class_names[j]] * int(count)
    return true, predicted


class DVCLiveConfusionMatrix(L.Callback):
    """Logs the test confusion matrix as DVC's confusion plot, so `dvc plots diff` compares experiments."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "test_confusion", None)
        loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "DVCLiveLogger"]
        if not trainer.is_global_zero or confusion is None or not loggers:
            return
        true, predicted = confusion_pairs(confusion, pl_module.class_names)
        loggers[0].experiment.log_sklearn_plot("confusion_matrix", true, predicted, name=CONFUSION_PLOT)
