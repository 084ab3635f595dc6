"""Exponential moving average of the weights, on top of Lightning's own WeightAveraging callback.

Validation, checkpoints and the weights left after training use the average: it smooths out the noise of the
last high-learning-rate steps, which a short run has no time to anneal away.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from imgclf.errors import UserError


class EMAWeightAveraging(WeightAveraging):
    """EMA of the parameters and BatchNorm statistics, updated every `every_n_steps` optimizer steps.

    Args:
        decay: weight of the old average at each update (0.99 averages over about the last 100 updates).
        every_n_steps: update interval; a larger one costs less per step (airbench's Lookahead uses 5).
        start_epoch: how many epochs (fractions allowed) to train before averaging; the early, random weights
            only drag the average down. Counted in epochs, not steps, so the recipe holds on any number of
            devices (with a per-device batch, N devices take N times fewer steps per epoch).
    """

    def __init__(self, decay: float = 0.99, every_n_steps: int = 1, start_epoch: float = 0.0) -> None:
        # multi_avg_fn: one fused foreach-lerp over all tensors instead of a Python loop per tensor.
        # device=None: the average lives on the training device (the module's, which Lightning sets to the
        # strategy's root device before callbacks' setup), never on the host, which would copy all parameters
        # there every step. Said explicitly: Lightning 2.5 defaulted to device="cpu".
        super().__init__(device=None, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._lerp = get_ema_multi_avg_fn(decay)
        self.every_n_steps, self.start_epoch = every_n_steps, start_epoch
        self._start_step = 0  # start_epoch in optimizer steps, known once the trainer knows its batches
        # Whether the average holds an update yet, kept on the host: AveragedModel.update_parameters asks its
        # n_averaged tensor (two reads of a device value, each a host-device sync, at every update).
        self._started: bool | None = None  # None: unknown (read n_averaged once, outside the training step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        if math.isinf(batches) and self.start_epoch:
            raise UserError("EMAWeightAveraging's start_epoch needs training batches of known number per epoch.")
        steps_per_epoch = 0 if math.isinf(batches) else math.ceil(batches / trainer.accumulate_grad_batches)
        self._start_step = math.ceil(self.start_epoch * steps_per_epoch)
        self._started = self._is_started()  # a resumed run's average may have started already

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self._start_step and step_idx % self.every_n_steps == 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Lightning's own hook, with the update below in place of AveragedModel.update_parameters.
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update_average(pl_module)
            self._latest_update_step = trainer.global_step

    def _is_started(self) -> bool:
        if self._started is None and self._average_model is not None:
            self._started = int(self._average_model.n_averaged) > 0  # one read, outside the training step
        return bool(self._started)

    def _update_average(self, pl_module: L.LightningModule) -> None:
        """AveragedModel.update_parameters without a host read: the first update copies, later ones lerp."""
        average = self._average_model
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        pairs = zip([*average.module.parameters(), *average.module.buffers()],
                    [*pl_module.parameters(), *pl_module.buffers()], strict=True)
        for ours, theirs in pairs:
            group = groups.setdefault((ours.device, ours.dtype), ([], []))
            group[0].append(ours.detach())
            group[1].append(theirs.detach())
        for ours, theirs in groups.values():  # one fused kernel per device and dtype, as AveragedModel does
            if self._started:
                self._lerp(ours, theirs, average.n_averaged)
            else:
                for a, b in zip(ours, theirs, strict=True):
                    a.copy_(b)
        average.n_averaged += 1  # on the device: counted, never read here
        self._started = True

    def _follow_until_started(self, pl_module: L.LightningModule) -> None:
        """Until its first update the average holds the initial weights: make it hold the current ones, so that
        validation, checkpoints and the final weights of a run shorter than `start_epoch` are the trained weights.
        Called only at validation, checkpoints and the end of fit."""
        if self._average_model is not None and not self._is_started():
            self._update_average(pl_module)  # the first update copies the weights
            self._average_model.n_averaged.zero_()  # and the first real update copies them again
            self._started = False

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
            self._average_model, self._started = None, None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Only resuming a fit needs the raw weights back (training continues from them). Testing, validating or
        # predicting must keep what the module just loaded from checkpoint["state_dict"]: the average, the
        # weights that are saved and exported. Lightning's own hook restores the raw weights whenever an
        # average model exists, so trainer.test(ckpt_path="best") after fit scored other weights.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            self._started = None  # the restored average decides
