"""Property tests (hypothesis) of the Redis message codec and the config loader: every score
message decodes to what was scored, every event has the one schema, and any YAML a user may
write gives either Settings or one ConfigError, never another exception."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import ConfigError, Settings, Thresholds, load_settings
from stream.publish import encoding
from stream.redis_contract import RedisKeys
from stream.scoring import FaceScore, StreamScoring

BOX = (1.0, 2.0, 30.0, 40.0)
frames = st.lists(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 1.0)), max_size=4,
             unique_by=lambda face: face[0]),
    min_size=1, max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(trace=frames, rule=st.sampled_from(["hysteresis", "cusum"]))
def test_score_messages_and_events_decode_to_what_was_scored(
    trace: list[list[tuple[int, float]]], rule: str
) -> None:
    scorer = StreamScoring("cam", Thresholds(rule=rule, min_duration_s=0.0, window_s=0.5))
    keys = RedisKeys()
    lifecycle = set(encoding.stream_event("stream.online", "cam", now=0.0, seq=0, epoch=1))
    for seq, faces in enumerate(trace):
        result = scorer.update(seq=seq, pts=seq * 0.2, captured_at=seq * 0.2, now=seq * 0.2,
                               faces=[FaceScore(t, BOX, 0.9, p) for t, p in faces])
        message = orjson.loads(encoding.score_message(result, 3, 123.0))
        assert (message["stream"], message["seq"], message["epoch"]) == ("cam", seq, 3)
        assert message["p_stream"] == result.p_stream and message["state"] == result.state
        assert [(f["track"], f["p_fake"]) for f in message["faces"]] == [
            (f.track, f.p_fake) for f in result.faces]
        for event in result.events:
            encoded = orjson.loads(encoding.encode(encoding.alert_event(event, 3, keys)))
            assert set(encoded) == lifecycle  # one schema for every event
            assert encoded["type"] == event.type and encoded["rule"] == rule


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=3),
    max_leaves=10,
)
sections = st.sampled_from([*Settings.model_fields, "nonsense", ""])


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(sections, json_values, max_size=4))
def test_any_yaml_gives_settings_or_one_config_error(tmp_path: Path, config: dict) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        loaded = load_settings(path)
    except ConfigError as exc:
        assert str(exc).startswith(("invalid configuration", "config file"))
    else:
        assert isinstance(loaded, Settings)


def test_a_dumped_configuration_loads_back_equal(tmp_path: Path) -> None:
    original = Settings(streams=[{"id": "cam", "url": "rtsp://10.0.0.5/s", "calibration": "lobby"}],
                        scoring={"thresholds": {"rule": "cusum", "cusum_h": 7.5}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(original.model_dump(mode="json", exclude_none=True)))
    assert load_settings(path) == original
