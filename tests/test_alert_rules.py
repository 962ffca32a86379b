"""Both alert rules, hysteresis and CUSUM, property-tested (hypothesis) on generated traces: no
alert on a real stream below the threshold, an alert within the predicted delay after a step,
exactly one end per start; plus exact CUSUM traces and per-track resets."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Thresholds
from stream.scoring import (
    CUSUM_CAP,
    AlertState,
    FaceScore,
    ScoreResult,
    StreamScoring,
    cusum_step,
    logit,
)

STEP = 0.2  # the service's default 5 fps analysis
BOX = (10.0, 20.0, 110.0, 140.0)
RULES = st.sampled_from(["hysteresis", "cusum"])


def thresholds(rule: str, **extra: float) -> Thresholds:
    values = {"enter": 0.8, "exit": 0.6, "cusum_prior": 0.5, "cusum_h": 4.0, "cusum_exit": 2.0,
              "min_duration_s": 0.4, "hold_s": 1.0, "cooldown_s": 1.0, "window_s": 1.0}
    return Thresholds(rule=rule, **{**values, **extra})  # type: ignore[arg-type]


def drive(scorer: StreamScoring, trace: list[list[tuple[int, float]]]) -> list[ScoreResult]:
    out = []
    for seq, frame in enumerate(trace):
        out.append(scorer.update(seq=seq, pts=seq * STEP, captured_at=seq * STEP,
                                 now=seq * STEP,
                                 faces=[FaceScore(t, BOX, 0.99, p) for t, p in frame]))
    return out


def event_types(results: list[ScoreResult]) -> list[str]:
    return [e.type for r in results for e in r.events]


@settings(max_examples=60, deadline=None)
@given(rule=RULES, p=st.floats(0.0, 0.49), frames=st.integers(1, 300))
def test_a_real_stream_below_the_threshold_never_alerts(rule: str, p: float, frames: int) -> None:
    # Below exit's reach for hysteresis (p < 0.8 = enter) and below the prior for CUSUM.
    results = drive(StreamScoring("cam", thresholds(rule)), [[(1, p)]] * frames)
    assert event_types(results) == []
    assert all(r.state is AlertState.CLEAR for r in results)


def predicted_frames(rule: str, th: Thresholds, p_fake: float) -> int:
    """Frames after the step until the alert: the statistic reaches its enter level, then
    holds for min_duration_s (the rolling mean fills its window; CUSUM climbs from 0)."""
    hold = math.ceil(th.min_duration_s / STEP - 1e-9)
    if rule == "hysteresis":
        return math.ceil(th.window_s / STEP) + hold + 1
    per_frame = logit(p_fake) - logit(th.cusum_prior)
    return math.ceil(th.cusum_h / per_frame) + hold + 1


@settings(max_examples=60, deadline=None)
@given(rule=RULES, before=st.integers(0, 50), p_real=st.floats(0.0, 0.3),
       p_fake=st.floats(0.85, 1.0))
def test_a_step_to_fake_alerts_within_the_predicted_delay(
    rule: str, before: int, p_real: float, p_fake: float
) -> None:
    th = thresholds(rule)
    delay = predicted_frames(rule, th, p_fake)
    trace = [[(1, p_real)]] * before + [[(1, p_fake)]] * (delay + 5)
    results = drive(StreamScoring("cam", th), trace)
    starts = [r.seq for r in results for e in r.events if e.type == "alert.start"]
    assert len(starts) == 1
    assert before <= starts[0] <= before + delay


frames_strategy = st.lists(
    st.lists(st.tuples(st.integers(1, 3), st.floats(0.0, 1.0)), max_size=3,
             unique_by=lambda face: face[0]),
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(rule=RULES, trace=frames_strategy)
def test_every_start_has_exactly_one_end(rule: str, trace: list[list[tuple[int, float]]]) -> None:
    scorer = StreamScoring("cam", thresholds(rule))
    results = drive(scorer, trace)
    end = scorer.finish(seq=len(trace), pts=len(trace) * STEP, captured_at=0.0,
                        now=len(trace) * STEP)
    types = event_types(results) + [e.type for e in end]
    lifecycle = [t for t in types if t != "alert.update"]
    assert lifecycle == ["alert.start", "alert.end"] * (len(lifecycle) // 2)
    ids = [e.event_id for r in results for e in r.events] + [e.event_id for e in end]
    assert len(set(ids)) == lifecycle.count("alert.start")


def test_cusum_accumulates_log_likelihood_ratios_and_is_capped() -> None:
    th = thresholds("cusum")
    s = 0.0
    for _ in range(3):
        s = cusum_step(s, 0.9, th)
    assert math.isclose(s, 3 * math.log(9))
    assert math.isclose(cusum_step(s, 0.1, th), s - math.log(9))
    assert cusum_step(0.5, 0.01, th) == 0.0  # never below 0
    for _ in range(50):
        s = cusum_step(s, 0.999, th)
    assert s == CUSUM_CAP * th.cusum_h


def test_cusum_events_carry_the_rule_and_statistic_and_a_new_track_starts_afresh() -> None:
    th = thresholds("cusum", cooldown_s=0.0)
    # Track 1 fakes for 6 frames (S = 6 log 9 = 13.2 -> capped at 8); it leaves, and a new
    # face (track 2) appears: its S starts at 0, so no instant alert from the old evidence.
    trace = [[(1, 0.9)]] * 6 + [[]] * 12 + [[(2, 0.6)]] * 3
    results = drive(StreamScoring("cam", th), trace)
    start = next(e for r in results for e in r.events if e.type == "alert.start")
    assert start.to_dict()["rule"] == "cusum"
    assert start.statistic is not None and start.statistic >= th.cusum_h
    assert start.to_dict()["thresholds"]["cusum_h"] == th.cusum_h
    assert event_types(results) == ["alert.start", "alert.end"]
    assert results[-1].state is AlertState.CLEAR
