"""``dfstream demo`` end to end, as ``make demo`` runs it: a real RTSP camera, an embedded
redis-server, the full service with its dashboard, and a JSON summary at the end."""

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


def no_trained_detector() -> bool:
    from engines.deepfake_detector import best_installed_bundle

    return all(best_installed_bundle(arch) is None for arch in ("ViT-L-14", "ViT-B-16"))


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_demo_runs_the_service_and_summarises() -> None:
    process = subprocess.Popen(
        [str(DFSTREAM), "demo", "--duration", "20", "--json-summary"],
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
        assert found.wait(60), "no dashboard URL within 60 s:\n" + "".join(stderr)
        url = dashboard[0]
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<title>dfstream</title>" in page.text
        assert httpx.get(url + "readyz", timeout=10).status_code == 200
        streams: list[dict] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(s["frames_analysed"] for s in streams):
            streams = httpx.get(url + "api/streams", timeout=10).json()
            time.sleep(0.5)
        assert [s["id"] for s in streams] == ["demo"]
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
    assert summary["duration_s"] >= 20
    assert summary["frames_analysed"]["demo"] > 0
    latency = summary["latency_ms"]
    assert latency["samples"] > 0
    assert 0 < latency["p50"] <= latency["p99"]
    assert summary["events"]["types"][0] == "stream.online"
    assert summary["events"]["types"][-1] == "stream.offline"  # the graceful shutdown wrote it
    assert summary["events"]["count"] == len(summary["events"]["types"])
    untrained = no_trained_detector()
    assert summary["untrained"] is untrained
    if untrained:
        assert "UNTRAINED" in "".join(stderr)
        assert summary["detector"]["arch"] == ("ViT-L-14" if on_cuda() else "tiny")
