"""The one exception type for a user's mistake: entry points print its message and exit non-zero."""


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, model file).

    The message is shown as-is, without a traceback, so it must say what is wrong and how to fix it.
    """
