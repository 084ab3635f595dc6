"""DVC against a real S3 server (SeaweedFS `weed mini` on 127.0.0.1, started here, stopped after).

Everything runs in a temporary git copy of the project, so the real checkout's .dvc/cache and
.dvc/config.local are never touched.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from imgclf.errors import UserError
from imgclf.storage import local_s3

BIN = Path(sys.executable).parent  # the venv's dvc, and the `python` that dvc.yaml's commands call
PUBLISHED = ["data/fashion_mnist.dvc", "model.onnx.dvc"]
CONFIG = "configs/fashion_mnist.yaml"

# Every test starts git, dvc (a Python program) or an S3 server as processes.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd / "src")}  # the copy's code, not the editable install's
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(str(BIN / "dvc"), *args, cwd=cwd, check=check)


def md5s(root: Path, paths: list[str]) -> dict[str, str]:
    files = [f for p in paths for f in sorted((root / p).rglob("*") if (root / p).is_dir() else [root / p])]
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def write_fake_fashion_mnist(folder: Path, n: int = 200) -> None:
    """Small gzipped idx files in Fashion-MNIST's exact format and names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in [("train", n), ("t10k", n // 4)]:
        for kind, shape in [("images-idx3", (count, 28, 28)), ("labels-idx1", (count,))]:
            header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
            data = rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8).tobytes()
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + data))


def free_port() -> int:
    """A base port whose 10 SeaweedFS ports are free (random, so parallel runs rarely collide)."""
    for _ in range(50):
        port = random.randrange(20000, 30000)
        try:
            local_s3.check_ports_free(local_s3.component_ports(port))
            return port
        except UserError:
            continue
    raise RuntimeError("no free ports for the local S3 server")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("dvc") / "project")


