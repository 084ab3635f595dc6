"""Multi-process training (DDP) helpers: a run name every rank agrees on, a bounded process-group timeout,
the per-device share of a global batch, and settings that cannot work checked before training starts.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import Strategy, StrategyRegistry

from imgclf.errors import UserError


def launcher_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """An id that every process of a multi-process job started by torchrun or srun sees, else None.

    Such processes start independently (a timestamp taken in each may differ by a second), so they name the
    run folder after the job instead. Single processes and ranks that Lightning re-launches return None.
    """
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id is not None and int(env.get("WORLD_SIZE", "1")) > 1:
        if run_id == "none":  # torchrun's default when --rdzv-id is not given: the same for every job
            raise UserError(
                "torchrun was started without --rdzv-id, so the processes of this job cannot agree on a run "
                "folder name that differs from earlier jobs. Pass a unique id, e.g. "
                "`torchrun --rdzv-id=$SLURM_JOB_ID ...` or `--rdzv-id=$(date +%Y%m%d-%H%M%S)`, or set "
                "IMGCLF_RUN_DIR=runs/<name> on every node, or give the run a name: --run_name NAME."
            )
        return "torchrun-" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    # Inside an srun step: job and step ids are shared by the tasks (and kept when SLURM requeues the job).
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
    # A batch script's own process: named after the job (None in `salloc` shells), so that the job, requeued
    # after preemption with the same id, finds its folder again and continues the run.
    if env is os.environ and (job_id := SLURMEnvironment.job_id()) is not None:
        return f"slurm-{job_id}"
    return None


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How often the launcher restarted this job with the same arguments: SLURM after a requeue
    (SLURM_RESTART_COUNT), torchrun after a worker failed (TORCHELASTIC_RESTART_COUNT, --max-restarts)."""
    return max(int(env.get("SLURM_RESTART_COUNT") or 0), int(env.get("TORCHELASTIC_RESTART_COUNT") or 0))


def with_timeout(strategy: object, timeout: timedelta) -> object:
    """Build a strategy given by name (ddp, ddp_find_unused_parameters_true, fsdp...) with `timeout`.

    The timeout bounds how long a rank waits in a collective (gradient all-reduce, barrier, metric sync) for
    a peer that hangs, so a stuck job fails with a timeout error instead of blocking until it is killed.
    Strategy objects configured by the user, and names of strategies without a timeout, pass unchanged.
    """
    if timeout <= timedelta(0):
        raise UserError("--ddp_timeout_s must be a positive number of seconds, got "
                        f"{timeout.total_seconds():g}.")
    if not isinstance(strategy, str) or strategy not in StrategyRegistry:
        return strategy
    entry = StrategyRegistry[strategy]
    if "timeout" not in inspect.signature(entry["strategy"]).parameters:
        return strategy
    return entry["strategy"](**{**entry["init_params"], "timeout": timeout})


def timeout_when_chosen_automatically(trainer: L.Trainer, requested: object, timeout: timedelta) -> None:
    """Give `timeout` to the strategy that Lightning picked for `strategy="auto"` (DDP when devices > 1).

    with_timeout sees only the name "auto" before the Trainer resolves it. DDPStrategy (and FSDP) read their
    `_timeout` when the process group starts, in fit, so setting it on the built Trainer still takes effect;
    Lightning offers no public setter.
    """
    if requested == "auto" and hasattr(trainer.strategy, "_timeout"):
        trainer.strategy._timeout = timeout


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """The batch each of `world_size` processes takes so that together they step on `global_batch_size`."""
    per_device, remainder = divmod(global_batch_size, world_size)
    if remainder or per_device < 2:
        raise UserError(
            f"--data.global_batch_size {global_batch_size} cannot be split over {world_size} processes "
            f"(devices x nodes): it must be a multiple of {world_size} with at least 2 images per process. "
            f"Use e.g. {max(2, round(global_batch_size / world_size)) * world_size}, or set "
            f"--data.batch_size (per device) instead."
        )
    return per_device


def check_trainer(trainer: L.Trainer, sync_batchnorm: bool, global_batch_size: int | None) -> None:
    """Refuse, before any process starts, settings that would only fail deep inside training."""
    if global_batch_size is not None:
        per_device_batch_size(global_batch_size, trainer.world_size)
    if sync_batchnorm and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        raise UserError(
            "--trainer.sync_batchnorm true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU. Drop the "
            "flag for CPU runs (each process then normalizes with its own batch statistics)."
        )


def broadcast_to_device(strategy: Strategy, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rank 0's `tensor` on every rank, on that rank's `device`.

    Lightning's `strategy.broadcast` pickles the object, and a pickled CUDA tensor unpickles onto the sender's
    GPU (cuda:0) on every rank: sent from the host, it lands on the host, and each rank moves it to its own GPU.
    """
    return strategy.broadcast(tensor.cpu()).to(device)
