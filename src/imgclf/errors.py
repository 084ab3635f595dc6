"""The one exception type for a user's mistake: entry points print its message and exit non-zero."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


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
