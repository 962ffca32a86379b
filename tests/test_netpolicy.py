"""The network policy against server-side request forgery: metadata and link-local addresses in
every spelling, metadata host names and names that resolve there are refused, with the rule
named and no retry; cameras on private addresses stay allowed."""

from __future__ import annotations

import pytest

from stream.config import IngestSettings
from stream.sources.netpolicy import DestinationRefused, NetworkPolicy, parse_address
from stream.sources.pyav import PyAVSource
from stream.sources.urls import UrlRefused, check_url
from tests.support.http import HttpServer
from tests.support.sources import collect, fast_ingest

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::169.254.169.254]/",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://169.254.169.254./",
    "https://169.254.169.254:80/",
    "rtsp://169.254.169.254:80/",
    "rtsp://user:pw@[fe80::1]/stream",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://0.0.0.0:8080/",
    "rtsp://239.1.2.3/multicast",
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_metadata_and_link_local_spellings_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused, match=r"refused by the network policy|metadata service name"):
        check_url(url, IngestSettings())


@pytest.mark.parametrize("url", ["rtsp://10.0.0.5/cam", "rtsp://192.168.1.20:554/h264",
                                 "http://127.0.0.1:8080/live.m3u8", "rtsp://camera.local/1"])
def test_cameras_on_private_and_loopback_addresses_stay_allowed(url: str) -> None:
    assert check_url(url, IngestSettings()).url == url


def test_deny_and_allow_lists() -> None:
    strict = IngestSettings(network_deny=["10.0.0.0/8"])
    with pytest.raises(UrlRefused, match=r"network_deny 10\.0\.0\.0/8"):
        check_url("rtsp://10.1.2.3/cam", strict)
    lenient = IngestSettings(network_allow=["169.254.10.0/24"])
    assert check_url("rtsp://169.254.10.7/cam", lenient)
    with pytest.raises(UrlRefused):
        check_url("http://169.254.169.254/", lenient)
    with pytest.raises(ValueError, match="not a CIDR"):
        IngestSettings(network_deny=["ten"])


def test_a_name_that_resolves_to_a_refused_address_is_refused() -> None:
    policy = NetworkPolicy.build()
    records = {"cam.example": ["10.0.0.9"], "evil.example": ["10.0.0.9", "169.254.169.254"]}
    policy.check_host("cam.example", records.__getitem__)
    refused = r"evil\.example \(resolves to 169\.254\.169\.254\)"
    with pytest.raises(DestinationRefused, match=refused):
        policy.check_host("evil.example", records.__getitem__)


def test_lenient_spellings_parse_to_their_address() -> None:
    assert str(parse_address("2852039166")) == "169.254.169.254"
    assert str(parse_address("0xa9fea9fe")) == "169.254.169.254"
    assert str(parse_address("[::ffff:a9fe:a9fe]")) == "::ffff:a9fe:a9fe"
    assert parse_address("camera.local") is None


def test_a_source_refused_at_connect_fails_at_once_and_is_never_retried() -> None:
    # localhost resolves to loopback (allowed) unless the deny list takes loopback away: the
    # check at connect time sees what the name resolves to, and nothing is requested.
    with HttpServer() as http:
        settings = fast_ingest(network_deny=["127.0.0.0/8", "::1/128"])
        url = http.url("/live.m3u8").replace("127.0.0.1", "localhost")
        source = PyAVSource("ssrf", url, settings, realtime=False)
        source.start()
        collect(source, 10, until=lambda _, s: s.status == "failed")
        stats = source.stats()
        source.stop()
        assert stats.status == "failed" and stats.reconnects == 0
        assert "refused by the network policy" in (stats.last_error or "")
        assert "not retried" in (stats.last_error or "")
        assert http.requests == []
