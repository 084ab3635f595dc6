"""Environment checks for check_env.py: what is wrong with this machine's Python, GPU, CUDA, DDP and data.

The parent process never touches CUDA: the GPU probe and the two all-reduce ranks run as child
processes, started together and killed at the timeout, so a broken driver cannot hang the checker.
"""

from __future__ import annotations

import time
from pathlib import Path

from imgclf.env.checks import distributed_checks, gpu_checks, nvidia_smi, software_checks, start_allreduce
from imgclf.env.data import dataset_checks, dvc_remote_check
from imgclf.env.report import Check, exit_code, finish, render_json, render_text, start_python

__all__ = ["Check", "check_environment", "report"]


def check_environment(root: Path, require_gpu: bool = False, timeout: float = 90.0) -> list[Check]:
    """Run every check; `root` is the project folder (data/ and .dvc/ live there)."""
    software = software_checks()
    probe_proc = start_python("from imgclf.env.probe import probe_torch; probe_torch()")
    rank_procs = start_allreduce(timeout)
    deadline = time.monotonic() + timeout  # one for all children: they run side by side
    # The parent's own checks run while the children import torch.
    data = dataset_checks(root / "data") + [dvc_remote_check(root)]
    smi = nvidia_smi()
    probe = finish(probe_proc, timeout, deadline)
    ranks = [finish(proc, timeout, deadline) for proc in rank_procs]
    return software + gpu_checks(probe, smi, require_gpu) + distributed_checks(probe, ranks) + data


def report(root: Path, require_gpu: bool = False, as_json: bool = False, timeout: float = 90.0) -> int:
    """Print the checks (text or one JSON object); the exit code is 1 when any check FAILed."""
    checks = check_environment(root, require_gpu, timeout)
    print(render_json(checks, require_gpu) if as_json else render_text(checks))
    return exit_code(checks)
