"""Stop a run whose loss stops being a finite number, before a diverged checkpoint is written.

Once the loss is NaN or infinite the weights are (or soon will be) too, and every later step is wasted time.
"""

from __future__ import annotations

import lightning as L
import torch

from imgclf.errors import UserError

ADVICE = ("Training stopped there; no checkpoint of the diverged weights was written (best.ckpt and last.ckpt, if "
          "any, hold the last finite epoch). Try a lower --model.lr (e.g. a tenth), a longer warm-up "
          "(--model.warmup_fraction), or --trainer.gradient_clip_val 1.0; with 16-bit precision, try bf16-mixed or "
          "32.")


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


class DivergenceGuard(L.Callback):
    """Checks every training step's loss; raises `TrainingDiverged` at the first non-finite one.

    On an accelerator the flag stays on the device and is read every `check_every_n_steps` steps and before
    each validation (hence before each checkpoint), so the host waits on the device no more often than the
    logger does (with several processes, the check is also a collective: any rank's divergence stops all).
    In a single CPU process reading it costs nothing and happens every step.
    """

    def __init__(self, check_every_n_steps: int = 50, read_every_step_on_cpu: bool = True) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.read_every_step_on_cpu = read_every_step_on_cpu  # False: as on an accelerator (tests of host reads)
        self._first_bad_step: torch.Tensor | None = None  # on the device; -1 while every loss is finite
        self._learning_rates: dict[int, float] = {}  # by step, since the last check

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_bad_step = torch.tensor(-1, device=pl_module.device)
        self._learning_rates = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._learning_rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad_step is None:
            return
        step = trainer.global_step - 1  # the optimizer step this loss was computed for has been taken
        bad_here = ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(bad_here & (self._first_bad_step < 0), step, self._first_bad_step)
        free_to_read = (self.read_every_step_on_cpu and pl_module.device.type == "cpu"
                        and trainer.world_size == 1)  # no device wait, no collective
        if free_to_read or trainer.global_step % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)
            self.check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
        self.check_weights(trainer, pl_module)

    def check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before each checkpoint: every parameter and buffer finite. A loss can stay finite while a BatchNorm
        running_var overflows (training normalizes by the batch's own statistics, not the running ones), and
        the checkpoint then holds a model that predicts nothing."""
        tensors = [(name, t) for name, t in [*pl_module.named_parameters(), *pl_module.named_buffers()]
                   if t.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([t.detach().isfinite().all() for _, t in tensors])
        any_bad = trainer.strategy.reduce((~finite).any().int(), reduce_op="max")  # any rank's
        if not int(any_bad):
            return
        bad = [name for (name, _), ok in zip(tensors, finite.tolist(), strict=True) if not ok]
        raise TrainingDiverged(
            f"Training diverged: by the end of epoch {trainer.current_epoch} (step {trainer.global_step}) the "
            f"weights held NaN or infinity ({len(bad)} tensors, e.g. {bad[:3]}) although the loss was still "
            f"finite. {ADVICE}")

    def check(self, trainer: L.Trainer) -> None:
        if self._first_bad_step is None:
            return
        # The earliest first-bad step over ranks (a rank that stayed finite counts as never): the step that
        # broke one rank breaks the others one step later, through the averaged gradients.
        never = torch.iinfo(self._first_bad_step.dtype).max
        first_bad = torch.where(self._first_bad_step < 0, never, self._first_bad_step)
        step = int(trainer.strategy.reduce(first_bad, reduce_op="min"))
        if step == never:
            self._learning_rates = {k: v for k, v in self._learning_rates.items() if k >= trainer.global_step}
            return
        lr = self._learning_rates.get(step)
        at_lr = f" at learning rate {lr:.3g}" if lr is not None else ""
        raise TrainingDiverged(
            f"Training diverged: the loss became NaN or infinite at step {step} (epoch {trainer.current_epoch})"
            f"{at_lr}. {ADVICE}"
        )
