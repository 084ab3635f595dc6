"""Experiment tracking with DVCLive: what `dvc exp show` and `dvc plots show` read from a run.

DVCLive's Lightning logger writes params, per-step metrics and plots under <run>/dvclive/. dvc.yaml
declares those files itself, so DVCLive must not rewrite dvc.yaml (dvcyaml=None) nor make its own
experiment commits (save_dvc_exp=False): `dvc exp run` does that.

DVCLive comes with DVC. On a machine without it (a GPU box that only has torch and Lightning), runs log to
the CSV logger only and say so once: training must not need the experiment tracker.
"""

from __future__ import annotations

import csv
import importlib.util
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

CONFUSION_PLOT = "confusion_matrix"  # <run>/dvclive/plots/sklearn/confusion_matrix.json


def dvclive_logger_config(run_dir: Path) -> dict | None:
    """LightningCLI's class_path form of the DVCLive logger writing to <run_dir>/dvclive; None without DVCLive."""
    if importlib.util.find_spec("dvclive") is None:
        warnings.warn("dvclive is not installed: this run logs to metrics.csv only (no `dvc exp show` / "
                      "`dvc plots` data). `uv sync` installs it.", stacklevel=2)
        return None
    return {
        "class_path": "dvclive.lightning.DVCLiveLogger",
        # resume: a job that SLURM requeued or torchrun restarted appends to its logs from before the restart
        "init_args": {"dir": str(run_dir / "dvclive"), "dvcyaml": None, "save_dvc_exp": False, "resume": True},
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


class ContinuingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that it appends to a metrics.csv already in the folder instead of deleting
    it: a restarted job (SLURM requeue, torchrun restart) keeps the rows logged before the restart. A new run's
    folder is always fresh, so for it nothing changes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # the columns logged before, so that new ones extend them
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _check_log_dir_exists(self) -> None:  # Lightning's removes metrics.csv here
        pass
