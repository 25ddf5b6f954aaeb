"""One error type for bad usage: what the user gave cannot work, and the message says what and how to fix it.

`UsageError` is a `ValueError` (and `UnknownNameError` also a `KeyError`), so Python callers catch what they always
caught; the `hfkd` command prints these as one line, without a traceback. Every other exception (a library bug, an
out-of-memory error in the middle of training) keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A value given to hfkd cannot work; the message names it and the fix."""


class UnknownNameError(UsageError, KeyError):
    """A name (a loss, a model alias, ...) that is not known; the message lists close matches."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; a message reads better as it is.
        return str(self.args[0]) if self.args else ""
