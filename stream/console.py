"""The one way commands make a rich Console, so that output reads the same on a terminal and in
a log: on a terminal rich uses its width; piped (a file, a CI log) nothing is hard-wrapped at 80
columns, so URLs stay whole and tables keep every column.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPED_WIDTH = 1000
"""Columns a table may use when the output is not a terminal (rich's default there is 80)."""
HELP_WIDTH = 120
"""Columns of ``--help`` when it is not shown on a terminal."""


def make_console(*, stderr: bool = False) -> Console:
    """A Console on stdout (results) or stderr (progress, errors), sized for where it writes."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=PIPED_WIDTH)



def widen_help() -> None:
    """``--help`` into a pipe: as wide as a log line, not 80 columns, so that option help is
    not broken into a word or two per line (typer sizes help by TERMINAL_WIDTH, else 80)."""
    from typer import rich_utils

    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH"):
        rich_utils.MAX_WIDTH = HELP_WIDTH
