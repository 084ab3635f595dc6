"""Test-only callbacks that main.py loads with `--trainer.callbacks+=ddp_probe.<Name>` (tests/ on PYTHONPATH).

They record what each DDP rank saw, or break one rank on purpose; production code knows nothing of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class ShardRecorder(L.Callback):
    """Writes <out_dir>/rank<R>.json: per epoch the train indices this rank was served and the labels that
    arrived in its batches, the number of test images it evaluated, and the folders and checkpoint it used."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.epochs: list[dict] = []
        self.test_images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({"indices": trainer.train_dataloader.shard_indices().tolist(), "labels": []})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.epochs[-1]["labels"] += batch[1].tolist()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_images += len(batch[1])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "world_size": trainer.world_size,
            "batch_size": trainer.datamodule.batch_size,
            "epochs": self.epochs,
            "test_images": self.test_images,
            "test_ckpt": trainer.ckpt_path,
            "root_dir": trainer.default_root_dir,
            "checkpoint_dir": trainer.checkpoint_callback.dirpath,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class FailOnRank(L.Callback):
    """Breaks one rank at its third training step: raises, or hangs for `hang_s` seconds when it is > 0.
    Writes the time it did so to `stamp_file`, so a test can tell how long the job lived on."""

    def __init__(self, stamp_file: str, rank: int = 1, hang_s: float = 0.0) -> None:
        self.stamp_file, self.rank, self.hang_s = Path(stamp_file), rank, hang_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_rank != self.rank or trainer.current_epoch or batch_idx != 2:
            return
        self.stamp_file.write_text(str(time.time()))
        if self.hang_s:
            time.sleep(self.hang_s)
        else:
            raise RuntimeError(f"failure forced on rank {self.rank} by the test")
