"""Runs the tests that send real traffic (tests/netns/: WebRTC, SSRF) inside a network
namespace of their own, with a mount namespace so that they may bind their own /etc/hosts.

WebRTC gathers candidates on every interface it finds; in a fresh namespace there is only
``lo``, so no packet of these tests can leave the machine; the SSRF tests put a fake cloud
metadata server on 169.254.169.254 there. The namespace needs root (or user
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


def test_the_netns_suite_in_its_own_network_namespace(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        pytest.fail("the tests in tests/netns need unshare (util-linux) and ip (iproute2)")
    report = tmp_path / "netns.xml"
    inner = (
        'ip link set lo up && exec "$0" -m pytest "$@"'
    )
    env = {**os.environ, "DFSTREAM_IN_NETNS": "1"}
    result = subprocess.run(
        [unshare, "--net", "--mount", "--", "sh", "-c", inner, sys.executable,
         str(TESTS / "netns"), "-q", "-p", "no:cacheprovider", "-x",
         f"--junitxml={report}", "-o", "junit_family=xunit2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.fail(f"cannot make a network namespace (needs root): {result.stderr.strip()}")
    assert result.returncode == 0, f"tests failed inside the namespace:\n{output}"
    assert "passed" in result.stdout, output
