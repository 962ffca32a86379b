"""The operating-point search: replay through the live scoring code, the measured false-alert
rate against its target, and `dfstream thresholds set --from` applying the proposal.

The traces here are SYNTHETIC: per-frame p_fake drawn from a correlated (AR(1)) process in
logit space, so that false alerts cluster the way real footage makes them. The end-to-end path
(decode, faces, scorer) is exercised on a trained bundle in test_training.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from stream.cli import app
from stream.config import Thresholds
from stream.operating_point import Trace, choose, replay
from stream.scoring import FaceScore

FPS = 5.0
BOX = (0.0, 0.0, 100.0, 120.0)


def synthetic_trace(name: str, fake: bool, seconds: float, rng: np.random.Generator) -> Trace:
    mean, phi, noise = (1.5 if fake else -2.0), 0.9, 0.6
    x, frames = mean, []
    for index in range(int(seconds * FPS)):
        x = mean + phi * (x - mean) + rng.normal(0.0, noise)
        p = 1.0 / (1.0 + math.exp(-x))
        frames.append((index / FPS, [FaceScore(1, BOX, 0.99, p)]))
    return Trace(name, fake, frames, seconds)


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    rng = np.random.default_rng(11)
    reals = [synthetic_trace(f"real-{i}", False, 90.0, rng) for i in range(80)]
    fakes = [synthetic_trace(f"fake-{i}", True, 30.0, rng) for i in range(20)]
    return reals + fakes


@pytest.mark.parametrize("rule", ["cusum", "hysteresis"])
def test_the_measured_rate_meets_the_target_within_its_interval(
    traces: list[Trace], rule: str
) -> None:
    target = 40.0
    result = choose(traces, rule, Thresholds(), target, fps=FPS)
    assert result["met"] and result["measured_false_alerts_per_hour"] <= target
    low, high = result["measured_interval_95"]
    assert low <= target <= high, result
    assert result["real_hours"] == pytest.approx(80 * 90 / 3600)
    # The count is what replaying the proposal through the scoring code gives.
    chosen = Thresholds(**result["thresholds"])
    reals = [t for t in traces if not t.fake]
    assert result["false_alerts"] == sum(len(replay(t, chosen)) for t in reals)
    assert result["fakes_detected"] == 20 and 0 < result["detection_delay_s"] < 10
    assert result["rule"] == rule and set(result["parameters"]) <= set(Thresholds.model_fields)


def test_a_stricter_target_gives_a_less_sensitive_cusum(traces: list[Trace]) -> None:
    loose = choose(traces, "cusum", Thresholds(), 60.0, fps=FPS)
    strict = choose(traces, "cusum", Thresholds(), 5.0, fps=FPS)
    assert strict["parameters"]["cusum_h"] > loose["parameters"]["cusum_h"]
    assert strict["measured_false_alerts_per_hour"] <= 5.0
    assert strict["detection_delay_s"] >= loose["detection_delay_s"]
    # Lorden's bound assumes independent frames: on these correlated ones (a strict h) the
    # measured rate exceeds what it promises.
    assert strict["lorden_bound_false_alerts_per_hour"] < strict["measured_interval_95"][1]


def test_an_unreachable_target_says_so_with_the_strictest_candidate() -> None:
    always = Trace("bright", False, [(i / FPS, [FaceScore(1, BOX, 0.99, 1.0)])
                                     for i in range(600)], 120.0)
    result = choose([always], "hysteresis", Thresholds(), 0.0, fps=FPS)
    assert result["met"] is False and result["measured_false_alerts_per_hour"] > 0


def test_thresholds_set_applies_an_operating_point_file(redis_url: str, tmp_path: Path) -> None:
    proposal = {"rule": "cusum", "parameters": {"cusum_prior": 0.5, "cusum_h": 7.25,
                                                "cusum_exit": 3.6}}
    path = tmp_path / "op.json"
    path.write_text(json.dumps(proposal))
    runner = CliRunner()
    done = runner.invoke(app, ["thresholds", "set", "--from", str(path), "--json",
                               "--redis-url", redis_url])
    assert done.exit_code == 0, done.output
    stored = json.loads(redis.Redis.from_url(redis_url).hget("dfstream:config", "thresholds"))
    assert stored["rule"] == "cusum" and stored["cusum_h"] == 7.25
    path.write_text("{}")
    bad = runner.invoke(app, ["thresholds", "set", "--from", str(path), "--redis-url",
                              redis_url])
    assert bad.exit_code == 2 and "not an operating-point result" in bad.output
