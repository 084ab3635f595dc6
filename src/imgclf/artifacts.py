"""What a run leaves for the user in its folder: metrics.json, confusion matrix (CSV + PNG), curves PNG.

Written by a callback on global rank 0 only, so a DDP run writes each file once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # files only; no display needed on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402


def save_confusion_matrix(confusion: torch.Tensor, class_names: list[str], folder: Path) -> None:
    frame = pd.DataFrame(confusion.numpy(), index=class_names, columns=class_names)
    frame.index.name = "true\\predicted"
    frame.to_csv(folder / "confusion_matrix.csv")
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
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)


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
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def point_latest_at(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)  # atomic: runs/latest never dangles or vanishes


class RunArtifacts(L.Callback):
    """Creates the run folder when training starts and writes the run's artifacts into it at the end of
    testing (global rank 0 only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fit_seconds: float | None = None
        self._fit_start = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            point_latest_at(self.folder)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if self.fit_seconds is not None:
            metrics["fit_seconds"] = round(self.fit_seconds, 3)
        (self.folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if getattr(pl_module, "test_confusion", None) is not None:
            save_confusion_matrix(pl_module.test_confusion, pl_module.class_names, self.folder)
        if (self.folder / "metrics.csv").is_file():
            save_training_curves(self.folder / "metrics.csv", self.folder / "training_curves.png")
