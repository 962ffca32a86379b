"""From calibrated per-crop p_fake to a per-stream verdict with hysteresis, and alert events.

Pure and deterministic: no I/O and no clock of its own. The caller passes ``now`` with every
frame and every duration (rolling window, min_duration, hold, cooldown, update rate limit) is
measured on that timeline, so a recorded trace always gives the same events.

- Per face track, ``p_rolling`` is the mean (or median) of the track's p_fake over the last
  ``window_s`` seconds. A track stays live while it has a sample in its window, so a face that
  the detector misses for a frame or two keeps its score.
- Per stream, ``p_stream`` is the highest ``p_rolling`` of the live tracks (``None`` with none).
- The alert rule (``thresholds.rule``) decides on a statistic with an enter and an exit level:
  ``hysteresis`` on ``p_stream`` against ``enter``/``exit``; ``cusum`` on the highest live track's
  CUSUM of per-frame log-likelihood ratios, ``S_t = max(0, S_{t-1} + logit(p_t) -
  logit(cusum_prior))`` (capped at ``2 * cusum_h`` so that clearing after a long alert stays
  prompt), against ``cusum_h``/``cusum_exit``. A track's S starts at 0 and is forgotten with the
  track, so a new face starts afresh. Clear -> alert once the statistic has been at or above its
  enter level for ``min_duration_s``, and not before ``cooldown_s`` has passed since the last
  alert ended; alert -> clear once it has been below its exit level (or no face) for ``hold_s``.
- Events: ``alert.start``, ``alert.update`` (the top score rose by ``update_min_rise`` or a new
  track joined, at most one per ``update_interval_s``) and ``alert.end``; all three share the
  alert's ``event_id`` and carry the thresholds and ``config_version`` that decided them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from stream.config import ScoringSettings, Thresholds

Aggregate = Literal["mean", "median"]
EventType = Literal["alert.start", "alert.update", "alert.end"]
Box = tuple[float, float, float, float]


class ScoringError(ValueError):
    """Input a scorer cannot use (a bad p_fake, a track twice in one frame)."""


class AlertState(StrEnum):
    CLEAR = "clear"
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class FaceScore:
    """One face of one analysed frame, with its calibrated p_fake."""

    track: int
    box: Box
    det_score: float
    p_fake: float


@dataclass(frozen=True, slots=True)
class FaceResult:
    track: int
    box: Box
    det_score: float
    p_fake: float
    p_rolling: float


@dataclass(frozen=True, slots=True)
class Peak:
    """The crop at an alert's peak: the frame and track whose JPEG is the alert's evidence."""

    event_id: str
    track: int
    seq: int
    pts: float
    box: Box
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "seq": self.seq, "pts": self.pts, "score": self.score}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    type: EventType
    event_id: str
    stream: str
    seq: int
    """The frame that decided the event."""
    pts: float
    captured_at: float
    at: float
    """When it was decided, on the scorer's timeline."""
    start: float
    """When p_stream first reached ``enter`` for this alert."""
    end: float | None
    """When p_stream fell below ``exit`` for good (``alert.end`` only)."""
    score: float | None
    """p_stream at the deciding frame."""
    top_score: float
    tracks: tuple[int, ...]
    """Every track that reached ``enter`` during the alert so far."""
    peak: Peak | None
    thresholds: Thresholds
    config_version: int
    reason: str | None = None
    """``alert.end`` only: ``cleared`` (below exit for hold_s) or ``stream_ended``."""
    statistic: float | None = None
    """What ``thresholds.rule`` decided on at that frame: p_stream or the CUSUM S_t."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "event_id": self.event_id,
            "stream": self.stream,
            "seq": self.seq,
            "pts": self.pts,
            "captured_at": self.captured_at,
            "at": self.at,
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "top_score": self.top_score,
            "tracks": list(self.tracks),
            "peak": self.peak.to_dict() if self.peak else None,
            "thresholds": self.thresholds.model_dump(),
            "config_version": self.config_version,
            "reason": self.reason,
            "rule": self.thresholds.rule,
            "statistic": self.statistic,
        }


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """What one analysed frame produced: per-face and per-stream scores, state, events."""

    stream: str
    seq: int
    pts: float
    captured_at: float
    now: float
    faces: tuple[FaceResult, ...]
    p_stream: float | None
    state: AlertState
    alert_id: str | None
    """The open alert's event_id, if any."""
    config_version: int
    events: tuple[AlertEvent, ...]
    evidence: Peak | None
    """Set when this frame holds a new peak of the open alert: encode that face's crop and
    hand it to the publisher under ``evidence.event_id``."""


