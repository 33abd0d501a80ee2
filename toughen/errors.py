"""The one exception type the command line turns into a clean, one-line usage error (exit 2)."""


class ToughenUsageError(ValueError):
    """Bad input from the user: an unknown name, an out-of-range value, a missing file.

    The message is a full sentence that says what to do; the CLI prints it as is.
    """


def check_number(name: str, value, *, low: float | None = None, high: float | None = None, whole: bool = False,
                 above: bool = False, optional: bool = False):
    """``value`` if it is a finite number (a whole one when ``whole``) in [low, high] (or
    (low, high] when ``above``), or None when ``optional``; else a ToughenUsageError naming
    ``name``. Booleans are not numbers here (YAML's ``yes`` would otherwise be 1)."""
    if value is None and optional:
        return None
    kind = "a whole number" if whole else "a number"
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (isinstance(value, float) and value != value) or value in (
            float("inf"), float("-inf")):
        raise ToughenUsageError(f"{name} must be {kind}{_range(low, high, above)}, got {value!r}")
    if (low is not None and (value <= low if above else value < low)) or (high is not None and value > high):
        raise ToughenUsageError(f"{name} must be {kind}{_range(low, high, above)}, got {value!r}")
    return value


def _range(low, high, above) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if above else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " " + " and ".join(parts) if parts else ""
