"""The recipe on several devices, with 2 CPU processes (gloo): the configs' global batch, an EMA counted in
epochs that starts, whitening filters equal on every rank, the DDP timeout under strategy `auto`, and
divergence named at the earliest bad step over ranks. main.py runs as a subprocess: DDP re-launches it."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
from conftest import QUIET_ARGS, REPO

from imgclf.data.datamodule import ImageDataModule
from imgclf.distributed import timeout_when_chosen_automatically

TESTS = Path(__file__).resolve().parent
CPU2 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
FAST_DIGITS = ["--config", str(REPO / "configs" / "fast_digits.yaml"), *QUIET_ARGS]


def run_main(args: list[str], log: Path, timeout: float = 300) -> int:
    """main.py with `args` in its own process group (killed whole at the end); returns the exit code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    env.pop("IMGCLF_RUN_DIR", None)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_two_ranks_train_the_recipe_of_one_device(tmp_path: Path) -> None:
    """fast_digits.yaml states a global batch of 128: 64 per rank, and the steps per epoch of one device;
    its EMA, told to start after 1 of 2 epochs, starts there; the whitening filters are rank 0's everywhere."""
    args = [*FAST_DIGITS, *CPU2, "--trainer.strategy", "ddp", "--runs_dir", str(tmp_path / "runs"),
            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2",
            "--trainer.callbacks.init_args.start_epoch", "1",
            "--trainer.callbacks+=recipe_probe.RecipeRecorder", "--trainer.callbacks.out_dir", str(tmp_path)]
    code = run_main(args, tmp_path / "log.txt")
    assert code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    one_device = ImageDataModule(dataset="digits", global_batch_size=128)
    one_device.setup()
    steps_per_epoch = len(one_device.train_dataloader())
    assert steps_per_epoch == math.ceil(len(one_device.splits["train"].labels) / 128)
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["batch_size"] == 64
        assert rank["steps_per_epoch"] == steps_per_epoch and rank["global_step"] == 2 * steps_per_epoch
        assert rank["ema_start_step"] == steps_per_epoch  # one epoch, counted in the steps of this run
        assert rank["ema_updates"] == steps_per_epoch  # every step of the second epoch: it started
    assert ranks[0]["whitening"] == ranks[1]["whitening"]  # bit for bit
    assert any(ranks[0]["whitening"])


def test_ddp_timeout_reaches_the_strategy_that_auto_picks() -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="auto", logger=False)  # launches nothing yet
    timeout_when_chosen_automatically(trainer, "auto", timedelta(seconds=17))
    assert trainer.strategy._timeout == timedelta(seconds=17)
    single = L.Trainer(accelerator="cpu", devices=1, strategy="auto", logger=False)
    timeout_when_chosen_automatically(single, "auto", timedelta(seconds=17))  # no process group: nothing to do
    assert not hasattr(single.strategy, "_timeout")


@pytest.mark.slow
def test_a_hung_rank_times_out_with_strategy_auto(tmp_path: Path) -> None:
    """Rank 1 sleeps 10 minutes in its third step; under `auto` (no --trainer.strategy) rank 0 must still give
    up after --ddp_timeout_s (before the fix it waited for torch's default of 30 minutes)."""
    timeout_s = 20
    args = [*FAST_DIGITS, *CPU2, "--runs_dir", str(tmp_path / "runs"), "--ddp_timeout_s", str(timeout_s),
            "--trainer.callbacks+=ddp_probe.FailOnRank", "--trainer.callbacks.stamp_file",
            str(tmp_path / "hung_at"), "--trainer.callbacks.hang_s", "600"]
    start = time.monotonic()
    code = run_main(args, tmp_path / "log.txt", timeout=240)
    log = (tmp_path / "log.txt").read_text()
    assert code != 0
    assert re.search(rf"Timed out waiting {timeout_s * 1000}ms|Application timeout caused pair closure"
                     r"|Timed out after \d+ seconds waiting for clients", log), log[-3000:]
    assert time.monotonic() - start < 200


@pytest.mark.slow
def test_divergence_names_the_earliest_bad_step_over_ranks(tmp_path: Path) -> None:
    """Rank 1's loss is NaN at step 2, rank 0's (through the averaged gradients) at step 3: the error says 2."""
    args = [*FAST_DIGITS, *CPU2, "--trainer.strategy", "ddp", "--runs_dir", str(tmp_path / "runs"),
            "--trainer.max_epochs", "1", "--trainer.callbacks+=recipe_probe.PoisonOnRank"]
    code = run_main(args, tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert code != 0
    steps = set(re.findall(r"became NaN or infinite at step (\d+)", log))
    assert steps == {"2"}, log[-3000:]