def copy_project(root: Path) -> Path:
    """A git repo holding the project's files (tracked and new, not ignored): a fresh clone's content."""
    listed = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    run("git", "init", "-q", cwd=root)
    run("git", "config", "user.email", "test@example.com", cwd=root)
    run("git", "config", "user.name", "test", cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-qm", "project", cwd=root)
    return root


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3")
    s3 = local_s3.start(folder, free_port(), local_s3.default_remote_bucket(project))
    yield folder, s3
    local_s3.stop(folder)


@pytest.fixture(scope="module")
def published(project, server) -> dict[str, str]:
    """Data and a model added and pushed from `project`; returns their md5s."""
    _, s3 = server
    write_fake_fashion_mnist(project / "data/fashion_mnist")
    (project / "model.onnx").write_bytes(os.urandom(12 * 2**20))  # over 8 MiB: a multipart upload
    dvc("add", "data/fashion_mnist", "model.onnx", cwd=project)
    run("git", "add", *PUBLISHED, cwd=project)
    run("git", "commit", "-qm", "publish data and model", cwd=project)
    local_s3.point_dvc_remote_at(s3, project)
    dvc("push", *PUBLISHED, cwd=project)
    return md5s(project, ["data/fashion_mnist", "model.onnx"])


def clone(project: Path, dest: Path) -> Path:
    run("git", "clone", "-q", str(project), str(dest), cwd=project)
    return dest


def test_pull_in_fresh_clone_gives_identical_files_also_after_a_server_restart(project, server, published,
                                                                               tmp_path):
    folder, s3 = server
    fresh = clone(project, tmp_path / "fresh")
    local_s3.point_dvc_remote_at(s3, fresh)
    dvc("pull", *PUBLISHED, cwd=fresh)
    assert md5s(fresh, ["data/fashion_mnist", "model.onnx"]) == published

    local_s3.stop(folder)  # the objects live on disk: a restarted server still has them
    local_s3.start(folder, s3.port, s3.bucket)
    again = clone(project, tmp_path / "again")
    local_s3.point_dvc_remote_at(s3, again)
    dvc("pull", *PUBLISHED, cwd=again)
    assert md5s(again, ["data/fashion_mnist", "model.onnx"]) == published


def test_pull_fails_without_touching_local_files(project, server, published, tmp_path):
    folder, s3 = server
    work = clone(project, tmp_path / "work")
    (work / "data/fashion_mnist").mkdir(parents=True)
    (work / "data/fashion_mnist/notes.txt").write_text("the user's own file")
    (work / "model.onnx").write_bytes(b"a local model the user has not published yet")
    before = md5s(work, ["data/fashion_mnist", "model.onnx"])

    wrong_key = local_s3.LocalS3(s3.endpoint, s3.bucket, s3.access_key_id, "not-the-secret", s3.pid)
    local_s3.point_dvc_remote_at(wrong_key, work)
    result = dvc("pull", "--force", *PUBLISHED, cwd=work, check=False)
    assert result.returncode != 0
    assert "403" in result.stderr or "Forbidden" in result.stderr, result.stderr
    assert md5s(work, ["data/fashion_mnist", "model.onnx"]) == before

    local_s3.point_dvc_remote_at(s3, work)
    local_s3.stop(folder)
    try:
        result = dvc("pull", "--force", *PUBLISHED, cwd=work, check=False)
        pushed = dvc("push", *PUBLISHED, cwd=project, check=False)
    finally:
        local_s3.start(folder, s3.port, s3.bucket)
    for failed in (result, pushed):
        assert failed.returncode != 0
        assert "could not connect" in failed.stderr.lower(), failed.stderr
    assert md5s(work, ["data/fashion_mnist", "model.onnx"]) == before


def readme_block(after: str) -> list[str]:
    """The commands of docs/versioning.md's first code block after the line `after`."""
    text = (REPO / "docs" / "versioning.md").read_text()
    block = text[text.index(after):].split("```", 2)[1]
    return [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.split("#")[0].strip()]


def test_readme_local_s3_steps_publish_data_that_a_fresh_clone_pulls(fashion_mnist_real, tmp_path):
    project = copy_project(tmp_path / "project")
    shutil.copytree(fashion_mnist_real, project / "data/fashion_mnist")  # the pointer's files
    commands = readme_block("### A local S3 server")
    assert any("dvc push" in c for c in commands) and commands[-1].endswith("local_s3 stop")
    port = str(free_port())
    try:
        for command in commands[:-1]:  # all but the stop: the server must still serve the pull below
            args = command.removeprefix("uv run ").split()
            args += ["--port", port] if args[-1] == "start" else []
            run(*args, cwd=project)  # `dvc` and `python` are the venv's (run puts its bin/ first on PATH)
        fresh = clone(project, tmp_path / "fresh")
        shutil.copy(project / ".dvc/config.local", fresh / ".dvc/config.local")  # the same server and keys
        dvc("pull", "data/fashion_mnist.dvc", cwd=fresh)
    finally:
        local_s3.stop(project / local_s3.DEFAULT_DIR)
    assert md5s(fresh, ["data/fashion_mnist"]) == md5s(project, ["data/fashion_mnist"])
    assert len(md5s(fresh, ["data/fashion_mnist"])) == 4


def test_start_finds_its_running_server_refuses_a_taken_port_and_stops_only_its_own(server, tmp_path):
    folder, s3 = server
    assert local_s3.start(folder, s3.port, s3.bucket).pid == local_s3.running_server(folder).pid
    with pytest.raises(UserError, match="already in use"):
        local_s3.start(tmp_path / "other", s3.port, s3.bucket)
    assert local_s3.stop(tmp_path / "other") is False


def small_training_config(project: Path) -> None:
    """The pipeline's config made tiny: digits, one epoch (the real data stays a dependency)."""
    config = yaml.safe_load((project / CONFIG).read_text())
    config["trainer"]["max_epochs"] = 1
    config["data"]["dataset"] = "digits"
    config["data"]["batch_size"] = 64
    (project / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


def find_experiment(rows: list[dict], name: str) -> dict:
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return rev["data"]
    raise AssertionError(f"experiment {name!r} not in dvc exp show --json: {rows}")


def test_repro_then_experiment_report_metrics(project, published):
    small_training_config(project)
    run("git", "commit", "-qam", "tiny training config", cwd=project)
    dvc("repro", "train", cwd=project)
    shown = json.loads(dvc("metrics", "show", "--json", cwd=project).stdout)
    test_acc = shown[""]["data"]["runs/pipeline/train/metrics.json"]["data"]["test/acc"]
    assert 0.3 < test_acc <= 1.0  # digits after one epoch: far above chance (0.1)
    assert (project / "runs/pipeline/train/dvclive/plots/sklearn/confusion_matrix.json").is_file()

    run("git", "add", "dvc.lock", cwd=project)
    run("git", "commit", "-qm", "baseline", cwd=project)
    # a second epoch: the one-epoch baseline's lr of 1.0 halved or less stays near chance (logits scaled by 1/9)
    dvc("exp", "run", "train", "-n", "epochs-2", "-S", f"{CONFIG}:trainer.max_epochs=2", cwd=project)
    data = find_experiment(json.loads(dvc("exp", "show", "--json", cwd=project).stdout), "epochs-2")
    assert data["params"][CONFIG]["data"]["trainer"]["max_epochs"] == 2
    exp_acc = data["metrics"]["runs/pipeline/train/metrics.json"]["data"]["test/acc"]
    assert exp_acc > 0.3 and data["metrics"]["runs/pipeline/train/metrics.json"]["data"] != \
        shown[""]["data"]["runs/pipeline/train/metrics.json"]["data"]  # it trained, with its own epochs
