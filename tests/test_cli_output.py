"""What the commands print into a log or a pipe (no terminal): nothing hard-wrapped at 80
columns, URLs whole, tables with every column, live views as plain lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cli import one_line_error, run_cli

ESTIMATE = re.compile(r"scoring (?P<frames>\d+) frames with ViT-B-16 on this CPU takes about "
                      r"\d+ s \([\d.]+ s a face crop, measured just now")
HUB_URL = re.compile(r"https://huggingface\.co/\S+/resolve/main/model\.safetensors")


def test_models_pull_offline_keeps_every_url_whole(tmp_path: Path) -> None:
    done = run_cli("models", "pull", "gend-clip-l-14",
                   env={"HF_HUB_OFFLINE": "1", "DFSTREAM_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line]
    assert len(HUB_URL.findall(done.stderr)) == 3, done.stderr
    assert all(line.startswith(("error: ", "Manual steps: ", "Then, ")) for line in lines), lines


def test_tables_keep_every_column_and_url_when_piped(tmp_path: Path) -> None:
    done = run_cli("models", "list", env={"DFSTREAM_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "clip-vit-l-14-openai" in line]
    assert len(rows) == 1, done.stdout
    assert "…" not in done.stdout
    assert HUB_URL.search(rows[0]) and rows[0].count("│") == 6, rows[0]


@pytest.mark.slow
def test_a_long_cpu_score_says_how_long_up_front(face_video_360p: Path) -> None:
    """60 frames through ViT-B/16 on the CPU take seconds: the estimate comes first."""
    done = run_cli("score", str(face_video_360p), "--arch", "ViT-B-16", "--allow-untrained",
                   "--frames", "60", "--json", env={"DFSTREAM_DETECTOR__DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    estimate = ESTIMATE.search(done.stderr)
    assert estimate, done.stderr
    assert json.loads(done.stdout)["frames_scored"] == int(estimate["frames"]) == 60


def test_faces_of_a_non_video_is_only_the_error(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.mp4"
    garbage.write_bytes(b"not a video\n" * 100)
    done = run_cli("faces", str(garbage))
    assert done.stdout == ""
    assert "cannot be opened as an image or a video" in one_line_error(done)


def test_faces_table_shows_the_five_landmarks_and_explains_unconfirmed_tracks(
    face_video_360p: Path,
) -> None:
    done = run_cli("faces", str(face_video_360p), "--frames", "3")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and rows[0][2] == "1?" and rows[1][2] == "1", done.stdout
    assert all(sum(cell.startswith("(") for cell in row) == 5 for row in rows), done.stdout
    assert "landmarks: eyes, nose, mouth corners" in done.stdout
    assert "track N?: not confirmed yet" in done.stdout
    help_text = run_cli("faces", "--help").stdout
    assert "5 landmarks" in " ".join(help_text.split())


def test_help_in_a_pipe_keeps_each_option_on_its_line() -> None:
    done = run_cli("serve", "--help")
    assert done.returncode == 0, done.stderr
    assert "YAML config file (else $DFSTREAM_CONFIG)." in done.stdout
    assert "Bind address (overrides api.host)." in done.stdout
    assert "…" not in done.stdout
