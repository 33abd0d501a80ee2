"""The one exception type the command line turns into a clean, one-line usage error (exit 2)."""


class ToughenUsageError(ValueError):
    """Bad input from the user: an unknown name, an out-of-range value, a missing file.

    The message is a full sentence that says what to do; the CLI prints it as is.
    """
