"""On a real one-node SLURM cluster (tests/helpers/start_slurm.sh, run by .ci/run): the batch script of
docs/distributed.md, preempted with `scancel --signal=USR1`, saves a checkpoint, requeues itself (Lightning's
SLURMEnvironment) and the requeued job finishes the same run with nobody's help. Skipped without SLURM."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import QUIET_ARGS, REPO

pytestmark = pytest.mark.slow

# docs/distributed.md's batch script, with the tests' small run.
BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name=imgclf
#SBATCH --ntasks=1
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={log}
srun uv run --no-sync python main.py --runs_dir {runs} --trainer.max_epochs 6 {quiet}
"""


def cluster_up() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM is not installed (apt-get install slurmd slurmctld slurm-client munge)"
    if shutil.which("uv") is None:
        return "uv is not on PATH"
    up = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if up.returncode != 0 or not re.search(r"idle|mix|alloc", up.stdout):
        return f"no SLURM node is up (start one with tests/helpers/start_slurm.sh): {up.stderr.strip()}"
    return None


def job_field(job_id: str, field: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    found = re.search(rf"\b{field}=(\S+)", shown)
    return found.group(1) if found else ""


def wait_until(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))
def test_a_preempted_slurm_job_requeues_itself_and_finishes_its_run(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "job.log"
    script = tmp_path / "train.sbatch"
    script.write_text(BATCH_SCRIPT.format(log=log, runs=runs, quiet=" ".join(QUIET_ARGS)))
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], cwd=REPO, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    run_dir = runs / f"slurm-{job_id}-digits-small_cnn"
    try:
        wait_until(lambda: (run_dir / "last.ckpt").is_file(), 600, "the first epoch's last.ckpt")
        preempted = time.monotonic()
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # what --signal=USR1@90 sends
        # Lightning saves hpc_ckpt_1.ckpt and runs `scontrol requeue`; SLURM stops the job and queues it again
        # with its start time 2 minutes ahead: start it now (scontrol update StartTime=now, as the docs say).
        wait_until(lambda: job_field(job_id, "JobState") == "PENDING" and job_field(job_id, "Restarts") == "1",
                   180, "the job to be requeued")
        requeued = time.monotonic()
        wait_until(lambda: subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                                          capture_output=True).returncode == 0, 60, "scontrol to release the job")
        wait_until(lambda: log.is_file() and "Resuming" in log.read_text(), 300, "the requeued job to resume")
        resumed = time.monotonic()
        wait_until(lambda: job_field(job_id, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 600,
                   "the job to end")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    output = log.read_text()
    print(f"SLURM: USR1 -> requeued (pending) {requeued - preempted:.1f} s; requeued -> resumed training "
          f"{resumed - requeued:.1f} s")
    assert job_field(job_id, "JobState") == "COMPLETED", output[-3000:]
    # Lightning saved hpc_ckpt_1.ckpt on USR1; training goes on until SLURM stops the job, so an epoch may end
    # (last.ckpt) after it: the requeued job resumes from whichever checkpoint is newest.
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file(), output[-3000:]
    resumed_from = re.search(r"^Resuming (\S+) ", output, re.MULTILINE)
    assert resumed_from and Path(resumed_from[1]).parent == run_dir, output[-3000:]
    # SLURM's stop after the requeue is a SIGTERM, on which Lightning may save hpc_ckpt_2.ckpt as well.
    assert re.fullmatch(r"hpc_ckpt_\d+\.ckpt|last\.ckpt", Path(resumed_from[1]).name), output[-3000:]
    assert sorted(p.name for p in runs.iterdir()) == ["latest", run_dir.name]
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    epochs = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/acc"])["epoch"].astype(int).tolist()
    assert sorted(epochs) == list(range(6))  # the epochs from before the requeue kept, none validated twice
    assert Path(runs / "latest").resolve() == run_dir.resolve()
