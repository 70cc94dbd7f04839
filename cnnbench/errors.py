"""User-facing errors: each message says which field is wrong and how to fix it.

The CLI prints these as one line (no traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' when none is close: every error that
    names an unknown word offers it the same way."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class CnnbenchError(Exception):
    """An error caused by the user's input, with a message that names the field and the fix."""


class ConfigError(CnnbenchError):
    """A study config that cannot be run (unknown knob, wrong type, bad base, impossible geometry)."""


class DataError(CnnbenchError):
    """A data set that cannot be loaded (missing folder, unknown name, wrong format)."""