LOGIT_CLAMP = 1e-6
"""p_fake is clamped to [LOGIT_CLAMP, 1 - LOGIT_CLAMP] before its logit (a 0 or 1 is finite)."""
CUSUM_CAP = 2.0
"""S_t never exceeds CUSUM_CAP * cusum_h."""


def logit(p: float) -> float:
    p = min(max(p, LOGIT_CLAMP), 1.0 - LOGIT_CLAMP)
    return math.log(p / (1.0 - p))


def cusum_step(previous: float, p_fake: float, thresholds: Thresholds) -> float:
    """One frame of the CUSUM: the log-likelihood ratio of ``p_fake`` against the prior."""
    step = logit(p_fake) - logit(thresholds.cusum_prior)
    return min(max(0.0, previous + step), CUSUM_CAP * thresholds.cusum_h)


class _TrackWindow:
    """A track's (time, p_fake) samples inside the rolling window, and its CUSUM."""

    __slots__ = ("cusum", "samples")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.cusum = 0.0

    def trim(self, now: float, window_s: float) -> None:
        samples = self.samples
        while samples and now - samples[0][0] >= window_s:
            samples.popleft()

    def value(self, aggregate: Aggregate) -> float:
        values = [p for _, p in self.samples]
        if aggregate == "median":
            return float(statistics.median(values))
        return math.fsum(values) / len(values)


@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    pts: float
    captured_at: float
    now: float
    p_stream: float | None
    statistic: float | None = None


@dataclass
class _Alert:
    event_id: str
    start: float
    top_score: float
    tracks: set[int]
    reported_top: float
    reported_tracks: frozenset[int]
    last_event_at: float
    peak: Peak | None = None
    below_since: float | None = None


