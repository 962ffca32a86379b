"""Known failures of every command, as a user meets them in a log: one line on stderr naming
the reason and the fix (the command's own flag where it has one), exit code 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.cli import one_line_error, run_cli
from tests.support.service import ServiceServer, service_settings


@pytest.fixture()
def store_without_detector(tmp_path: Path, retinaface_weights: Path) -> dict[str, str]:
    """A model store with the face detector but no trained deepfake detector."""
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    shutil.copy(retinaface_weights, models / retinaface_weights.name)
    (tmp_path / "weights").mkdir()
    return {"DFSTREAM_HOME": str(tmp_path / "home"), "DFSTREAM_WEIGHTS_DIR":
            str(tmp_path / "weights"), "DFSTREAM_CONFIG": ""}


def test_serve_without_a_trained_detector_says_so_before_serving(
    store_without_detector: dict[str, str],
) -> None:
    done = run_cli("serve", "--port", "0", env=store_without_detector)
    error = one_line_error(done)
    assert "no trained ViT-L-14 detector is installed" in error
    assert "--allow-untrained" in error and "dfstream models pull" in error
    assert done.stdout == ""


def test_score_without_a_trained_detector_names_its_flag(
    store_without_detector: dict[str, str], face_video_360p: Path,
) -> None:
    error = one_line_error(run_cli("score", str(face_video_360p), "--arch", "tiny",
                                   env=store_without_detector))
    assert "(or pass --allow-untrained)" in error


def test_an_unknown_arch_reads_like_config_check(face_video_360p: Path) -> None:
    done = run_cli("score", str(face_video_360p), "--arch", "vit-huge")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        "error: invalid configuration:",
        "  detector.arch: Input should be 'ViT-L-14', 'ViT-B-16' or 'tiny' (got 'vit-huge')",
    ]


def test_streams_the_api_refuses_read_like_config_check(redis_url: str) -> None:
    with ServiceServer(service_settings(redis_url)) as server:
        bad_id = one_line_error(run_cli("streams", "add", "bad id!", "rtsp://cam/x",
                                        "--api", server.url))
        bad_fps = one_line_error(run_cli("streams", "add", "cam", "rtsp://cam/x", "--fps", "-1",
                                         "--api", server.url))
    assert bad_id.startswith("error: STREAM_ID (id): String should match pattern")
    assert bad_id.endswith("(got 'bad id!') (POST /api/streams: HTTP 422)")
    assert bad_fps.startswith(
        "error: --fps (analysis_fps): Input should be greater than 0 (got -1.0)")
    assert "'loc'" not in bad_id + bad_fps
