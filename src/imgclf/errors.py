"""The one exception type for a user's mistake: entry points print its message and exit non-zero."""

import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, model file).

    The message is shown as-is, without a traceback, so it must say what is wrong and how to fix it.
    """


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Every entry point's body runs inside this: a UserError becomes `error: <message>` and exit status 1."""
    try:
        yield
    except UserError as e:
        sys.exit(f"error: {e}")


def not_a_file(path: str | Path) -> str | None:
    """Why `path` cannot be read as a file ("does not exist", "is a folder", ...), or None for a regular file.

    A folder, a FIFO or a device such as /dev/zero exists: calling it missing sends the user looking in the
    wrong place (and reading a FIFO or /dev/zero would block or never end)."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "a special file"
    return f"is {kind}, not a regular file"
