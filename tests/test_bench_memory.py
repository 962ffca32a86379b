"""``dfstream bench memory``: the fit that separates memory per stream from memory analysis holds
once, and the command end to end on a real service (a smoke run: two short steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.bench.memory import fit, glibc_heap


def samples(*steps: tuple[int, float, float]) -> list[dict[str, float]]:
    return [{"streams": n, "rss_mb": rss, "frames_per_batch": fpb} for n, rss, fpb in steps]


def test_the_slope_is_fitted_over_the_steps_with_full_batches() -> None:
    # 30 MB per stream while batches grow, then 5 MB per stream once they are full (16 frames).
    steps = samples((1, 1030, 1.0), (8, 1240, 2.0), (16, 1480, 15.0), (24, 1520, 16.0),
                    (32, 1560, 16.0))
    fitted = fit(steps, idle_mb=1000, max_frames=16)
    assert fitted["per_stream_mb"] == pytest.approx(5.0)
    assert fitted["shared_mb"] == pytest.approx(400.0)
    assert fitted["fitted_steps"] == [16, 24, 32] and fitted["batches_full"]


def test_without_two_full_steps_every_step_is_fitted_and_said_so() -> None:
    fitted = fit(samples((1, 1010, 1.0), (2, 1020, 1.2)), idle_mb=1000, max_frames=16)
    assert fitted["per_stream_mb"] == pytest.approx(10.0) and fitted["fitted_steps"] == [1, 2]
    assert not fitted["batches_full"]
    assert fit(samples((1, 1010, 1.0)), idle_mb=1000, max_frames=16)["per_stream_mb"] is None


def test_glibc_heap_figures_are_read_or_absent() -> None:
    heap = glibc_heap()
    assert heap is None or heap["in_use_mb"] > 0


@pytest.mark.slow
def test_bench_memory_smoke(retinaface_weights: Path) -> None:
    dfstream = Path(sys.executable).parent / "dfstream"
    result = subprocess.run(
        [str(dfstream), "bench", "memory", "--steps", "1,2", "--settle", "4", "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert [s["streams"] for s in out["samples"]] == [1, 2]
    assert all(s["rss_mb"] > out["rss_idle_mb"] * 0.5 for s in out["samples"])
    assert out["fitted_steps"] == [1, 2] and out["max_frames"] == 16
    assert isinstance(out["per_stream_mb"], float)
