"""Counts host reads of tensor values inside training steps, on a CPU, where none of them costs anything but
each would be a host-device sync on a GPU: the CPU stand-in for torch.cuda.set_sync_debug_mode.

Inside the step's hooks (the first callback's on_train_batch_start to the LightningModule's on_train_batch_end,
the last hook of a step) Tensor.item, __bool__, __int__, __float__, tolist, numpy and cpu, and tensors created
from Python values with torch.tensor / torch.as_tensor (a host-to-device copy on a GPU), are recorded with the
line that called them, or raise.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable

import lightning as L
import torch

READS = ("item", "__bool__", "__int__", "__float__", "tolist", "numpy", "cpu")
CREATIONS = ("tensor", "as_tensor")


class HostRead(RuntimeError):
    """A tensor value was read on the host inside a training step."""


class HostReadCounter(L.Callback):
    """Put it first in the Trainer's callbacks. `places` counts reads by calling line; `steps` counts the steps
    watched (all but the first `warmup_steps`)."""

    def __init__(self, raise_on_read: bool = False, warmup_steps: int = 1) -> None:
        self.raise_on_read, self.warmup_steps = raise_on_read, warmup_steps
        self.places: Counter[str] = Counter()
        self.steps = 0
        self._saved: list[tuple[object, str, Callable]] = []

    @property
    def reads(self) -> int:
        return sum(self.places.values())

    def _record(self, name: str) -> None:
        caller = next((f for f in reversed(traceback.extract_stack()[:-2])
                       if "host_reads.py" not in f.filename), None)
        place = f"{name} at {caller.filename.split('site-packages/')[-1]}:{caller.lineno}" if caller else name
        if self.raise_on_read:
            raise HostRead(f"host read inside a training step: {place}")
        self.places[place] += 1

    def _patch(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._saved.append((torch.Tensor, name, original))
            setattr(torch.Tensor, name, self._reading(name, original))
        for name in CREATIONS:
            original = getattr(torch, name)
            self._saved.append((torch, name, original))
            setattr(torch, name, self._creating(name, original))

    def _unpatch(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)

    def _reading(self, name: str, original: Callable) -> Callable:
        def read(tensor, *args, **kwargs):
            self._record(f"Tensor.{name}")  # on this CPU every tensor stands for one on the GPU
            return original(tensor, *args, **kwargs)
        return read

    def _creating(self, name: str, original: Callable) -> Callable:
        def create(data, *args, **kwargs):
            if not isinstance(data, torch.Tensor):
                self._record(f"torch.{name}")
            return original(data, *args, **kwargs)
        return create

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Not in the first steps: Lightning creates each logged value's accumulator once, from host values.
        if trainer.global_step >= self.warmup_steps:
            self._patch()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module's hook is the step's last: Lightning calls it after every callback's on_train_batch_end.
        own_hook = pl_module.on_train_batch_end

        def end_of_step(*args, **kwargs):
            try:
                return own_hook(*args, **kwargs)
            finally:
                if self._saved:
                    self._unpatch()
                    self.steps += 1
        pl_module.on_train_batch_end = end_of_step

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._unpatch()
