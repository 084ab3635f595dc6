"""Exponential moving average of the weights, on top of Lightning's own WeightAveraging callback.

Validation, checkpoints and the weights left after training use the average: it smooths out the noise of the
last high-learning-rate steps, which a short run has no time to anneal away.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMAWeightAveraging(WeightAveraging):
    """EMA of the parameters and BatchNorm statistics, updated every `every_n_steps` optimizer steps.

    Args:
        decay: weight of the old average at each update (0.99 averages over about the last 100 updates).
        every_n_steps: update interval; a larger one costs less per step (airbench's Lookahead uses 5).
        start_step: first step to average from; the early, random weights only drag the average down.
    """

    def __init__(self, decay: float = 0.99, every_n_steps: int = 1, start_step: int = 0) -> None:
        # multi_avg_fn: one fused foreach-lerp over all tensors instead of a Python loop per tensor.
        # device=None: the average lives on the training device (the module's, which Lightning sets to the
        # strategy's root device before callbacks' setup), never on the host, which would copy all parameters
        # there every step. Said explicitly: Lightning 2.5 defaulted to device="cpu".
        super().__init__(device=None, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.every_n_steps, self.start_step = every_n_steps, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.every_n_steps == 0

    def _follow_until_started(self, pl_module: L.LightningModule) -> None:
        """Until its first update the average holds the initial weights: make it hold the current ones, so that
        validation, checkpoints and the final weights of a run shorter than `start_step` are the trained weights.
        Called only at validation, checkpoints and the end of fit: reading n_averaged syncs with the GPU."""
        average = self._average_model
        if average is not None and int(average.n_averaged) == 0:
            average.update_parameters(pl_module)  # the first update copies the weights
            average.n_averaged.zero_()  # and the first real update copies them again

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_train_end(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The average belongs to one fit. Kept after it, a later validate() would swap these stale weights in.
        if stage == TrainerFn.FITTING:
            self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Only resuming a fit needs the raw weights back (training continues from them). Testing, validating or
        # predicting must keep what the module just loaded from checkpoint["state_dict"]: the average, the
        # weights that are saved and exported. Lightning's own hook restores the raw weights whenever an
        # average model exists, so trainer.test(ckpt_path="best") after fit scored other weights.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
