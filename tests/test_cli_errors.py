"""Known failures of every command, as a user meets them in a log: one line on stderr naming
the reason and the fix (the command's own flag where it has one), exit code 2, no traceback."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from stream.redis_server import free_tcp_port
from tests.support.cli import one_line_error, run_cli, start_cli
from tests.support.service import ServiceServer, service_settings, wait_until


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


def test_config_check_and_serve_refuse_a_stream_the_url_policy_refuses(
    tmp_path: Path, store_without_detector: dict[str, str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("streams:\n  - id: leak\n    url: file:///etc/passwd\n")
    for command in ("config", "check"), ("serve", "--allow-untrained"):
        error = one_line_error(run_cli(*command, "-c", str(config), env=store_without_detector))
        assert error.startswith("error: stream 'leak' (streams[0].url): URL scheme 'file' is "
                                "not allowed"), error
        assert "ingest.allowed_schemes" in error


def test_a_stream_that_is_not_a_url_is_called_so(redis_url: str) -> None:
    with ServiceServer(service_settings(redis_url)) as server:
        error = one_line_error(run_cli("streams", "add", "f2", "notaurl", "--api", server.url))
    assert "'notaurl' is not a URL: expected one of rtsp://..., rtsps://..." in error
    assert "'file' is not allowed" not in error


def test_an_unreachable_camera_shows_the_url_given(redis_url: str) -> None:
    url = f"rtsp://viewer:pw@127.0.0.1:{free_tcp_port()}/cam"
    with ServiceServer(service_settings(redis_url)) as server, server.client() as client:
        assert client.post("/api/streams", json={"id": "cam", "url": url}).status_code == 201
        assert wait_until(lambda: client.get("/api/streams/cam").json()["last_error"], 30)
        done = run_cli("streams", "list", "--api", server.url)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if " cam " in line)
    assert "Connection refused" in row and "rtsp://viewer:***@127.0.0.1:" in row, row
    assert "timeout=" not in row and "tcp://" not in row and "pw@" not in row


SECRETS = """redis:
  url: redis://:s3cret@127.0.0.1:{port}/0
api:
  token: tok-s3cret
detector:
  arch: tiny
  allow_untrained: true
streams:
  - id: cam
    url: rtsp://viewer:s3cret@127.0.0.1:{port}/cam
webrtc:
  ice_servers:
    - urls: ["turn:turn.example.net:3478"]
      username: dfstream
      credential: turn-s3cret
  publish_tokens:
    lobby: pub-s3cret
"""


def test_config_check_masks_passwords_and_the_token(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(SECRETS.format(port=free_tcp_port()))
    done = run_cli("config", "check", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout
    assert '"url": "redis://:***@127.0.0.1:' in done.stdout
    assert '"token": "**********"' in done.stdout
    assert '"url": "rtsp://viewer:***@127.0.0.1:' in done.stdout
    assert '"credential": "**********"' in done.stdout
    assert '"lobby": "**********"' in done.stdout


def test_the_service_log_holds_no_password(tmp_path: Path) -> None:
    """Redis and the camera are down: the service logs their failures, never a password."""
    config = tmp_path / "config.yaml"
    config.write_text(SECRETS.format(port=free_tcp_port()))
    process = start_cli("serve", "-c", str(config), "--port", "0")
    try:
        assert process.stderr is not None
        logged = []
        for line in process.stderr:
            logged.append(line)
            if "Redis" in line and "127.0.0.1" in line:  # the outage is being logged
                break
        process.terminate()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(logged) + out + err
    assert "127.0.0.1" in text and "s3cret" not in text, text


def test_serve_on_a_taken_port_says_so_before_loading_anything() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        error = one_line_error(run_cli("serve", "--port", str(port)))
    assert error.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_a_command_with_a_progress_bar_still_fails_in_one_line(tmp_path: Path) -> None:
    """Into a pipe the bar is not drawn, so it leaves no empty line before the error."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    error = one_line_error(run_cli("data", "synth", "--out", str(blocker / "set"),
                                   "--videos", "2"))
    assert "Not a directory" in error or "exists" in error, error


def test_a_bad_threshold_is_refused_before_redis_is_asked() -> None:
    # Nothing listens on that port: the value, not Redis, is what the user hears about.
    done = run_cli("thresholds", "set", "--enter", "2",
                   "--redis-url", f"redis://127.0.0.1:{free_tcp_port()}/0")
    error = one_line_error(done)
    assert error == ("error: invalid thresholds for the defaults: enter: Input should be less "
                     "than or equal to 1 (got 2.0)"), error
