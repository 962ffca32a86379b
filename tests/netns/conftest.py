"""Guards the WebRTC tests: they run only where ``lo`` is the one network interface."""

from __future__ import annotations

import socket

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise pytest.UsageError(
            f"the WebRTC tests send real traffic and run only in a network namespace with "
            f"nothing but lo (found {interfaces}); run tests/test_netns.py"
        )
