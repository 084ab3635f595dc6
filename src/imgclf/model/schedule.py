"""The one-cycle learning-rate schedule as a pure function of (step, total steps), after airbench's `get_lr`.

The rate at a step depends on nothing but that step and the run's total, which each fit reads afresh from the
trainer. A resumed run, even one extended with a larger --trainer.max_epochs, therefore just continues on the
curve of its new total: nothing to re-plan, no scheduler internals to rewrite. A checkpoint keeps the step
count (LambdaLR's `last_epoch`); the function itself is not saved (LambdaLR saves no plain functions).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

START = 1 / 25  # the warm-up starts at max_lr / 25 (OneCycleLR's div_factor) ...
END = START / 1e4  # ... and the annealing ends near zero (its final_div_factor)


def one_cycle_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """The share of the peak rate at `step`: linear warm-up over `warmup_fraction` of the steps, then cosine
    annealing to END at the last step. Defined for any total (a 1-step run included) and past the end (END)."""
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return START + (1 - START) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    return END + (1 - END) * 0.5 * (1 + math.cos(math.pi * progress))


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> LambdaLR:
    """Every parameter group peaks at the learning rate it was built with (a backbone's may be lower)."""
    # A plain function, not a partial or object: LambdaLR would save and restore an object's attributes.
    return LambdaLR(optimizer, lambda step: one_cycle_factor(step, total_steps, warmup_fraction))
