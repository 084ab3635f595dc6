"""The training-time parts of airbench94 (KellerJordan/cifar10-airbench, legacy/airbench94.py) that live outside
its network, as Lightning callbacks a config lists under trainer.callbacks:

- Lookahead: every few steps the weights move to an average that trails them, and training continues from that
  average (an EMA that is copied back, unlike EMAWeightAveraging's, which training never sees). The average
  follows the weights closely at first and lags more towards the end: decay = 0.95**5 * (step / total)**3.
- FreezeWhiteningBias: the whitening layer's bias trains for the first epochs only.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from imgclf.errors import UserError


class Lookahead(L.Callback):
    """airbench94's Lookahead over the module's floating-point state (weights and BatchNorm statistics).

    Args:
        every_n_steps: steps between updates (airbench94: 5).
        decay: the average's weight at the last step (airbench94: 0.95 ** 5).
        power: how late the lag grows: decay at step s is `decay * (s / total) ** power` (airbench94: 3).
    """

    def __init__(self, every_n_steps: int = 5, decay: float = 0.95**5, power: float = 3.0) -> None:
        if every_n_steps < 1 or not 0.0 <= decay < 1.0:
            raise UserError(f"Lookahead needs every_n_steps >= 1 and 0 <= decay < 1, got {every_n_steps}, {decay}.")
        self.every_n_steps, self.decay, self.power = every_n_steps, decay, power
        self.average: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _tracked(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        # state_dict's tensors share storage with the module: updating them in place updates the module. A tensor
        # reachable under two names (AirbenchNet's `whiten` is also layers.0) is averaged once.
        tracked, seen = {}, set()
        for name, tensor in pl_module.state_dict().items():
            if tensor.is_floating_point() and tensor.data_ptr() not in seen:
                tracked[name] = tensor
                seen.add(tensor.data_ptr())
        return tracked

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After on_fit_start, so the average starts from the whitened first layer. A resumed fit brings its own,
        # which a checkpoint may have loaded onto the host.
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in self._tracked(pl_module).items()}
        else:
            self.average = {k: v.to(pl_module.device) for k, v in self.average.items()}

    @torch.no_grad()
    def _pull(self, pl_module: L.LightningModule, decay: float) -> None:
        """average <- lerp(average, weights, 1 - decay); weights <- average."""
        for name, current in self._tracked(pl_module).items():
            average = self.average[name]
            average.lerp_(current.to(average.dtype), 1.0 - decay)
            current.copy_(average)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, total = trainer.global_step, max(int(trainer.estimated_stepping_batches), 1)
        if step % self.every_n_steps == 0:
            self._pull(pl_module, self.decay * min(step / total, 1.0) ** self.power)
        if step == total and total >= self.every_n_steps:
            # airbench94's last step: the weights become the average. A run shorter than one interval never
            # updated it: its average still holds the initial weights, so it keeps the trained ones.
            self._pull(pl_module, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.average = state_dict["average"]


class FreezeWhiteningBias(L.Callback):
    """Stop training the whitening layer's bias after `epochs` epochs (airbench94: 3): its gradient is dropped
    before each later optimizer step, so SGD leaves it as it is (as airbench94's requires_grad=False does;
    toggling requires_grad itself would break DDP, whose reducer fixes the set of trained parameters)."""

    def __init__(self, epochs: int = 3) -> None:
        self.epochs = epochs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(getattr(pl_module, "net", None), "whiten", None) is None:
            raise UserError("FreezeWhiteningBias needs a network with a whitening layer (the airbench networks); "
                            "remove the callback from trainer.callbacks or choose such a network.")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.current_epoch >= self.epochs:
            pl_module.net.whiten.bias.grad = None
