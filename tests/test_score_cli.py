"""`dfstream score`: the offline protocol through the live face stage and scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream.cli import app
from stream.sources.reader import uniform_indices

runner = CliRunner()


@pytest.fixture(autouse=True)
def _weights(retinaface_weights: Path) -> None:
    """Every test here runs the real face detector."""


def test_uniform_indices_are_the_papers_floor_of_linspace() -> None:
    assert uniform_indices(100, 5) == [0, 24, 49, 74, 99]
    assert uniform_indices(100, 32) == np.linspace(0, 99, 32, dtype=int).tolist()
    assert uniform_indices(3, 32) == [0, 1, 2]
    assert uniform_indices(0, 32) == []


def test_score_prints_a_video_score_and_says_untrained(face_video_360p: Path) -> None:
    result = runner.invoke(
        app, ["score", str(face_video_360p), "--frames", "6", "--arch", "tiny",
              "--allow-untrained", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["untrained"] is True
    assert "UNTRAINED" in report["warning"]
    assert report["frames_scored"] == 6
    assert report["frames_with_face"] >= 3
    per_frame = [f["p_fake"] for f in report["per_frame"] if f["p_fake"] is not None]
    assert report["p_fake"] == pytest.approx(sum(per_frame) / len(per_frame))
    assert all(0.0 < p < 1.0 for p in per_frame)
    indices = [f["index"] for f in report["per_frame"]]
    assert indices == sorted(indices) and indices[0] == 0


def test_a_video_without_faces_has_no_score(no_face_video: Path) -> None:
    result = runner.invoke(
        app, ["score", str(no_face_video), "--frames", "4", "--arch", "tiny",
              "--allow-untrained", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["frames_with_face"] == 0
    assert report["p_fake"] is None


def test_random_weights_are_refused_unless_allowed(face_video_360p: Path) -> None:
    result = runner.invoke(app, ["score", str(face_video_360p), "--arch", "tiny"])
    assert result.exit_code == 2
    assert "allow_untrained" in " ".join(result.output.split())


def test_missing_or_bad_files_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    result = runner.invoke(app, ["score", str(missing), "--arch", "tiny", "--allow-untrained"])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    result = runner.invoke(app, ["score", str(garbage), "--arch", "tiny", "--allow-untrained"])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "cannot be read" in output or "no video" in output
