"""``dfstream`` as a user runs it: a fresh process, no terminal (stdin, stdout and stderr are
not a tty), this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DFSTREAM = Path(sys.executable).with_name("dfstream")


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``dfstream ARGS`` to its end; ``env`` is added to this process's environment."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment.pop("COLUMNS", None)
    return subprocess.run(
        [str(DFSTREAM), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=environment, timeout=timeout_s, check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that failed on a known condition, checked to be one line on
    stderr (no traceback) with exit code 2."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]
