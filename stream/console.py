"""The one way commands make a rich Console, so that output reads the same on a terminal and in
a log: on a terminal rich uses its width; piped (a file, a CI log) nothing is hard-wrapped at 80
columns, so URLs stay whole and tables keep every column.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 1000
"""Columns a table may use when the output is not a terminal (rich's default there is 80)."""


def make_console(*, stderr: bool = False) -> Console:
    """A Console on stdout (results) or stderr (progress, errors), sized for where it writes."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=PIPED_WIDTH)

