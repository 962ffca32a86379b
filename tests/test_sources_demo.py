"""The interim demo: frames flow from a real RTSP stream and from a file replayed as live."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DFSTREAM = Path(sys.executable).parent / "dfstream"


def test_demo_shows_frames_flowing() -> None:
    result = subprocess.run(
        [str(DFSTREAM), "demo", "--duration", "5", "--sample-seconds", "3", "--json-summary"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["streams"]) == {"rtsp-camera", "file-replay"}
    for stream in summary["streams"].values():
        assert stream["frames_taken"] >= 5
        assert stream["status"] == "stopped"
        assert stream["decoded_to_taken_ms"]["p50"] is not None
