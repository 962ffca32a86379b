"""The one base of every failure a user can fix (a bad input, a missing model, a refused URL).

The command line prints such an error as one line and exits 2; any other exception is a bug and
keeps its traceback. ``setting`` names the configuration key that fixes it, so that a command
with an option for that key can name its own flag too.
"""

from __future__ import annotations


class UserError(Exception):
    """A known condition; the message says what is wrong and how to fix it."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
