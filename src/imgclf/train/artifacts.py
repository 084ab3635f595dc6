"""What a run leaves for the user in its folder: metrics.json, confusion matrix (CSV + PNG), curves PNG.

Written by a callback on global rank 0 only, so a DDP run writes each file once, and each file beside its
final name and renamed into place, so a crash or a full disk never leaves a truncated one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # files only; no display needed on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from imgclf.atomic import atomic_path, write_json  # noqa: E402
from imgclf.train.run_folder import point_latest_at  # noqa: E402


def _save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path, "plot") as temporary:
        fig.savefig(temporary, dpi=100, format="png")  # the temporary name has no .png to infer it from
    plt.close(fig)


def save_confusion_matrix(confusion: torch.Tensor, class_names: list[str], folder: Path) -> None:
    frame = pd.DataFrame(confusion.numpy(), index=class_names, columns=class_names)
    frame.index.name = "true\\predicted"
    with atomic_path(folder / "confusion_matrix.csv", "confusion matrix") as temporary:
        frame.to_csv(temporary)
    n = len(class_names)
    size = min(max(5.0, 0.45 * n + 2), 20.0)  # 196 Stanford Cars classes still fit a readable page
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    if n <= 50:  # past that, names overlap; the CSV holds them
        ax.set(xticks=range(n), yticks=range(n))
        ax.set_xticklabels(class_names, rotation=90)
        ax.set_yticklabels(class_names)
    if n <= 20:  # counts stay readable up to about 20 classes
        threshold = confusion.max().item() / 2
        for (i, j), count in pd.DataFrame(confusion.numpy()).stack().items():
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")
    fig.tight_layout()
    _save_figure(fig, folder / "confusion_matrix.png")


def save_training_curves(metrics_csv: Path, out: Path) -> None:
    """Loss and accuracy per epoch, from the CSV logger's metrics.csv."""
    frame = pd.read_csv(metrics_csv)
    per_epoch = frame.groupby("epoch").last()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for column, label in [("train/loss_epoch", "train"), ("val/loss", "val")]:
        if column in per_epoch:
            loss_ax.plot(per_epoch.index, per_epoch[column], marker="o", label=label)
    for column, label in [("train/acc", "train"), ("val/acc", "val")]:
        if column in per_epoch:
            acc_ax.plot(per_epoch.index, per_epoch[column], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Top-1 accuracy")
    for ax in (loss_ax, acc_ax):
        if ax.get_legend_handles_labels()[0]:  # a run that trained no epoch (a re-test) has no curves
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, out)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a diverged metric is written as null, so every parser still reads the file."""
    return value if math.isfinite(value) else None


class RunArtifacts(L.Callback):
    """Points runs/latest at the run once it holds a checkpoint, and writes the run's artifacts into its
    folder at the end of testing (global rank 0 only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fit_seconds: float | None = None
        self._fit_start = 0.0
        self._latest_moved = False
        self.training_started = False  # False: the run was refused during setup and its folder holds no work

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training_started = True

    def _point_latest_once_checkpointed(self, trainer: L.Trainer) -> None:
        """runs/latest moves to this run once it holds a checkpoint to resume or test, not before: a write that
        failed (full disk, file-size limit) must not leave it pointing at a folder with nothing to resume.
        Lightning runs checkpoint callbacks after all others, so an epoch's checkpoint is seen at the next
        epoch's start, at the end of fitting, or when an interrupt or error stops the run."""
        if trainer.is_global_zero and not self._latest_moved and any(
                (self.folder / name).is_file() for name in ("last.ckpt", "best.ckpt")):
            point_latest_at(self.folder)
            self._latest_moved = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._point_latest_once_checkpointed(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._point_latest_once_checkpointed(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start
        self._point_latest_once_checkpointed(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: finite_or_none(float(v)) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if self.fit_seconds is not None:
            metrics["fit_seconds"] = round(self.fit_seconds, 3)
        write_json(self.folder / "metrics.json", metrics, "test metrics")
        if getattr(pl_module, "test_confusion", None) is not None:
            save_confusion_matrix(pl_module.test_confusion, pl_module.class_names, self.folder)
        if (self.folder / "metrics.csv").is_file():
            save_training_curves(self.folder / "metrics.csv", self.folder / "training_curves.png")
