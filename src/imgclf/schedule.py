"""The one-cycle learning-rate schedule: built for any step count, and re-planned when a resumed run's total
number of steps differs from the one its checkpoint was planned for (e.g. a larger --trainer.max_epochs).
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import OneCycleLR

MIN_ONE_CYCLE_STEPS = 3  # one warm-up step and one annealing step at least; shorter runs keep a constant rate


def warmup_share(warmup_fraction: float, total_steps: int) -> float:
    """`warmup_fraction`, moved just enough that both phases get at least one whole step.

    OneCycleLR divides by the length of each phase (pct_start * total - 1 steps, then the rest): a phase of
    zero steps raises ZeroDivisionError, which a run of a few batches (limit_train_batches 2) would meet.
    """
    return float(min(max(warmup_fraction, 2 / total_steps), (total_steps - 1) / total_steps))


def one_cycle(optimizer: torch.optim.Optimizer, max_lrs: list[float], total_steps: int,
              warmup_fraction: float) -> OneCycleLR | None:
    """OneCycleLR over `total_steps` (None, i.e. a constant rate, for runs too short to warm up and anneal)."""
    if total_steps < MIN_ONE_CYCLE_STEPS:
        return None
    return OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                      pct_start=warmup_share(warmup_fraction, total_steps))


def replan_one_cycle(scheduler: OneCycleLR, total_steps: int, warmup_fraction: float) -> None:
    """Stretch (or shrink) a restored OneCycleLR to `total_steps`, keeping the steps already taken.

    A checkpoint restores the schedule with the total it was planned for, so resuming with a larger
    max_epochs would step past its end (OneCycleLR raises "Tried to step N times"). From here on the rate
    follows the one-cycle curve of a run planned with the new total from the start; when the old run had
    already annealed, that is a warm restart.
    """
    if scheduler.total_steps == total_steps or total_steps < MIN_ONE_CYCLE_STEPS:
        return
    rank_zero_info(f"Resumed at step {scheduler.last_epoch}: the one-cycle learning-rate schedule, planned for "
                   f"{scheduler.total_steps} steps, now spans {total_steps}.")
    warmup_end = warmup_share(warmup_fraction, total_steps) * total_steps - 1
    scheduler.total_steps = total_steps
    scheduler._schedule_phases[0]["end_step"] = warmup_end  # torch keeps the phase bounds only here
    scheduler._schedule_phases[-1]["end_step"] = total_steps - 1
