"""A callback for tests/test_torchrun_restart.py: rank 1 fails once, at the end of epoch 1 of the job's first
attempt (TORCHELASTIC_RESTART_COUNT 0), as a crashed worker would."""

import os

import lightning as L


class CrashRankOneOnce(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
        if trainer.global_rank == 1 and trainer.current_epoch == 1 and first_attempt:
            raise RuntimeError("crash_once: rank 1 fails once")
