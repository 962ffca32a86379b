"""``dfstream demo`` end to end, as ``make demo`` runs it: two real RTSP cameras, an embedded
redis-server, the full service with its dashboard, and a JSON summary at the end.

Without an installed detector the demo trains (once, cached in the store) the synthetic demo
model; then its fake camera must alert and its real one stay clear, under the SYNTHETIC banner.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

DFSTREAM = Path(sys.executable).parent / "dfstream"
DASHBOARD = re.compile(r"dashboard: (http://127\.0\.0\.1:\d+/)")
STATUS_LINE = re.compile(r"demo \d+ s: fake \w+ [\d.]+/[\d.]+ fps, \d+ frames, p_stream ")


def no_trained_detector() -> bool:
    from engines.deepfake_detector import best_installed_bundle

    return all(best_installed_bundle(arch) is None for arch in ("ViT-L-14", "ViT-B-16"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_the_service_and_summarises() -> None:
    process = subprocess.Popen(
        [str(DFSTREAM), "demo", "--duration", "25", "--json-summary"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None and process.stdout is not None
    stderr: list[str] = []
    found = threading.Event()
    dashboard: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr.append(line)
            match = DASHBOARD.search(line)
            if match and not dashboard:
                dashboard.append(match.group(1))
                found.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        # The first run trains the synthetic demo model (about 1.5 minutes on two cores).
        assert found.wait(400), "no dashboard URL within 400 s:\n" + "".join(stderr)
        url = dashboard[0]
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<title>dfstream</title>" in page.text
        assert httpx.get(url + "readyz", timeout=10).status_code == 200
        streams: list[dict] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(s["frames_analysed"] for s in streams):
            streams = httpx.get(url + "api/streams", timeout=10).json()
            time.sleep(0.5)
        assert [s["id"] for s in streams] == ["fake", "real"]
        assert streams[0]["frames_analysed"] > 0, streams
        stdout = process.stdout.read()
        assert process.wait(60) == 0, "".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(5)

    summary = json.loads(stdout)
    assert summary["dashboard"] == url
    # Piped, the live table is a plain status line every 5 s, then the table once at the end.
    status = [line for line in stderr if STATUS_LINE.match(line)]
    assert len(status) >= 4, "".join(stderr)
    assert "fake online" in status[-1] and "real online" in status[-1], status[-1]
    assert summary["duration_s"] >= 25
    assert all(summary["frames_analysed"][name] > 0 for name in ("fake", "real"))
    latency = summary["latency_ms"]
    assert latency["samples"] > 0
    assert 0 < latency["p50"] <= latency["p99"]
    assert summary["events"]["types"][:2] == ["stream.online", "stream.online"]
    assert summary["events"]["types"][-1] == "stream.offline"  # the graceful shutdown wrote it
    assert summary["events"]["count"] == len(summary["events"]["types"])
    assert summary["untrained"] is False
    if no_trained_detector():
        assert summary["synthetic"] is True
        assert "SYNTHETIC DEMO MODEL" in "".join(stderr)
        assert summary["detector"]["arch"] == "tiny"
        model = summary["demo_model"]
        assert model["test"]["video_auroc"] > 0.5
        assert summary["thresholds"]["enter"] == model["thresholds"]["enter"]
        streams_seen = summary["streams"]
        assert streams_seen["fake"]["alerts"] >= 1, streams_seen
        assert streams_seen["real"]["alerts"] == 0, streams_seen
        assert "alert.start" in summary["events"]["types"]
