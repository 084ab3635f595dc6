"""atomic.py: files appear whole under their final name or not at all."""

import json
import math
import os
import subprocess

import pytest

from imgclf import atomic
from imgclf.errors import UserError


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic.write_json(target, {"test/acc": 0.5})
    assert json.loads(target.read_text()) == {"test/acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failure_inside_keeps_old_content(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("exporter crashed")
    assert target.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_non_finite_json_refused(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "m.json", {"loss": math.nan})
    assert not (tmp_path / "m.json").exists()


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="Cannot write the checkpoint"):
        atomic.write_bytes(tmp_path / "nope" / "x.ckpt", b"x", what="checkpoint")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_leaves_nothing_under_the_final_name(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        with pytest.raises(UserError, match="disk is full"):
            atomic.write_bytes(mount / "best.ckpt", os.urandom(256 * 1024), what="checkpoint")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)])