@dataclass
class StreamScoring:
    """The scorer of one stream; call ``update`` once per analysed frame, in order."""

    stream: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    config_version: int = 0
    aggregate: Aggregate = "mean"
    update_interval_s: float = 1.0
    update_min_rise: float = 0.01
    _tracks: dict[int, _TrackWindow] = field(default_factory=dict, init=False, repr=False)
    _now: float = field(default=-math.inf, init=False, repr=False)
    _above_since: float | None = field(default=None, init=False, repr=False)
    _cooldown_until: float = field(default=-math.inf, init=False, repr=False)
    _alert: _Alert | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        stream: str,
        settings: ScoringSettings,
        thresholds: Thresholds | None = None,
        config_version: int = 0,
    ) -> StreamScoring:
        """A scorer with the configured aggregate and update policy; ``thresholds`` override
        the configured defaults (e.g. the live ones of ``stream.thresholds``)."""
        return cls(
            stream,
            thresholds or settings.thresholds,
            config_version=config_version,
            aggregate=settings.aggregate,
            update_interval_s=settings.update_interval_s,
            update_min_rise=settings.update_min_rise,
        )

    def set_thresholds(self, thresholds: Thresholds, config_version: int) -> None:
        """Apply thresholds from the next frame on; events then carry ``config_version``."""
        self.thresholds = thresholds
        self.config_version = config_version

    @property
    def state(self) -> AlertState:
        return AlertState.ALERT if self._alert else AlertState.CLEAR

    @property
    def alert_id(self) -> str | None:
        return self._alert.event_id if self._alert else None

    def update(
        self,
        *,
        seq: int,
        pts: float,
        captured_at: float,
        now: float,
        faces: Sequence[FaceScore],
    ) -> ScoreResult:
        """Score one analysed frame. ``now`` going backwards (a clock step) counts as no time."""
        self._check(faces)
        now = max(now, self._now)
        self._now = now
        th = self.thresholds

        for face in faces:
            window = self._tracks.setdefault(face.track, _TrackWindow())
            window.samples.append((now, face.p_fake))
            window.cusum = cusum_step(window.cusum, face.p_fake, th)
        rolling: dict[int, float] = {}
        for track, window in list(self._tracks.items()):
            window.trim(now, th.window_s)
            if window.samples:
                rolling[track] = window.value(self.aggregate)
            else:
                del self._tracks[track]
        p_stream = max(rolling.values()) if rolling else None
        face_results = tuple(
            FaceResult(f.track, f.box, f.det_score, f.p_fake, rolling[f.track]) for f in faces
        )
        per_track = rolling if th.rule == "hysteresis" else {
            t: self._tracks[t].cusum for t in rolling}
        value = max(per_track.values()) if per_track else None
        enter, exit_ = (th.enter, th.exit) if th.rule == "hysteresis" else (th.cusum_h,
                                                                             th.cusum_exit)

        frame = _Frame(seq, pts, captured_at, now, p_stream, value)
        events: list[AlertEvent] = []
        evidence: Peak | None = None
        if self._alert is None:
            if value is not None and value >= enter:
                if self._above_since is None:
                    self._above_since = now
                if now - self._above_since >= th.min_duration_s and now >= self._cooldown_until:
                    alert = self._open(frame, self._above_since, per_track, enter)
                    evidence = self._new_peak(alert, frame, face_results)
                    events.append(self._event("alert.start", alert, frame))
            else:
                self._above_since = None
        else:
            alert = self._alert
            alert.tracks.update(t for t, v in per_track.items() if v >= enter)
            if p_stream is not None:
                alert.top_score = max(alert.top_score, p_stream)
            evidence = self._new_peak(alert, frame, face_results)
            if value is None or value < exit_:
                if alert.below_since is None:
                    alert.below_since = now
            else:
                alert.below_since = None
            if alert.below_since is not None and now - alert.below_since >= th.hold_s:
                events.append(self._event("alert.end", alert, frame, end=alert.below_since,
                                          reason="cleared"))
                self._alert = None
                self._above_since = None
                self._cooldown_until = now + th.cooldown_s
            elif self._update_due(alert, now):
                events.append(self._event("alert.update", alert, frame))
                alert.reported_top = alert.top_score
                alert.reported_tracks = frozenset(alert.tracks)
                alert.last_event_at = now

        return ScoreResult(
            stream=self.stream,
            seq=seq,
            pts=pts,
            captured_at=captured_at,
            now=now,
            faces=face_results,
            p_stream=p_stream,
            state=self.state,
            alert_id=self.alert_id,
            config_version=self.config_version,
            events=tuple(events),
            evidence=evidence,
        )

    def finish(
        self, *, seq: int, pts: float, captured_at: float, now: float
    ) -> tuple[AlertEvent, ...]:
        """The stream stops: end an open alert (``reason="stream_ended"``) and forget all tracks,
        so that no subscriber is left with an alert that never ends."""
        now = max(now, self._now)
        self._tracks.clear()
        self._above_since = None
        alert, self._alert = self._alert, None
        if alert is None:
            return ()
        frame = _Frame(seq, pts, captured_at, now, None)
        end = alert.below_since if alert.below_since is not None else now
        return (self._event("alert.end", alert, frame, end=end, reason="stream_ended"),)

    def _check(self, faces: Sequence[FaceScore]) -> None:
        seen: set[int] = set()
        for face in faces:
            if not 0.0 <= face.p_fake <= 1.0:  # also refuses NaN
                raise ScoringError(
                    f"stream {self.stream!r}: track {face.track} has p_fake {face.p_fake!r}, "
                    "expected a calibrated probability in [0, 1]"
                )
            if face.track in seen:
                raise ScoringError(
                    f"stream {self.stream!r}: track {face.track} appears twice in one frame"
                )
            seen.add(face.track)

    def _open(
        self, frame: _Frame, start: float, per_track: dict[int, float], enter: float
    ) -> _Alert:
        assert frame.p_stream is not None
        tracks = {t for t, v in per_track.items() if v >= enter}
        self._alert = _Alert(
            event_id=f"{self.stream}-{round(frame.now * 1000)}-{frame.seq}",
            start=start,
            top_score=frame.p_stream,
            tracks=tracks,
            reported_top=frame.p_stream,
            reported_tracks=frozenset(tracks),
            last_event_at=frame.now,
        )
        return self._alert

    def _new_peak(
        self, alert: _Alert, frame: _Frame, faces: tuple[FaceResult, ...]
    ) -> Peak | None:
        """The best face visible in this frame, if it beats the alert's peak so far."""
        if not faces:
            return None
        best = max(faces, key=lambda f: f.p_rolling)
        if alert.peak is not None and best.p_rolling <= alert.peak.score:
            return None
        alert.peak = Peak(alert.event_id, best.track, frame.seq, frame.pts, best.box,
                          best.p_rolling)
        return alert.peak

    def _update_due(self, alert: _Alert, now: float) -> bool:
        if now - alert.last_event_at < self.update_interval_s:
            return False
        rose = alert.top_score >= alert.reported_top + self.update_min_rise
        return rose or not alert.tracks <= alert.reported_tracks

    def _event(
        self,
        kind: EventType,
        alert: _Alert,
        frame: _Frame,
        end: float | None = None,
        reason: str | None = None,
    ) -> AlertEvent:
        return AlertEvent(
            type=kind,
            event_id=alert.event_id,
            stream=self.stream,
            seq=frame.seq,
            pts=frame.pts,
            captured_at=frame.captured_at,
            at=frame.now,
            start=alert.start,
            end=end,
            score=frame.p_stream,
            top_score=alert.top_score,
            tracks=tuple(sorted(alert.tracks)),
            peak=alert.peak,
            thresholds=self.thresholds,
            config_version=self.config_version,
            reason=reason,
            statistic=frame.statistic,
        )
