"""A corrupted object on the S3 remote (issue 25, point 8): `dvc pull` fails instead of restoring the bad file
with exit 0 (the project's remote sets verify = true), and imgclf.storage.remote_check names the file."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from dvc.repo import Repo
from test_dvc import free_port

from imgclf.storage import local_s3
from imgclf.storage.remote_check import check_remote

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, (args, done.stdout, done.stderr)
    return done


@pytest.mark.slow  # starts a Python process
def test_a_corrupted_remote_object_fails_the_pull_and_is_named(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    sh("git", "init", "-q", cwd=project)
    sh("dvc", "init", "-q", cwd=project)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the project's own remote settings
    (project / "data" / "set").mkdir(parents=True)
    for name in ("a.bin", "b.bin"):
        (project / "data" / "set" / name).write_bytes(os.urandom(5000))
    sh("dvc", "add", "-q", "data/set", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "data", cwd=project)
    server = tmp_path / "s3"
    s3 = local_s3.start(server, free_port(), local_s3.default_remote_bucket(project))
    try:
        local_s3.point_dvc_remote_at(s3, project)
        sh("dvc", "push", cwd=project)
        assert check_remote(project)[1] == []
        # the object that holds a.bin, overwritten on the remote
        with Repo(str(project)) as repo:
            odb = repo.cloud.get_remote_odb(None, hash_name="md5")
            key = odb.oid_to_path(hashlib.md5((project / "data/set/a.bin").read_bytes()).hexdigest())
            with odb.fs.open(key, "wb") as f:
                f.write(b"corrupted")

        fresh = tmp_path / "fresh"
        sh("git", "clone", "-q", str(project), str(fresh), cwd=tmp_path)
        local_s3.point_dvc_remote_at(s3, fresh)
        pulled = sh("dvc", "pull", cwd=fresh, check=False)
        assert pulled.returncode != 0, pulled.stdout + pulled.stderr  # it was 0, with the bad file in place
        assert not (fresh / "data/set/a.bin").exists()
        named = sh(sys.executable, "-m", "imgclf.storage.remote_check", cwd=fresh, check=False)
        assert named.returncode == 1 and "Traceback" not in named.stderr
        assert f"data/set/a.bin: object s3://{key} holds content with md5" in named.stderr, named.stderr
        assert "b.bin" not in named.stderr
    finally:
        local_s3.stop(server)


def test_a_fresh_pull_on_the_placeholder_remote_names_it(tmp_path: Path) -> None:
    """The shipped remote is nobody's bucket: DVC's own error names the bucket, so its name is the hint."""
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copy(REPO / "model.onnx.dvc", tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DVC_NO_ANALYTICS="1", AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    pulled = subprocess.run([str(BIN / "dvc"), "pull", "model.onnx.dvc"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    assert pulled.returncode != 0
    assert "replace-with-your-bucket" in pulled.stderr, pulled.stderr
