"""A run never loses work: interrupts, resuming and extending, divergence, full or read-only disks, concurrent
runs, checkpoints of another run, and a quiet console. Short digits runs of main.py as a user starts them."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUIET_ARGS, REPO
from lightning.pytorch.callbacks import ModelCheckpoint

from imgclf.errors import UserError
from imgclf.model.classifier import ImageClassifier
from imgclf.model.schedule import END, START, one_cycle, one_cycle_factor
from imgclf.train.checkpoints import AtomicCheckpointIO, check_resumable
from imgclf.train.run import quiet_about_own_folder

NOISE = ["exists and is not empty", "litlogger", "deprecated", "dirpath has changed", "Warning", "Traceback"]


def start_main(*args: str, code: str | None = None) -> subprocess.Popen:
    """main.py (or `code` run the same way) as its own process, stderr captured as text."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, str(REPO / "main.py"), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path_glob: str, folder: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{path_glob} never appeared in {folder}")


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def epochs_and_steps(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["epoch"], checkpoint["global_step"]


@pytest.mark.slow
def test_interrupt_then_resume_and_extend_into_a_new_folder(tmp_path):
    """Ctrl-C saves what a resume needs and prints the command; that command, with a larger max_epochs,
    continues into a new folder with everything a run leaves, while the old folder stays byte-identical;
    last.ckpt is the final epoch and best.ckpt the best by val/acc; neither run prints Lightning's noise."""
    runs = tmp_path / "runs"
    first = start_main("--runs_dir", str(runs), "--trainer.max_epochs", "3", *QUIET_ARGS)
    wait_for("*/last.ckpt", runs, first)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode != 0, stderr[-2000:]
    assert "stopped by SIGINT" in stderr and "the test was skipped" in stderr, stderr[-2000:]
    assert not any(noise in stderr for noise in NOISE), stderr[-3000:]
    old = (runs / "latest").resolve()  # it completed an epoch, so it is the latest run
    assert not (old / "metrics.json").exists()  # the test was skipped
    assert (old / "metrics.csv").is_file() and (old / "config.yaml").is_file()  # the logs are kept
    before = file_hashes(old)

    command = shlex.split(re.search(r"^  (uv run python main\.py .*)$", stderr, re.M).group(1))
    assert command[4:] == ["--config", str(old / "config.yaml"), "--ckpt_path", str(old / "last.ckpt")]
    resumed = subprocess.run([sys.executable, str(REPO / "main.py"), *command[4:], "--trainer.max_epochs", "4"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not any(noise in resumed.stderr for noise in NOISE), resumed.stderr[-3000:]

    assert file_hashes(old) == before  # the old run's folder is untouched
    new = (runs / "latest").resolve()
    assert new != old and new.parent == runs
    for name in ["config.yaml", "metrics.csv", "metrics.json", "training_curves.png", "confusion_matrix.csv",
                 "best.ckpt", "last.ckpt", "dvclive/metrics.json"]:
        assert (new / name).is_file(), name
    config = (new / "config.yaml").read_text()
    assert f"ckpt_path: {old / 'last.ckpt'}" in config and str(old) + "\n" not in config  # logs its own folder

    epochs = pd.read_csv(new / "metrics.csv").dropna(subset=["val/acc"]).set_index("epoch")["val/acc"]
    assert epochs.index.max() == 3 and epochs.index.min() >= 1  # only the resumed epochs, into its own log
    steps_per_epoch = epochs_and_steps(old / "last.ckpt")[1] // (epochs_and_steps(old / "last.ckpt")[0] + 1)
    assert epochs_and_steps(new / "last.ckpt") == (3, 4 * steps_per_epoch)  # the final epoch, always
    assert epochs_and_steps(new / "best.ckpt")[0] == epochs.idxmax()  # the first epoch with the best val/acc


@pytest.mark.slow
def test_sigterm_saves_logs_and_prints_the_resume_command(tmp_path):
    runs = tmp_path / "runs"
    proc = start_main("--runs_dir", str(runs), "--trainer.max_epochs", "30", *QUIET_ARGS)
    wait_for("*/last.ckpt", runs, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    run_dir = next(p for p in runs.iterdir() if p.name != "latest")
    assert "stopped by SIGTERM" in stderr and f"--ckpt_path {run_dir / 'last.ckpt'}" in stderr, stderr[-2000:]
    assert (run_dir / "metrics.csv").is_file() and not (run_dir / "metrics.json").exists()
    assert epochs_and_steps(run_dir / "last.ckpt")[0] >= 0  # loadable


@pytest.mark.slow
def test_a_killed_checkpoint_writer_never_leaves_a_truncated_checkpoint(tmp_path):
    """SIGKILL while AtomicCheckpointIO rewrites a 40 MB checkpoint over and over: the file always loads."""
    target = tmp_path / "last.ckpt"
    writer = ("import sys, torch\nfrom imgclf.train.checkpoints import AtomicCheckpointIO\nio = AtomicCheckpointIO()\n"
              "for i in range(10**6):\n    io.save_checkpoint({'i': i, 'w': torch.rand(10**7)}, sys.argv[1])\n")
    proc = start_main(str(target), code=writer)
    wait_for("last.ckpt", tmp_path, proc)
    time.sleep(random.uniform(0.2, 0.6))  # somewhere inside a later write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(target, weights_only=True)["w"].shape == (10**7,)


@pytest.mark.slow
def test_concurrent_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    runs = tmp_path / "runs"
    same_second = ("import sys\nfrom pathlib import Path\nimport imgclf.train.run_folder as folder\n"
                   "folder.run_stamp = lambda: '20990101-000000'\nfrom imgclf.train.run import main\n"
                   "main(sys.argv[1:], Path('configs/default.yaml'))\n")
    args = ["--runs_dir", str(runs), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.log_every_n_steps", "1", *QUIET_ARGS]
    procs = [start_main(*args, code=same_second) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    folders = sorted(p.name for p in runs.iterdir() if p.name != "latest")
    assert folders == ["20990101-000000-digits-small_cnn", "20990101-000000-digits-small_cnn-2"]
    for name in folders:
        steps = pd.read_csv(runs / name / "metrics.csv").dropna(subset=["train/loss_step"])["step"]
        assert steps.tolist() == [0, 1, 2]  # one run's three steps, each logged once


@pytest.mark.slow
def test_divergence_stops_the_run_with_advice(tmp_path):
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--runs_dir", str(runs), "--model.optimizer",
                           "sgd", "--model.lr", "1e4", "--trainer.max_epochs", "2", *QUIET_ARGS],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = re.search(r"error: Training diverged: .*", done.stderr).group(0)
    assert re.search(r"at step \d+ \(epoch 0\) at learning rate [\d.e+-]+", message) and "--model.lr" in message
    for checkpoint in runs.rglob("*.ckpt"):  # none written, or else a finite one
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        assert all(v.isfinite().all() for v in state.values() if v.is_floating_point()), checkpoint
    for metrics in runs.rglob("metrics.json"):
        json.loads(metrics.read_text())
    assert not (runs / "latest").exists()  # it never completed an epoch


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")


@pytest.mark.parametrize("options, message", [("size=300k", "the disk is full"),
                                              ("ro,size=64k", "the filesystem is read-only")])
@pytest.mark.slow
def test_full_or_read_only_runs_dir_gives_one_clear_error(tmp_path, options, message):
    runs = tmp_path / "runs"
    _mount_tmpfs(runs, options)
    try:
        done = subprocess.run([sys.executable, str(REPO / "main.py"), "--runs_dir", str(runs),
                               "--trainer.max_epochs", "1", *QUIET_ARGS],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and message in done.stderr, done.stderr[-3000:]
        assert len(re.findall(r"^error: ", done.stderr, re.M)) == 1
        for checkpoint in runs.rglob("*.ckpt"):
            torch.load(checkpoint, map_location="cpu", weights_only=False)  # whole, or absent
    finally:
        subprocess.run(["umount", str(runs)])


# ------------------------------------------------------------------------------------------ in process
def _checkpoint(tmp_path: Path, model: ImageClassifier, dataset: str) -> Path:
    path = tmp_path / f"{dataset}.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"dataset": dataset}, "pytorch-lightning_version": "2.6.0"}, path)
    return path


def test_a_checkpoint_resumes_only_its_own_run(tmp_path):
    digits = ImageClassifier(image_size=(8, 8), class_names=[str(i) for i in range(10)])
    fashion = ImageClassifier(image_size=(28, 28), class_names=["T-shirt/top", "Trouser", "Pullover", "Dress",
                                                                "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                                                                "Ankle boot"])
    path = _checkpoint(tmp_path, digits, "digits")
    assert check_resumable(path, digits, "digits")["datamodule_hyper_parameters"]["dataset"] == "digits"
    with pytest.raises(UserError, match="belongs to another run: it was trained on dataset 'digits'.*8x8"):
        check_resumable(path, fashion, "fashion_mnist")  # same network and weight shapes, other data
    with pytest.raises(UserError, match="belongs to another run"):
        check_resumable(path, digits, "fashion_mnist")


def test_non_finite_weights_are_refused_for_resume_and_export(tmp_path):
    from imgclf.deploy.from_checkpoint import load_checkpoint

    model = ImageClassifier()
    with torch.no_grad():
        next(model.net.parameters()).fill_(float("nan"))
    path = _checkpoint(tmp_path, model, "digits")
    with pytest.raises(UserError, match="non-finite weights.*diverged"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="non-finite weights"):
        check_resumable(path, model, "digits")


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    def half_written(obj, file):
        file.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(UserError, match="disk is full"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8, 100])
def test_one_cycle_is_a_function_of_step_and_total_for_any_total(total_steps):
    """limit_train_batches 2 x max_epochs 2 once raised ZeroDivisionError; a resumed, longer run stepped past the
    end. Now the rate at a step is one_cycle_factor(step, total): warm up, peak, anneal to END at the last step."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = one_cycle(optimizer, total_steps, warmup_fraction=0.25)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(total_steps - 1):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1 * one_cycle_factor(s, total_steps, 0.25) for s in range(total_steps)])
    assert rates[0] == pytest.approx(0.1 * START)
    if total_steps >= 3:
        assert max(rates) == pytest.approx(0.1) and rates[-1] == pytest.approx(0.1 * END)


def test_a_resumed_schedule_continues_on_the_curve_of_its_new_total():
    """What a resumed fit does: a fresh scheduler over the new total, then the checkpoint's state (its step)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    first = one_cycle(optimizer, 10, warmup_fraction=0.25)
    for _ in range(10):
        optimizer.step()
        first.step()
    saved = first.state_dict()
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    extended = one_cycle(optimizer, 20, warmup_fraction=0.25)
    extended.load_state_dict(saved)
    optimizer.step()
    extended.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * one_cycle_factor(11, 20, 0.25))
    assert one_cycle_factor(11, 20, 0.25) > 0.5  # the middle of the longer cycle: well above the old end


def test_own_folder_notices_are_silenced_for_the_default_relative_runs_dir(tmp_path, monkeypatch):
    """Lightning's own warning, raised by its own ModelCheckpoint.setup: silenced for the run's folder (named by a
    relative path, as main.py's default runs/ is), kept for any other. Fails if Lightning rewords it."""
    from conftest import quiet_trainer

    monkeypatch.chdir(tmp_path)
    own, other = Path("runs") / "20261201-000000-digits-small_cnn", tmp_path / "other"
    for folder in (own, other):  # never empty: config.yaml and the logs come first
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("seed_everything: 0\n")
    trainer = quiet_trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_about_own_folder(own)
        for folder in (own, other):
            ModelCheckpoint(dirpath=folder).setup(trainer, None, stage="fit")
    assert len(caught) == 1 and f"{other} exists and is not empty" in str(caught[0].message), caught
