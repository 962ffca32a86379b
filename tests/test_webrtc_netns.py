"""Runs the WebRTC tests (tests/netns/) inside a network namespace of their own.

WebRTC gathers candidates on every interface it finds; in a fresh namespace there is only
``lo``, so no packet of these tests can leave the machine. The namespace needs root (or user
namespaces) and ``unshare`` from util-linux; without them this fails, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def test_webrtc_suite_in_its_own_network_namespace(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        pytest.fail("the WebRTC tests need unshare (util-linux) and ip (iproute2)")
    report = tmp_path / "netns.xml"
    inner = (
        'ip link set lo up && exec "$0" -m pytest "$@"'
    )
    env = {**os.environ, "DFSTREAM_IN_NETNS": "1"}
    result = subprocess.run(
        [unshare, "--net", "--", "sh", "-c", inner, sys.executable,
         str(TESTS / "netns"), "-q", "-p", "no:cacheprovider", "-x",
         f"--junitxml={report}", "-o", "junit_family=xunit2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.fail(f"cannot make a network namespace (needs root): {result.stderr.strip()}")
    assert result.returncode == 0, f"WebRTC tests failed inside the namespace:\n{output}"
    assert "passed" in result.stdout, output
