"""A run never loses work, round two (issue 25): signals during the test, late divergence, resuming with a
changed optimizer or a shorter run, file-size limits and full disks during a run, and what a checkpoint or
image path that is not a regular file says. Short digits runs of main.py as a user starts them."""

from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import QUIET_ARGS, REPO

from imgclf.deploy.predictor import load_image, open_session
from imgclf.deploy.verify import check_same_model
from imgclf.errors import UserError
from imgclf.train.checkpoints import read_checkpoint

DIGITS = str(REPO / "configs" / "default.yaml")


def run_main(*args: str, prelude: str = "", timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """main.py as a user runs it, with `prelude` (Python) run first in the same process to inject a fault."""
    code = (f"import os, signal, sys\nfrom pathlib import Path\n{prelude}\n"
            "from imgclf.errors import exit_on_user_error\nfrom imgclf.train.run import main\n"
            f"with exit_on_user_error():\n    main(sys.argv[1:], Path({DIGITS!r}))\n")
    return subprocess.run([sys.executable, "-c", code, *args, *QUIET_ARGS], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def one_error(stderr: str) -> str:
    """The single `error:` paragraph of a failed run, with no traceback beside it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = re.findall(r"^error: .*(?:\n  .*)*", stderr, re.M)
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


SIGNAL_AT_FIRST_TEST_BATCH = """
from imgclf.model.classifier import ImageClassifier
_test_step = ImageClassifier.test_step
def test_step(self, batch, batch_idx):
    if batch_idx == 0:
        os.kill(os.getpid(), signal.{name})
    return _test_step(self, batch, batch_idx)
ImageClassifier.test_step = test_step
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, said", [("SIGTERM", "SIGTERM"), ("SIGINT", "SIGINT")])
def test_a_signal_during_the_test_exits_non_zero_with_the_retest_command(tmp_path, name, said):
    """The test step stopped by a signal: exit non-zero, an error paragraph naming the signal and a command
    that tests the same weights again without training; that command writes metrics.json."""
    runs = tmp_path / "runs"
    done = run_main("--runs_dir", str(runs), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "5",
                    "--data.eval_batch_size", "64",
                    prelude=SIGNAL_AT_FIRST_TEST_BATCH.format(name=name))
    assert done.returncode != 0, done.stderr[-3000:]
    message = one_error(done.stderr)
    assert f"Testing was stopped by {said}" in message, message
    run_dir = (runs / "latest").resolve()
    assert not (run_dir / "metrics.json").exists()
    command = shlex.split(re.search(r"^  (uv run python main\.py .*)$", message, re.M).group(1))
    assert command[4:8] == ["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "best.ckpt")]
    assert command[8:] == ["--trainer.max_epochs", str(torch.load(run_dir / "best.ckpt", weights_only=False)
                                                        ["epoch"] + 1)]
    retest = run_main(*command[4:])
    assert retest.returncode == 0, retest.stderr[-3000:]
    assert "Warning" not in retest.stderr, retest.stderr[-3000:]  # e.g. an empty legend on the curves
    assert len(list(runs.glob("*/metrics.json"))) == 1


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """Two epochs of three batches with AdamW: a run folder to resume."""
    runs = tmp_path_factory.mktemp("runs")
    done = run_main("--runs_dir", str(runs), "--run_name", "short", "--trainer.max_epochs", "2",
                    "--trainer.limit_train_batches", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / "short"


@pytest.mark.slow
@pytest.mark.parametrize("change, said", [
    (["--model.optimizer", "sgd", "--trainer.max_epochs", "4"], "was trained with --model.optimizer adamw"),
    (["--trainer.max_epochs", "1"], "has completed 2 epochs, but --trainer.max_epochs is 1"),
])
def test_a_resume_that_cannot_continue_is_refused_before_a_folder_is_made(short_run, change, said):
    runs = short_run.parent
    before = sorted(p.name for p in runs.iterdir())
    done = run_main("--config", str(short_run / "config.yaml"), "--ckpt_path", str(short_run / "last.ckpt"),
                    "--run_name", "resumed", *change)
    assert done.returncode != 0
    assert said in one_error(done.stderr)
    assert sorted(p.name for p in runs.iterdir()) == before  # no leftover folder


def non_finite(checkpoint: Path) -> list[str]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return [name for name, value in state.items() if value.is_floating_point() and not value.isfinite().all()]


@pytest.mark.slow
def test_late_divergence_in_batchnorm_buffers_leaves_only_finite_checkpoints(tmp_path):
    """SGD at lr 20: a BatchNorm running_var overflows epochs before the loss does. The run stops at the first
    non-finite buffer, and every checkpoint it leaves (and runs/latest's) holds finite parameters and buffers."""
    runs = tmp_path / "runs"
    done = run_main("--runs_dir", str(runs), "--model.optimizer", "sgd", "--model.lr", "20",
                    "--model.warmup_fraction", "0.5", "--trainer.max_epochs", "8")
    assert done.returncode != 0
    assert "Training diverged" in one_error(done.stderr)
    checkpoints = sorted(runs.rglob("*.ckpt"))
    for checkpoint in checkpoints:
        assert non_finite(checkpoint) == [], checkpoint
    if (runs / "latest").exists():  # it points only at a run with a finite checkpoint to resume
        assert (runs / "latest" / "last.ckpt").is_file()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))  # a checkpoint is about 1.2 MB


@pytest.mark.slow
def test_a_file_size_limit_gives_the_storage_error_and_latest_stays(tmp_path):
    """`ulimit -f` below a checkpoint's size: Python ignores SIGXFSZ, so the write fails with EFBIG; that is one
    storage error naming the limit, and runs/latest never points at a folder without a checkpoint."""
    runs = tmp_path / "runs"
    done = run_main("--runs_dir", str(runs), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
                    preexec_fn=_limit_file_size)
    assert done.returncode != 0
    message = one_error(done.stderr)
    assert "file-size limit" in message and "ulimit -f" in message, message
    assert not (runs / "latest").exists()


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")


@pytest.mark.slow
def test_a_full_disk_leaves_runs_latest_where_it_was(tmp_path):
    runs = tmp_path / "runs"
    _mount_tmpfs(runs, "300k")
    try:
        done = run_main("--runs_dir", str(runs), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3")
        assert done.returncode != 0
        assert "the disk is full" in one_error(done.stderr)
        assert not (runs / "latest").exists()
    finally:
        subprocess.run(["umount", str(runs)])


# ------------------------------------------------------------------------------------------ in process
@pytest.mark.parametrize("make, said", [
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: os.mkfifo(p), "is a FIFO, not a regular file"),
    (None, "is a device, not a regular file"),  # /dev/zero
    (lambda p: None, "does not exist"),
])
def test_a_path_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, make, said):
    """A folder, FIFO or /dev/zero given as a checkpoint, model or image: said as such, not "does not exist"
    (and never read: a FIFO blocks, /dev/zero never ends)."""
    if make is None:
        path = Path("/dev/zero")
    else:
        path = tmp_path / "thing"
        make(path)
    with pytest.raises(UserError, match=f"Checkpoint {re.escape(str(path))} {said}"):
        read_checkpoint(path, "fix")
    with pytest.raises(UserError, match=f"Model file {re.escape(str(path))} {said}"):
        open_session(path)
    with pytest.raises(UserError, match=f"{re.escape(str(path))} {said}"):
        load_image(path, SimpleNamespace(in_channels=1))


def test_a_class_name_mismatch_names_the_differing_names_once():
    names = [str(i) for i in range(10)]
    metadata = SimpleNamespace(network="small_cnn", class_names=names, image_size=(8, 8), in_channels=1,
                               checkpoint="runs/a/best.ckpt")
    renamed = [*names[:9], "nine"]
    ckpt = SimpleNamespace(path="runs/b/best.ckpt", model=SimpleNamespace(
        class_names=renamed, hparams=SimpleNamespace(network="small_cnn", image_size=(8, 8), in_channels=1)))
    with pytest.raises(UserError) as caught:
        check_same_model(metadata, ckpt, Path("model.onnx"))
    message = str(caught.value)
    assert f"class names: {names} in the model, {renamed} in the checkpoint" in message, message
    assert "network" not in message.split("(", 1)[1].split(")")[0], message  # only what differs
