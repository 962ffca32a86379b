"""The real services the suite depends on come up and work."""

from __future__ import annotations

from pathlib import Path

import av
import redis

from stream.redis_server import EmbeddedRedis, RedisServerError
from stream.rtsp_camera import RtspCamera


def test_redis_server_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_embedded_redis_on_unix_socket_with_password() -> None:
    with EmbeddedRedis(tcp=False, password="s3cret") as server:
        assert server.url.startswith("unix://")
        assert redis.Redis.from_url(server.url).ping()
        try:
            redis.Redis(unix_socket_path=str(server.socket_path)).ping()
        except redis.exceptions.AuthenticationError:
            pass
        else:
            raise AssertionError("a client without the password was let in")


def test_embedded_redis_missing_binary_is_a_clear_error() -> None:
    server = EmbeddedRedis(executable="redis-server-that-does-not-exist")
    try:
        server.start()
    except RedisServerError as exc:
        assert "not found" in str(exc)
    else:
        raise AssertionError("start() succeeded without a binary")
    finally:
        server.close()


def test_rtsp_server_serves_a_pyav_file(face_video_360p: Path) -> None:
    with RtspCamera(face_video_360p) as server:
        with av.open(server.url, options={"rtsp_transport": "tcp", "timeout": "5000000"}) as c:
            frames = 0
            for _ in c.decode(video=0):
                frames += 1
                if frames == 5:
                    break
        assert frames == 5
