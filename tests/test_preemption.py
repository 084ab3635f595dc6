"""A preempted or restarted job finishes by itself: SLURM's requeue (Lightning's SLURMEnvironment auto-requeue,
`scontrol` mocked as Lightning's own tests do), torchrun's restart, and `--ckpt_path last`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUIET_ARGS, REPO

from imgclf.errors import UserError
from imgclf.train.run_folder import newest_checkpoint

# What a batch script's process sees (sbatch --job-name=imgclf --ntasks=1); no srun step.
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "imgclf", "SLURM_NTASKS": "1", "SLURM_NODELIST": "localhost"}

# main.py with `scontrol requeue` replaced: it records the command, then does what SLURM does to a requeued
# job's running process (SIGTERM).
MOCKED_SCONTROL = """
import os, signal, sys, json
import lightning.pytorch.trainer.connectors.signal_connector as connector
def call(cmd, *args, **kwargs):
    open(os.environ["SCONTROL_LOG"], "a").write(json.dumps(cmd) + "\\n")
    os.kill(os.getpid(), signal.SIGTERM)
    return 0
connector.call = call
import runpy
sys.argv[0] = "main.py"
runpy.run_path("main.py", run_name="__main__")
"""


def slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return {**env, **SLURM_ENV, "SCONTROL_LOG": str(tmp_path / "scontrol.log"), **extra}


def epochs_logged(run_dir: Path) -> list[int]:
    frame = pd.read_csv(run_dir / "metrics.csv")
    return sorted(frame.dropna(subset=["val/acc"])["epoch"].astype(int).tolist())


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_continues_its_run(tmp_path):
    runs = tmp_path / "runs"
    args = ["--runs_dir", str(runs), "--trainer.max_epochs", "4", *QUIET_ARGS]
    first = subprocess.Popen([sys.executable, "-c", MOCKED_SCONTROL, *args], cwd=REPO, env=slurm_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = runs / "slurm-4242-digits-small_cnn"
    deadline = time.monotonic() + 300
    while not (run_dir / "last.ckpt").is_file():  # one epoch done: preempt in the next one
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=USR1@90` sends before the time limit
    _, stderr = first.communicate(timeout=120)
    assert first.returncode != 0, stderr[-2000:]
    assert [json.loads(line) for line in (tmp_path / "scontrol.log").read_text().splitlines()] == [
        ["scontrol", "requeue", "4242"]]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run_dir.iterdir())
    saved = torch.load(hpc, map_location="cpu", weights_only=False)
    assert not (run_dir / "metrics.json").exists()
    before = epochs_logged(run_dir)

    # The requeued job: same id, same command, SLURM_RESTART_COUNT=1.
    second = subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True,
                            text=True, env=slurm_env(tmp_path, SLURM_RESTART_COUNT="1"), timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming {hpc}" in second.stderr and "continuing in its own run folder" in second.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["latest", run_dir.name]  # no second folder
    assert (runs / "latest").resolve() == run_dir.resolve()
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    after = epochs_logged(run_dir)
    assert after[: len(before)] == before  # the logs from before the requeue are kept
    assert after == list(range(4))  # each epoch validated once: only the unfinished one was trained again
    final = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 3 and final["global_step"] > saved["global_step"]


@pytest.mark.slow
def test_a_restarted_job_without_a_checkpoint_starts_over_in_its_own_folder_and_a_new_job_is_refused(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "slurm-4242-digits-small_cnn"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# the job's first attempt, killed before an epoch ended\n")
    args = [sys.executable, str(REPO / "main.py"), "--runs_dir", str(runs), "--trainer.max_epochs", "1",
            *QUIET_ARGS]
    new_job = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=slurm_env(tmp_path), timeout=600)
    assert new_job.returncode != 0 and "a job with the same id ran before" in new_job.stderr, new_job.stderr[-2000:]
    assert (run_dir / "config.yaml").read_text().startswith("# the job's first attempt")  # left as it was
    restarted = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                               env=slurm_env(tmp_path, SLURM_RESTART_COUNT="1"), timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "Resuming" not in restarted.stderr and (run_dir / "metrics.json").is_file()


def test_ckpt_path_last_names_the_newest_run_or_the_newest_of_a_named_run(tmp_path):
    with pytest.raises(UserError, match="found no run to continue"):
        newest_checkpoint(tmp_path, None)
    for name in ["a", "b", "train", "train-resumed-1"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.ckpt").write_bytes(b"")
        time.sleep(0.01)
    (tmp_path / "latest").symlink_to("a")
    assert newest_checkpoint(tmp_path, None) == ((tmp_path / "a" / "last.ckpt").resolve(), None)
    assert newest_checkpoint(tmp_path, "train") == (tmp_path / "train-resumed-1" / "last.ckpt", "train-resumed-2")
    assert newest_checkpoint(tmp_path, "b") == (tmp_path / "b" / "last.ckpt", "b-resumed-1")
    with pytest.raises(UserError, match="no last.ckpt in"):
        newest_checkpoint(tmp_path, "absent")


@pytest.mark.slow
def test_ckpt_path_last_continues_the_newest_run_into_a_new_folder(tmp_path):
    runs = tmp_path / "runs"
    base = [sys.executable, str(REPO / "main.py"), "--runs_dir", str(runs), *QUIET_ARGS]
    refused = subprocess.run([*base, "--ckpt_path", "last"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "found no run to continue" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    first = subprocess.run([*base, "--trainer.max_epochs", "1", "--run_name", "r"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([*base, "--trainer.max_epochs", "2", "--run_name", "r", "--ckpt_path", "last"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Resuming {runs / 'r' / 'last.ckpt'}" in again.stderr
    assert epochs_logged(runs / "r-resumed-1") == [1] and epochs_logged(runs / "r") == [0]
