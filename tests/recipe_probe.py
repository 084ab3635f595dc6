"""Test-only callbacks for the multi-device recipe tests, loaded by main.py with
`--trainer.callbacks+=recipe_probe.<Name>` (tests/ on PYTHONPATH); production code knows nothing of them."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from imgclf.model.averaging import EMAWeightAveraging


class RecipeRecorder(L.Callback):
    """Writes <out_dir>/rank<R>.json at the end of training: the batch each rank took, its steps, how many
    updates its EMA holds, and its whitening filters."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
        record = {
            "world_size": trainer.world_size,
            "batch_size": trainer.datamodule.batch_size,
            "steps_per_epoch": trainer.num_training_batches,
            "global_step": trainer.global_step,
            "ema_start_step": ema._start_step,
            "ema_updates": int(ema._average_model.n_averaged),
            "whitening": pl_module.net.whiten.weight.flatten().tolist(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class PoisonOnRank(L.Callback):
    """Sets one rank's weights to NaN before optimizer step `step`: that rank's loss is NaN at `step`, the
    others' one step later (the averaged gradients carry the NaN over)."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))
