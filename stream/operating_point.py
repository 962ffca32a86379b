"""Alert parameters for a stated false-alert rate, measured by replaying footage through the
live scoring code.

Every video of a split is decoded at the service's analysis fps and run through the live
analysis path (``Analyser`` with the live crop policy, so tracks confirm as they do live) into
a trace of per-frame face scores. Each candidate parameter (``enter`` for hysteresis,
``cusum_h`` for CUSUM; the exit level keeps the configured ratio) is then replayed through
``StreamScoring``, one scorer per video as one stream each, and its alert starts counted: on
the real videos they are false alerts per stream-hour, on the fakes the first one gives the
detection delay. The most sensitive candidate whose measured rate is at or below the target is
proposed (found by bisection: stricter parameters give fewer alerts). The rate is measured,
not taken from a formula: bounds such as Lorden's (at most one false alarm per ``e^h`` frames
for CUSUM) assume independent frames and calibrated likelihood ratios, and consecutive frames
of a camera are correlated, so the true rate can lie on either side of the bound; it is
reported beside the measurement for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.analysis import Analyser
from stream.config import Thresholds
from stream.data.manifest import VideoEntry
from stream.scoring import FaceScore, StreamScoring
from stream.sources.reader import read_frames

HYSTERESIS_ENTERS = tuple(round(0.30 + 0.01 * i, 2) for i in range(70))
CUSUM_HS = tuple(float(h) for h in np.round(np.geomspace(0.5, 200.0, 80), 3))
BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class Trace:
    """One video's analysed frames: (time in the video, the faces' scores)."""

    video: str
    fake: bool
    frames: list[tuple[float, list[FaceScore]]]
    seconds: float


def trace_video(entry: VideoEntry, analyser: Analyser, fps: float) -> Trace:
    """The video at ``fps`` through the live analysis path."""
    frames: list[tuple[float, list[FaceScore]]] = []
    source = read_frames(entry.path, fps=fps, stream_id=f"replay:{entry.id}")
    for analysis in analyser.analyse_all(source):
        if analysis.error is None:
            frames.append((analysis.frame.pts, analysis.face_scores()))
    seconds = (frames[-1][0] - frames[0][0] + 1.0 / fps) if frames else 0.0
    return Trace(entry.id, entry.is_fake, frames, seconds)


def replay(trace: Trace, thresholds: Thresholds) -> list[float]:
    """The times (from the trace's start) at which alerts started."""
    if not trace.frames:
        return []
    scorer = StreamScoring(trace.video, thresholds)
    first = trace.frames[0][0]
    starts = []
    for seq, (pts, faces) in enumerate(trace.frames):
        result = scorer.update(seq=seq, pts=pts, captured_at=pts, now=pts, faces=faces)
        starts += [pts - first for e in result.events if e.type == "alert.start"]
    return starts


def candidates(rule: str, base: Thresholds) -> list[Thresholds]:
    """From the most sensitive to the least."""
    if rule == "hysteresis":
        gap = base.enter - base.exit
        return [base.model_copy(update={"rule": rule, "enter": e, "exit": max(0.0, e - gap)})
                for e in HYSTERESIS_ENTERS]
    ratio = base.cusum_exit / base.cusum_h
    return [base.model_copy(update={"rule": rule, "cusum_h": h, "cusum_exit": h * ratio})
            for h in CUSUM_HS]


def parameters(thresholds: Thresholds) -> dict[str, Any]:
    """What ``dfstream thresholds set --from`` applies for the rule."""
    if thresholds.rule == "hysteresis":
        return {"enter": thresholds.enter, "exit": round(thresholds.exit, 4)}
    return {"cusum_prior": thresholds.cusum_prior, "cusum_h": thresholds.cusum_h,
            "cusum_exit": round(thresholds.cusum_exit, 4)}


def _rate_interval(alerts: np.ndarray, seconds: np.ndarray, seed: int) -> list[float]:
    """95% bootstrap interval of false alerts per hour, resampling real videos."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(alerts), (BOOTSTRAP_ROUNDS, len(alerts)))
    rates = alerts[picks].sum(1) / (seconds[picks].sum(1) / 3600.0)
    low, high = np.percentile(rates, [2.5, 97.5])
    return [float(low), float(high)]


def choose(
    traces: Sequence[Trace], rule: str, base: Thresholds, false_alerts_per_hour: float,
    *, fps: float, seed: int = 0, progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The proposal ``dfstream eval --operating-point --json`` prints."""
    reals = [t for t in traces if not t.fake and t.frames]
    fakes = [t for t in traces if t.fake and t.frames]
    if not reals:
        raise ValueError("no real video with analysed frames to measure false alerts on")
    seconds = np.array([t.seconds for t in reals])
    hours = float(seconds.sum()) / 3600.0
    options = candidates(rule, base)
    measured_at: dict[int, np.ndarray] = {}

    def alerts_at(index: int) -> np.ndarray:
        if index not in measured_at:
            measured_at[index] = np.array([len(replay(t, options[index])) for t in reals], float)
            if progress is not None:
                progress(len(measured_at), math.ceil(math.log2(len(options))) + 1)
        return measured_at[index]

    # Bisection: fewer alerts for a stricter parameter, so the boundary is found in log2(n)
    # replays. Only a candidate whose own replay meets the target is ever proposed.
    low, high = 0, len(options) - 1
    if alerts_at(high).sum() / hours <= false_alerts_per_hour:
        while low < high:
            middle = (low + high) // 2
            if alerts_at(middle).sum() / hours <= false_alerts_per_hour:
                high = middle
            else:
                low = middle + 1
    chosen, alerts = options[high], alerts_at(high)
    measured = float(alerts.sum() / hours)
    delays = [starts[0] for starts in (replay(t, chosen) for t in fakes) if starts]
    result: dict[str, Any] = {
        "rule": rule,
        "parameters": parameters(chosen),
        "target_false_alerts_per_hour": false_alerts_per_hour,
        "met": measured <= false_alerts_per_hour,
        "measured_false_alerts_per_hour": measured,
        "measured_interval_95": _rate_interval(alerts, seconds, seed),
        "false_alerts": int(alerts.sum()),
        "real_videos": len(reals),
        "real_hours": hours,
        "fake_videos": len(fakes),
        "fakes_detected": len(delays),
        "detection_delay_s": float(np.median(delays)) if delays else None,
        "detection_delay_note": "median over the fakes that alerted, from their first "
                                "analysed frame",
        "analysis_fps": fps,
        "thresholds": chosen.model_dump(),
    }
    if rule == "cusum":
        result["lorden_bound_false_alerts_per_hour"] = 3600.0 * fps / math.exp(chosen.cusum_h)
    return result
