"""`local_s3 stop` leaves no Unix sockets behind (issue 25, point 9): SeaweedFS leaves s3.sock after a clean
SIGTERM and every socket after the SIGKILL that follows a stop that hangs (as during a push)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_dvc import free_port

from imgclf.storage import local_s3


def our_sockets(folder: Path, port: int) -> list[Path]:
    grpc = [Path(f"/tmp/seaweedfs-{name}-grpc-{port + i + 10000}.sock")
            for i, name in enumerate(["s3", "master", "volume", "filer", "admin"])]
    return [p for p in [*folder.glob("*.sock"), *grpc] if p.exists()]


@pytest.mark.parametrize("hangs", [False, True])
def test_stop_removes_the_servers_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hangs: bool) -> None:
    port = free_port()
    server = local_s3.start(tmp_path, port, "imgclf-test")
    assert our_sockets(tmp_path, port)  # it made some: else this test checks nothing
    if hangs:  # a stopped process ignores SIGTERM until SIGKILL: the path a hung stop takes
        os.kill(server.pid, signal.SIGSTOP)
        monkeypatch.setattr(local_s3, "STOP_GRACE_SECONDS", 2.0)
    assert local_s3.stop(tmp_path)
    assert our_sockets(tmp_path, port) == []
