"""`dfstream bench pipeline` end to end on a tiny ramp: real redis-server, real face video, the
tiny untrained scorer and the published RetinaFace weights. Checks the JSON's shape and that
frames flowed, never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DFSTREAM = Path(sys.executable).parent / "dfstream"

pytestmark = pytest.mark.slow


def test_a_short_ramp_reports_streams_latency_and_batching(
    retinaface_weights: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "pipeline.png"
    done = subprocess.run(
        [str(DFSTREAM), "bench", "pipeline", "--json", "--streams", "1,2", "--warmup", "1",
         "--window", "2", "--video-seconds", "3", "--device", "cpu", "--gain-streams", "2",
         "--gain-seconds", "1.5", "--gain-rounds", "1", "--plot", str(plot)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"max_streams_sustained", "latency_ms", "batching_gain", "levels",
            "batching"} <= result.keys()
    assert result["max_streams_sustained"] in (0, 1, 2)
    assert [level["streams"] for level in result["levels"]] == [1, 2]
    for level in result["levels"]:
        assert level["frames_per_s"] > 0, level
        assert level["latency_ms"]["p50"] > 0, level
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    batching = result["batching"]
    assert batching["rounds"]["batch1"][0]["frames_per_batch"] == 1.0
    assert batching["frames_per_s"]["batched"] > 0 and batching["frames_per_s"]["batch1"] > 0
    assert result["batching_gain"] == pytest.approx(
        batching["frames_per_s"]["batched"] / batching["frames_per_s"]["batch1"], rel=0.01
    )
    assert result["detector"]["arch"] == "tiny" and result["detector"]["device"] == "cpu"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bench pipeline:" in done.stderr  # progress goes to stderr, JSON alone to stdout


def test_bad_stream_counts_are_refused_with_the_reason() -> None:
    done = subprocess.run(
        [str(DFSTREAM), "bench", "pipeline", "--streams", "4,2"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "increasing" in done.stderr
