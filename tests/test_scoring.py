"""Rolling scores, hysteresis and alert events on scripted traces (exact expected events)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pytest

from stream.config import ScoringSettings, Thresholds
from stream.scoring import AlertState, FaceScore, ScoreResult, ScoringError, StreamScoring

STEP = 0.25  # 4 analysed frames per second; exact in binary, so boundaries are exact too
BOX = (10.0, 20.0, 110.0, 140.0)

# A window shorter than the frame step: p_rolling equals the frame's p_fake, which makes the
# hysteresis traces easy to read. Rolling behaviour has its own tests below.
SHARP = Thresholds(
    enter=0.8, exit=0.6, min_duration_s=1.0, hold_s=1.0, cooldown_s=2.0, window_s=0.1
)


def faces(*scores: tuple[int, float]) -> list[FaceScore]:
    return [FaceScore(track, BOX, 0.99, p) for track, p in scores]


def run(
    scorer: StreamScoring, trace: Iterable[Sequence[tuple[int, float]]], first_seq: int = 0
) -> list[ScoreResult]:
    results = []
    for i, frame_faces in enumerate(trace):
        seq = first_seq + i
        results.append(
            scorer.update(
                seq=seq, pts=seq * STEP, captured_at=1000.0 + seq * STEP, now=seq * STEP,
                faces=faces(*frame_faces),
            )
        )
    return results


def events(results: list[ScoreResult]) -> list[tuple]:
    return [
        (e.type, e.seq, e.start, e.end, e.top_score, e.tracks)
        for r in results
        for e in r.events
    ]


def one_track(*segments: tuple[int, float]) -> list[list[tuple[int, float]]]:
    """``(frames, p)`` segments of a single face, track 1."""
    return [[(1, p)] for n, p in segments for _ in range(n)]


def test_scripted_trace_gives_exact_events() -> None:
    scorer = StreamScoring("cam1", SHARP, config_version=3)
    trace = one_track((4, 0.3), (8, 0.9), (6, 0.4), (2, 0.3))
    results = run(scorer, trace)
    # Above enter from seq 4 (t=1.0); alert after 1 s at seq 8; below exit from seq 12 (t=3.0);
    # clear after 1 s hold at seq 16, with end = 3.0.
    assert events(results) == [
        ("alert.start", 8, 1.0, None, 0.9, (1,)),
        ("alert.end", 16, 1.0, 3.0, 0.9, (1,)),
    ]
    start = results[8].events[0]
    end = results[16].events[0]
    assert start.event_id == end.event_id == "cam1-2000-8"
    assert start.config_version == end.config_version == 3
    assert start.thresholds == SHARP
    assert [r.state for r in results[7:9]] == [AlertState.CLEAR, AlertState.ALERT]
    assert [r.state for r in results[15:17]] == [AlertState.ALERT, AlertState.CLEAR]
    assert all(r.alert_id == "cam1-2000-8" for r in results[8:16])
    assert results[16].alert_id is None
    assert start.to_dict()["thresholds"] == SHARP.model_dump()
    assert start.captured_at == 1000.0 + 8 * STEP


def test_flapping_around_the_thresholds_does_not_flap_alerts() -> None:
    scorer = StreamScoring("cam1", SHARP)
    trace = (
        one_track((1, 0.9), (1, 0.5)) * 6  # above enter never for 1 s: no alert
        + one_track((6, 0.95))  # an alert at the 5th frame above enter
        + one_track((1, 0.5), (1, 0.85), (2, 0.55), (1, 0.7)) * 5  # dips shorter than hold
        + one_track((5, 0.2))  # a real drop: end after 1 s
        + one_track((1, 0.9), (1, 0.1)) * 4  # flapping again inside the cooldown
        + one_track((12, 0.2))
    )
    results = run(scorer, trace)
    assert events(results) == [
        ("alert.start", 16, 3.0, None, 0.95, (1,)),
        ("alert.end", 47, 3.0, 10.75, 0.95, (1,)),
    ]
    assert sum(r.state is AlertState.ALERT for r in results) == 47 - 16


def test_cooldown_delays_a_new_alert_until_it_has_passed() -> None:
    scorer = StreamScoring("cam1", SHARP.model_copy(update={"cooldown_s": 3.0}))
    # Alert, drop, then high again soon: enter + min_duration are met again at seq 18, but the
    # cooldown (3 s after the end at seq 10, t=2.5) holds the new alert back to seq 22.
    trace = one_track((6, 0.9), (8, 0.3), (16, 0.9))
    results = run(scorer, trace)
    assert events(results) == [
        ("alert.start", 4, 0.0, None, 0.9, (1,)),
        ("alert.end", 10, 0.0, 1.5, 0.9, (1,)),
        ("alert.start", 22, 3.5, None, 0.9, (1,)),
    ]
    # Without the cooldown the second alert comes as soon as min_duration allows.
    eager = StreamScoring("cam1", SHARP.model_copy(update={"cooldown_s": 0.0}))
    first_seq_of_second = [e for e in events(run(eager, trace)) if e[0] == "alert.start"][1][1]
    assert first_seq_of_second == 18
    late = StreamScoring("cam1", SHARP.model_copy(update={"cooldown_s": 4.0}))
    assert [e[1] for e in events(run(late, trace)) if e[0] == "alert.start"] == [4, 26]


def test_updates_when_top_rises_or_a_track_joins_rate_limited() -> None:
    scorer = StreamScoring("cam1", SHARP, update_interval_s=1.0, update_min_rise=0.01)
    rising = [[(1, min(0.99, 0.85 + 0.01 * i))] for i in range(12)]
    second_face = [[(1, 0.9), (7, 0.97)] for _ in range(4)]
    results = run(scorer, one_track((4, 0.85)) + rising + second_face + one_track((5, 0.1)))
    got = events(results)
    assert [e[0] for e in got] == [
        "alert.start", "alert.update", "alert.update", "alert.update", "alert.end",
    ]
    start, up1, up2, up3, end = got
    assert start[1] == 4
    # At most one update per second (4 frames) though the top score rises every frame.
    assert [up1[1], up2[1], up3[1]] == [8, 12, 16]
    assert up1[4] == pytest.approx(0.89) and up2[4] == pytest.approx(0.93)
    assert up3[5] == (1, 7) and up3[4] == pytest.approx(0.97)
    assert end[0] == "alert.end" and end[5] == (1, 7)
    # A flat top score and unchanged tracks give no update at all.
    flat = StreamScoring("cam1", SHARP)
    assert [e[0] for e in events(run(flat, one_track((20, 0.9))))] == ["alert.start"]


def test_rolling_mean_over_the_window_and_p_stream_is_the_max_track() -> None:
    th = SHARP.model_copy(update={"window_s": 1.0})
    scorer = StreamScoring("cam1", th)
    results = run(scorer, [[(1, 0.2), (2, 0.5)], [(1, 0.4), (2, 0.5)], [(1, 0.9)], [(1, 0.9)],
                           [(1, 0.9)], [(1, 0.1)]])
    assert [f.p_rolling for f in results[1].faces] == pytest.approx([0.3, 0.5])
    assert results[1].p_stream == pytest.approx(0.5)
    # Track 2 unseen since seq 1 but still inside its window: it still counts for p_stream.
    assert results[2].faces[0].p_rolling == pytest.approx(0.5)
    assert results[2].p_stream == pytest.approx(0.5)
    assert results[3].p_stream == pytest.approx((0.2 + 0.4 + 0.9 + 0.9) / 4)
    # Window of 1 s at 4 fps: four samples, the oldest falls out.
    assert results[4].p_stream == pytest.approx((0.4 + 0.9 * 3) / 4)
    assert results[5].p_stream == pytest.approx((0.9 * 3 + 0.1) / 4)

    median = StreamScoring("cam1", th, aggregate="median")
    out = run(median, [[(1, 0.1)], [(1, 0.9)], [(1, 0.95)], [(1, 0.2)]])
    assert out[-1].p_stream == pytest.approx((0.9 + 0.2) / 2)
    assert out[2].p_stream == pytest.approx(0.9)


def test_a_face_that_leaves_ends_the_alert_after_window_and_hold() -> None:
    th = SHARP.model_copy(update={"window_s": 0.5})
    scorer = StreamScoring("cam1", th)
    results = run(scorer, one_track((8, 0.9)) + [[] for _ in range(10)])
    assert results[8].p_stream == pytest.approx(0.9)  # seen at t=1.75, window 0.5 s
    assert results[9].p_stream is None
    assert events(results) == [
        ("alert.start", 4, 0.0, None, 0.9, (1,)),
        ("alert.end", 13, 0.0, 2.25, 0.9, (1,)),
    ]
    assert results[-1].events == () and results[-1].state is AlertState.CLEAR


def test_evidence_points_at_the_visible_peak() -> None:
    scorer = StreamScoring("cam1", SHARP)
    trace = [[(1, 0.85)]] * 5 + [[(1, 0.84), (2, 0.93)], [(1, 0.95)], [(1, 0.9)], []]
    results = run(scorer, trace)
    assert results[4].evidence is not None
    assert (results[4].evidence.track, results[4].evidence.seq) == (1, 4)
    assert results[5].evidence is not None
    assert (results[5].evidence.track, results[5].evidence.seq) == (2, 5)
    assert results[5].evidence.event_id == results[4].events[0].event_id
    assert (results[6].evidence.track, results[6].evidence.seq) == (1, 6)  # type: ignore[union-attr]
    assert results[7].evidence is None and results[8].evidence is None
    assert results[4].events[0].peak is not None and results[4].events[0].peak.seq == 4
    assert all(r.evidence is None for r in results[:4])


def test_threshold_change_applies_at_the_next_frame_with_its_version() -> None:
    scorer = StreamScoring("cam1", SHARP, config_version=1)
    results = run(scorer, one_track((8, 0.7)))
    assert events(results) == []
    scorer.set_thresholds(SHARP.model_copy(update={"enter": 0.65}), 2)
    more = run(scorer, one_track((8, 0.7)), first_seq=8)
    assert events(more) == [("alert.start", 12, 2.0, None, 0.7, (1,))]
    assert more[4].events[0].config_version == 2
    assert more[4].events[0].thresholds.enter == 0.65
    assert all(r.config_version == 2 for r in more)


def test_deterministic_and_clock_steps_back_count_as_no_time() -> None:
    trace = one_track((3, 0.2), (9, 0.9), (9, 0.1))
    assert events(run(StreamScoring("c", SHARP), trace)) == events(
        run(StreamScoring("c", SHARP), trace)
    )
    scorer = StreamScoring("cam1", SHARP)
    for seq, now in enumerate([10.0, 10.5, 5.0, 10.9, 11.0]):
        result = scorer.update(seq=seq, pts=0.0, captured_at=0.0, now=now, faces=faces((1, 0.9)))
    assert result.now == 11.0
    assert [e.type for e in result.events] == ["alert.start"]


def test_from_settings_uses_the_configured_policy() -> None:
    settings = ScoringSettings(aggregate="median", update_interval_s=3.0, update_min_rise=0.05)
    scorer = StreamScoring.from_settings("cam9", settings)
    assert scorer.thresholds == settings.thresholds
    assert (scorer.aggregate, scorer.update_interval_s, scorer.update_min_rise) == (
        "median", 3.0, 0.05,
    )


@pytest.mark.parametrize("bad", [1.2, -0.1, math.nan])
def test_bad_scores_are_refused_with_the_track_named(bad: float) -> None:
    scorer = StreamScoring("cam1", SHARP)
    with pytest.raises(ScoringError, match="track 7 has p_fake"):
        scorer.update(seq=0, pts=0, captured_at=0, now=0, faces=faces((7, bad)))
    with pytest.raises(ScoringError, match="appears twice"):
        scorer.update(seq=0, pts=0, captured_at=0, now=0, faces=faces((7, 0.5), (7, 0.6)))
    # The scorer is unharmed and goes on.
    assert scorer.update(seq=1, pts=0, captured_at=0, now=0, faces=faces((7, 0.5))).p_stream == 0.5


def test_finish_ends_an_open_alert_and_forgets_the_tracks() -> None:
    scorer = StreamScoring("cam1", SHARP)
    results = run(scorer, one_track((6, 0.9), (2, 0.3)))
    assert results[-1].state is AlertState.ALERT
    (end,) = scorer.finish(seq=8, pts=2.0, captured_at=0.0, now=2.0)
    assert (end.type, end.reason, end.end, end.event_id) == (
        "alert.end", "stream_ended", 1.5, results[4].alert_id,
    )
    assert scorer.state is AlertState.CLEAR
    assert scorer.finish(seq=8, pts=2.0, captured_at=0.0, now=2.0) == ()
    again = run(scorer, one_track((1, 0.9)), first_seq=9)
    assert again[0].p_stream == 0.9 and again[0].events == ()
    assert events(results)[0][0] == "alert.start"
    assert results[4].events[0].reason is None
