"""Least privilege: the service, `dfstream thresholds` and `dfstream watch` run as a Redis ACL
user restricted to the prefix's keys and channels and to the commands listed in
stream.redis_contract, against a real redis-server; Redis refuses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from stream.cli import app
from stream.redis_contract import acl_rules
from stream.redis_server import EmbeddedRedis
from stream.rtsp_camera import RtspCamera
from tests.support.service import ServiceServer, long_face_video, service_settings, wait_until

PASSWORD = "acl-test-pw"


@pytest.fixture()
def acl_redis() -> Iterator[tuple[EmbeddedRedis, str]]:
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "dfstream", f">{PASSWORD}", *acl_rules())
        admin.execute_command("ACL", "LOG", "RESET")
        yield server, f"redis://dfstream:{PASSWORD}@127.0.0.1:{server.port}/0"
        admin.close()


def test_the_documented_rules_are_the_ones_tested() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "redis.md").read_text()
    assert " ".join(acl_rules()) in docs


def test_the_service_runs_as_a_least_privilege_user(
    acl_redis: tuple[EmbeddedRedis, str], media_dir: Path, retinaface_weights: Path
) -> None:
    server, url = acl_redis
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    restricted = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        restricted.set("someone-else:key", "x")  # the rules do restrict
    admin.execute_command("ACL", "LOG", "RESET")
    with RtspCamera(long_face_video(media_dir)) as camera:
        settings = service_settings(url, streams=[{"id": "cam", "url": camera.url}])
        with ServiceServer(settings) as running, running.client() as api:
            assert wait_until(lambda: api.get("/api/streams/cam").json()["frames_analysed"] >= 5,
                              timeout_s=60)
            assert api.put("/api/thresholds", json={"enter": 0.9}).status_code == 200
            runner = CliRunner()
            for args in (["thresholds", "get", "--json"], ["watch", "--once"]):
                done = runner.invoke(app, [*args, "--redis-url", url])
                assert done.exit_code == 0, done.output
            assert api.delete("/api/streams/cam").status_code == 204
    events = admin.xrange("dfstream:events")
    types = [fields["event"] for _, fields in events]
    assert any('"stream.online"' in t for t in types)
    assert any('"stream.offline"' in t for t in types)
    refused = admin.execute_command("ACL", "LOG")
    assert refused == [], refused  # nothing the service, thresholds or watch sent was refused
