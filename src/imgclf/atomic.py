"""Files written beside their final name and renamed into place, so that a crash, a SIGKILL or a full disk
never leaves a truncated file under a name that a user (or the next stage) trusts.

Torch-free on purpose: the app and the predictor use it too. Every write path in the project goes through
`atomic_path` (for libraries that want a path: savefig, onnx.save, torch.save) or `write_text` /
`write_json`; storage failures become one `UserError` that names the file and what to do.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from imgclf.errors import UserError

_STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free space or write elsewhere",
    errno.EROFS: "the filesystem is read-only: write elsewhere",
    # Python ignores SIGXFSZ, so a file-size limit shows up as EFBIG on the write that passes it.
    errno.EFBIG: "the file would pass the file-size limit (see `ulimit -f`) or the filesystem's largest file: "
                 "raise the limit or write elsewhere",
    errno.EACCES: "permission denied: write to a folder you own",
    errno.EPERM: "permission denied: write to a folder you own",
}


def is_storage_failure(error: OSError) -> bool:
    """Whether an OSError is the storage's fault (full, read-only, no permission), not the program's."""
    return error.errno in _STORAGE_HINTS


def storage_error(error: OSError, path: Path | str, what: str = "file") -> UserError:
    """A one-paragraph UserError for an OSError met while writing `path`."""
    hint = _STORAGE_HINTS.get(error.errno, "check that the folder exists and is writable")
    return UserError(f"Cannot write the {what} {path} ({error.strerror or error}): {hint}. Nothing was left "
                     f"under that name; files written before it are intact.")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _discard(temporary: Path) -> None:
    # A read-only filesystem refuses even to remove a file that was never created (EROFS, not ENOENT):
    # that refusal must not replace the error being reported.
    with suppress(OSError):
        temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the data is on disk before the rename makes it visible under its final name
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str, what: str = "file") -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success the file written there is renamed to `path`.

    On any error the temporary file is removed and `path` keeps its old content (or stays absent).
    """
    final = Path(path)
    temporary = _temporary_name(final)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, final)
    except OSError as e:
        _discard(temporary)
        if e.errno in _STORAGE_HINTS or isinstance(e, (FileNotFoundError, NotADirectoryError)):
            raise storage_error(e, final, what) from e
        raise
    except BaseException:
        _discard(temporary)
        raise


def write_bytes(path: Path | str, data: bytes, what: str = "file") -> None:
    with atomic_path(path, what) as temporary:
        temporary.write_bytes(data)


def write_text(path: Path | str, text: str, what: str = "file") -> None:
    with atomic_path(path, what) as temporary:
        temporary.write_text(text)


def write_json(path: Path | str, obj: object, what: str = "file") -> None:
    """JSON that every parser reads: a NaN or infinity raises ValueError instead of writing bare `NaN`."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", what)
