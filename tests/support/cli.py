"""``dfstream`` as a user runs it: a fresh process, no terminal (stdin, stdout and stderr are
not a tty), this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DFSTREAM = Path(sys.executable).with_name("dfstream")


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``env`` added, importing this checkout's code and with
    no terminal width (``COLUMNS``) to go by."""
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), merged.get("PYTHONPATH")]))
    merged.pop("COLUMNS", None)
    return merged


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run ``dfstream ARGS`` to its end."""
    return subprocess.run(
        [str(DFSTREAM), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=environment(env), timeout=timeout_s, check=False,
    )


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``dfstream ARGS`` (a service, a live view) with its output on pipes."""
    return subprocess.Popen(
        [str(DFSTREAM), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=environment(env),
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that failed on a known condition, checked to be one line on
    stderr (no traceback) with exit code 2."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]
