"""A stream's recent scores in memory (stream/history.py): bounded in time and in size."""

from __future__ import annotations

from stream.history import HistoryPoint, ScoreHistory


def test_points_older_than_the_window_go() -> None:
    history = ScoreHistory(window_s=10.0, spacing_s=0.0)
    for second in range(30):
        history.add(1000.0 + second, 0.5, "clear")
    points = history.points(1029.0)
    assert [p.at for p in points] == [1000.0 + s for s in range(19, 30)]
    assert history.points(2000.0) == []


def test_no_face_stays_none_and_changes_are_kept_between_spaced_points() -> None:
    history = ScoreHistory(window_s=120.0, spacing_s=1.0)
    history.add(0.0, 0.7, "clear")
    history.add(0.1, 0.8, "clear")  # within the spacing, nothing changed: dropped
    history.add(0.2, 0.9, "alert")  # the state changed: kept
    history.add(0.3, None, "alert")  # the face went: kept
    history.add(0.4, None, "alert")
    history.add(1.5, None, "clear")
    assert history.points(2.0) == [
        HistoryPoint(0.0, 0.7, "clear"),
        HistoryPoint(0.2, 0.9, "alert"),
        HistoryPoint(0.3, None, "alert"),
        HistoryPoint(1.5, None, "clear"),
    ]


def test_the_ring_is_bounded_in_size_too() -> None:
    history = ScoreHistory(window_s=1e9, spacing_s=0.0, max_points=5)
    for i in range(100):
        history.add(float(i), 0.1, "alert" if i % 2 else "clear")
    assert [p.at for p in history.points(100.0)] == [95.0, 96.0, 97.0, 98.0, 99.0]
