"""This project's pipeline as the benchmark runs it: built from main.py's arguments (`--config X ...`) by
main.py's own loader (imgclf.train.config), but validating on the official test set at fixed fractions of each
epoch, with a clock that counts training time only."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import instantiate_class

from imgclf.bench.curve import Curve
from imgclf.data.datamodule import ImageDataModule
from imgclf.model.classifier import ImageClassifier
from imgclf.train.config import load


class TestAsValidation(ImageDataModule):
    """The whole training set for training (built with --data.val_fraction 0) and the test set as validation
    (the benchmark's yardstick); `limit` = (train images, test images) cuts both for a quick check.

    It takes ImageDataModule's arguments unchanged, so main.py's parser reads a config for it as for training.
    """

    limit: tuple[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.limit:
            for name, n in [("train", self.limit[0]), ("test", self.limit[1])]:
                self.splits[name] = self.splits[name].head(n)
        # Validation reads the test split: its batches, and the lookup of a broken image's name, come from it.
        self.splits["val"] = self.splits["test"]


class TrainClock(L.Callback):
    """Training seconds (evaluation excluded) and images seen at each validation; stops the run once
    `stop_at` accuracy or `budget_seconds` of training is reached."""

    def __init__(self, curve: Curve, budget_seconds: float, stop_at: float) -> None:
        self.curve, self.budget_seconds, self.stop_at = curve, budget_seconds, stop_at
        self.seconds, self.images, self._start = 0.0, 0, 0.0

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # the clock must wait for queued kernels
        return time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = self._now(pl_module)  # includes the whitening init and, with compile, compilation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])  # a shape, not a value: no host sync

    def on_validation_start(self, trainer, pl_module) -> None:
        self.seconds += self._now(pl_module) - self._start

    def on_validation_end(self, trainer, pl_module) -> None:
        self.curve.add(self.seconds, self.images, float(trainer.callback_metrics["val/acc"]))
        if self.seconds >= self.budget_seconds or self.curve.best_accuracy >= self.stop_at:
            trainer.should_stop = True
        self._start = self._now(pl_module)


def build(main_args: list[str], data_root: Path | None, limit: tuple[int, int] | None,
          **trainer_overrides) -> tuple[dict, ImageClassifier, TestAsValidation, list[L.Callback]]:
    """Data, model, Trainer arguments and callbacks from main.py's arguments (e.g. ["--config", X]);
    logging, checkpoints and progress bars off."""
    root = ["--data.root", str(data_root)] if data_root else []
    loaded = load(overrides=[*main_args, *root, "--data.val_fraction", "0"], datamodule_class=TestAsValidation)
    data, model = loaded.datamodule, loaded.model
    data.limit = limit
    trainer_config = loaded.config.trainer.as_dict()
    callbacks = [instantiate_class((), c) for c in trainer_config.pop("callbacks", None) or []]
    callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer_config.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, **trainer_overrides)
    return trainer_config, model, data, callbacks


def run_pipeline(main_args: list[str], data_root: Path | None, budget_seconds: float, stop_at: float,
                 evals_per_epoch: int, limit: tuple[int, int] | None = None) -> Curve:
    trainer_config, model, data, callbacks = build(main_args, data_root, limit, check_val_every_n_epoch=1,
                                                   val_check_interval=1 / evals_per_epoch)
    curve = Curve(f"this pipeline ({model.hparams.network})")
    trainer = L.Trainer(**trainer_config, callbacks=[*callbacks, TrainClock(curve, budget_seconds, stop_at)])
    trainer.fit(model, datamodule=data)
    return curve
