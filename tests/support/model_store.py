"""Pointing the model store somewhere for one test, in this process and in the commands it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import store


def use_store(monkeypatch: pytest.MonkeyPatch, home: Path, weights_dir: Path | None) -> Path:
    """Engines here read ``home`` (and ``weights_dir`` first); a command run in or from this test
    reads the same through DFSTREAM_HOME / DFSTREAM_WEIGHTS_DIR. conftest restores the store's
    locations after each test."""
    monkeypatch.setenv("DFSTREAM_HOME", str(home))
    if weights_dir is None:
        monkeypatch.delenv("DFSTREAM_WEIGHTS_DIR", raising=False)
    else:
        monkeypatch.setenv("DFSTREAM_WEIGHTS_DIR", str(weights_dir))
    store.configure(home=home, weights_dir=weights_dir)
    return home
