"""check_env.py where a check cannot run (issue 25, point 5): a broken .dvc/config is one FAIL line (and --json
still prints its JSON), and a child killed at --timeout says to raise --timeout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from imgclf.env.checks import gpu_checks
from imgclf.env.data import dvc_remote_check
from imgclf.env.report import ChildResult, finish, start_python


def test_a_broken_dvc_config_is_one_failed_check(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core\nremote = storage\n")
    check = dvc_remote_check(tmp_path)
    assert check.status == "FAIL" and "Invalid line" in check.detail and "git checkout .dvc/config" in check.fix


@pytest.mark.slow  # starts a Python process
def test_check_env_json_with_a_broken_dvc_config_prints_json(tmp_path: Path) -> None:
    """check_env.py looks at the folder it sits in: a copy beside a broken .dvc/config."""
    shutil.copy(REPO / "check_env.py", tmp_path)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core\nremote = storage\n")
    done = subprocess.run([sys.executable, str(tmp_path / "check_env.py"), "--json", "--timeout", "120"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["exit_code"] == 1
    assert report["checks"]["data"]["dvc remote"]["status"] == "FAIL"


def test_a_child_killed_at_the_timeout_advises_a_larger_timeout() -> None:
    slow = finish(start_python("import time; time.sleep(30)"), 0.5)
    assert slow.result is None
    (check,) = gpu_checks(ChildResult(None, slow.error), [], require_gpu=False)
    assert check.status == "FAIL" and "--timeout 300" in check.fix, check.fix
