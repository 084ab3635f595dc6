"""--run_name: a stable run folder (DVC stage output) that is never overwritten."""

import pytest

from imgclf.cli import RUN_DIR_ENV, new_run_dir
from imgclf.errors import UserError


def test_run_name_gives_a_fixed_folder_and_refuses_an_existing_one(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, "")  # recorded, so teardown restores the variable new_run_dir sets
    monkeypatch.delenv(RUN_DIR_ENV)
    run_dir = new_run_dir(tmp_path, "digits", "small_cnn", run_name="train")
    assert run_dir == tmp_path / "train" and run_dir.is_dir()  # claimed at once: no other run can take it
    (run_dir / "best.ckpt").write_bytes(b"weights")
    monkeypatch.delenv(RUN_DIR_ENV)  # a new process, as the next `python main.py` would be
    with pytest.raises(UserError, match="already exists"):
        new_run_dir(tmp_path, "digits", "small_cnn", run_name="train")
    assert (run_dir / "best.ckpt").read_bytes() == b"weights"


def test_run_name_needs_no_launcher_job_id(tmp_path, monkeypatch):
    """torchrun without --rdzv-id gives no usable job id; a --run_name folder is the same on every rank anyway."""
    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.delenv(RUN_DIR_ENV)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert new_run_dir(tmp_path, "digits", "small_cnn", run_name="train") == tmp_path / "train"
    monkeypatch.delenv(RUN_DIR_ENV)
    with pytest.raises(UserError, match="--run_name"):
        new_run_dir(tmp_path, "digits", "small_cnn")
