"""User-facing errors: each message says which field is wrong and how to fix it.

The CLI prints these as one line (no traceback); anything else is a bug and keeps its traceback.
"""


class CnnbenchError(Exception):
    """An error caused by the user's input, with a message that names the field and the fix."""


class ConfigError(CnnbenchError):
    """A study config that cannot be run (unknown knob, wrong type, bad base, impossible geometry)."""


class DataError(CnnbenchError):
    """A data set that cannot be loaded (missing folder, unknown name, wrong format)."""
