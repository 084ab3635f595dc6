"""Check the objects on the DVC remote against the md5s the .dvc files record, and name each bad one.

    uv run python -m imgclf.storage.remote_check                      # every .dvc file's outputs
    uv run python -m imgclf.storage.remote_check data/fashion_mnist.dvc

DVC names a remote object by the md5 of its content but, by default, trusts it on `dvc pull`: a corrupted
object came back as a bad file with exit 0, so the usual fix (delete the file, `dvc pull`) brought the same
bad file back. The project's remote therefore sets `verify = true` (.dvc/config), which makes `dvc pull`
fail instead, without naming the file; this tool names it, and the object key to replace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import UserError, exit_on_user_error

CHUNK = 2**20


@dataclass(frozen=True)
class BadObject:
    path: str  # the workspace path the object holds
    key: str  # where it lies on the remote
    problem: str  # "missing" or "holds content with md5 ..."


def _md5_of(fs, key: str) -> str:
    digest = hashlib.md5()
    with fs.open(key, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_object(fs, odb, oid: str, path: str) -> BadObject | None:
    key = odb.oid_to_path(oid)
    if not fs.exists(key):
        return BadObject(path, key, "missing")
    actual = _md5_of(fs, key)
    return None if actual == oid.removesuffix(".dir") else BadObject(path, key, f"holds content with md5 {actual}")


def check_remote(root: Path, targets: list[str] | None = None) -> tuple[int, list[BadObject]]:
    """(objects checked, bad ones) for the outputs of `targets` (.dvc files; all of them when empty)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as e:
        raise UserError(f"{root.resolve()} is not a DVC project ({e}). Run this in the project folder.") from e
    with repo:
        try:
            odb = repo.cloud.get_remote_odb(None, hash_name="md5")
            stages = [s for t in targets for s in repo.stage.collect(t)] if targets else list(repo.index.stages)
        except DvcException as e:
            raise UserError(f"Cannot reach the DVC remote or read the targets: {e}") from e
        fs, checked, bad = odb.fs, 0, []
        for out in (o for s in stages for o in s.outs):
            oid = out.hash_info.value if out.hash_info else None
            if not oid:
                continue
            checked += 1
            found = _check_object(fs, odb, oid, str(out))
            if found or not oid.endswith(".dir"):
                bad += [found] if found else []
                continue
            with fs.open(odb.oid_to_path(oid), "rb") as f:  # the folder's manifest: [{"md5", "relpath"}, ...]
                entries = json.load(f)
            for entry in entries:
                checked += 1
                found = _check_object(fs, odb, entry["md5"], f"{out}/{entry['relpath']}")
                bad += [found] if found else []
    return checked, bad


def describe(bad: list[BadObject]) -> str:
    lines = [f"  {b.path}: object s3://{b.key} {b.problem}" for b in bad]
    return (f"{len(bad)} object(s) on the DVC remote do not match the md5 their .dvc file records, so `dvc pull` "
            f"cannot restore them:\n" + "\n".join(lines) + "\nFrom a checkout that holds a good copy of each file "
            "(`dvc status` clean), delete the object on the remote and push it again: `dvc push` skips objects "
            "that exist, whatever their content. Until then, `dvc pull` of those files fails (verify = true).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclf.storage.remote_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=".dvc files to check (default: all)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        checked, bad = check_remote(Path("."), args.targets)
        if bad:
            raise UserError(describe(bad))
        print(f"{checked} object(s) on the remote match their recorded md5s.", file=sys.stderr)


if __name__ == "__main__":
    main()
