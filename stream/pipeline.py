"""The analysis loop's scheduling: frames from every stream, batched, through the analysis path
(stream/analysis.py), then each stream's scoring and the publisher.

Two worker threads overlap the two halves of the analysis (docs/architecture.md, data flow): the
*detect* thread collects the frames that are ready across streams (at most ``max_frames``), runs
the face stage on them as one batch and hands the result on; the *score* thread scores the
policy's crops (``CropPolicy.live``) in batches of up to the scorer's ``max_batch``, calibrated,
then updates each stream's rolling scores and alert rule, and publishes.
While the scorer works on batch k the detector already runs on batch k+1. The hand-over queue
holds one batch, so when analysis is slower than the streams, frames are superseded in the
sources' mailboxes (counted there) rather than piling up as latency.

Batches form by themselves: whatever arrived while the detector was busy makes the next batch,
so under load batches grow and when idle a frame goes through alone, at once. Waiting for more
frames (up to ``max_wait_ms`` after the first) happens only while the hand-over is full, i.e.
while the scorer is behind and a batch handed over now could not be scored sooner anyway; the
wait ends early once every stream that is delivering has a frame ready. Measured on the CPU
(docs/benchmarks.md, Pipeline), always waiting doubled the median latency at light load and
tipped the loop into full, slow batches at a lower load.

Fairness: a batch takes at most one frame per stream, in rotating order, and the live crop
policy sends at most ``max_crops_per_stream`` faces per frame to the scorer, so neither a busy
stream nor a crowded picture can starve the others. A dead or slow stream simply has no frame
ready; a batch waits for it at most ``max_wait_ms``, and not at all once it has delivered
nothing for ``DELIVERING_WITHIN_S``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2

from engines.stream_calibrations import StreamCalibration
from stream.analysis import Analyser, FrameAnalysis
from stream.config import PipelineSettings
from stream.faces import FrameFaces
from stream.heatmaps import HeatmapWorker
from stream.history import ScoreHistory
from stream.metrics import ServiceMetrics
from stream.publish.publisher import Publisher
from stream.scoring import ScoreResult, StreamScoring
from stream.sources.base import Frame, FrameSource
from stream.sources.rates import RateMeter
from stream.thresholds import ThresholdListener

log = logging.getLogger(__name__)

EVIDENCE_JPEG_QUALITY = 90
DELIVERING_WITHIN_S = 1.0
"""A stream with no frame taken for this long no longer counts when a batch waits for more."""
_STOP = object()


@dataclass
class StreamSlot:
    """One stream inside the pipeline: its source, its scorer and what it last produced."""

    source: FrameSource
    scoring: StreamScoring
    calibration: StreamCalibration | None = None
    """The stream's own calibration (``StreamSpec.calibration``), else the bundle's applies."""
    analysed: int = 0
    faces: int = 0
    frame_errors: int = 0
    last: ScoreResult | None = None
    last_error: str | None = None
    closed: bool = False
    last_taken_at: float | None = None
    """When analysis last took a frame of it (monotonic clock)."""
    rate: RateMeter = field(default_factory=RateMeter)
    history: ScoreHistory = field(default_factory=ScoreHistory)
    """Its last two minutes of scores, for views that open late (the dashboard)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def analysed_fps(self) -> float:
        with self.lock:
            return self.rate.rate()


@dataclass
class _Batch:
    results: list[FrameFaces]
    collected_at: float


class Pipeline:
    """Runs the analysis of every added stream on two threads; see the module docstring."""

    def __init__(
        self,
        analyser: Analyser,
        publisher: Publisher,
        settings: PipelineSettings,
        *,
        thresholds: ThresholdListener | None = None,
        metrics: ServiceMetrics | None = None,
        heatmaps: HeatmapWorker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``heatmaps``: where alerts' evidence crops go for their heatmap (none: no heatmaps)."""
        self.analyser = analyser
        self.publisher = publisher
        self.settings = settings
        self.thresholds = thresholds
        self.metrics = metrics or ServiceMetrics()
        self.heatmaps = heatmaps
        self._clock = clock
        self._slots: dict[str, StreamSlot] = {}
        self._slots_lock = threading.Lock()
        self._ready = threading.Condition()
        self._pending = 0
        self._rotation = 0
        self._handoff: queue.Queue[_Batch | object] = queue.Queue(maxsize=1)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.batches = 0
        self.batch_totals = (0, 0)
        """(batches, frames in them), replaced as one value so that a reader on another thread
        never sees one counted without the other."""
        self.engine_errors = 0

    # -- streams ------------------------------------------------------------------------------

    def notify(self) -> None:
        """A source has a new frame (called on its reader thread)."""
        with self._ready:
            self._pending += 1
            self._ready.notify()

    def add(
        self, source: FrameSource, scoring: StreamScoring,
        calibration: StreamCalibration | None = None,
    ) -> StreamSlot:
        with self._slots_lock:
            if source.stream_id in self._slots:
                raise KeyError(f"stream {source.stream_id!r} is already analysed")
            slot = StreamSlot(source, scoring, calibration)
            self._slots[source.stream_id] = slot
        self.notify()
        return slot

    def remove(self, stream_id: str) -> StreamSlot | None:
        """Stop analysing a stream; its frames still in flight are dropped, and nothing more
        of it is published once this returns."""
        with self._slots_lock:
            slot = self._slots.pop(stream_id, None)
        if slot is not None:
            with slot.lock:  # waits for a frame of it being finished on the score thread
                slot.closed = True
            self.analyser.forget(stream_id)
        return slot

    def slot(self, stream_id: str) -> StreamSlot | None:
        with self._slots_lock:
            return self._slots.get(stream_id)

    def slots(self) -> list[StreamSlot]:
        with self._slots_lock:
            return list(self._slots.values())

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._detect_loop, name="dfstream-detect", daemon=True),
            threading.Thread(target=self._score_loop, name="dfstream-score", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand and stop both threads."""
        self._stopping.set()
        with self._ready:
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("pipeline thread %s did not stop within %.0f s", thread.name, timeout_s)
        self._threads = []

    # -- detect thread ------------------------------------------------------------------------

    def _collect(self) -> list[Frame]:
        """Frames ready across streams: wait for the first; then, only while the scorer is
        behind (the hand-over is full), up to ``max_wait_ms`` more, but no longer once every
        stream that is delivering has a frame ready (nothing more can come)."""
        settings = self.settings
        with self._ready:
            while self._pending == 0 and not self._stopping.is_set():
                self._ready.wait(0.25)
            if self._stopping.is_set():
                return []
        target = min(settings.max_frames, max(1, self._delivering()))
        with self._ready:
            deadline = time.monotonic() + settings.max_wait_ms / 1000.0
            while (
                self._pending < target and self._handoff.full() and not self._stopping.is_set()
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            self._pending = 0
        slots = self.slots()
        if not slots:
            return []
        start = self._rotation % len(slots)
        self._rotation += 1
        frames: list[Frame] = []
        now = time.monotonic()
        for slot in slots[start:] + slots[:start]:
            frame = slot.source.take()
            if frame is None:
                continue
            slot.last_taken_at = now
            frames.append(frame)
            if len(frames) >= settings.max_frames:
                # Others keep their frame in the mailbox for the next batch.
                with self._ready:
                    self._pending += 1
                break
        return frames

    def _delivering(self) -> int:
        """Streams that had a frame taken within ``DELIVERING_WITHIN_S``: a dead or stalled one
        drops out, so it cannot hold batches back."""
        since = time.monotonic() - DELIVERING_WITHIN_S
        return sum(
            1 for slot in self.slots()
            if slot.last_taken_at is not None and slot.last_taken_at >= since
        )

    def _detect_loop(self) -> None:
        metrics = self.metrics
        while not self._stopping.is_set():
            frames = self._collect()
            if not frames:
                continue
            collected_at = self._clock()
            for frame in frames:
                metrics.stage_seconds.labels("queue").observe(
                    max(0.0, collected_at - frame.captured_at)
                )
                if frame.decode_s is not None:
                    metrics.stage_seconds.labels("decode").observe(frame.decode_s)
            started = time.perf_counter()
            try:
                results = self.analyser.detect(frames)
            except Exception:  # an engine failure: count it, keep serving
                self.engine_errors += 1
                log.exception("face detection failed on a batch of %d frames", len(frames))
                continue
            metrics.stage_seconds.labels("detect").observe(time.perf_counter() - started)
            self._forget_removed(frames)
            metrics.batch_size.labels("detect").observe(len(frames))
            self._put(_Batch(results, collected_at))
        self._put(_STOP)

    def _forget_removed(self, frames: list[Frame]) -> None:
        """A stream removed while its frame was being detected got its tracks back from that
        frame: drop them again (remove() itself ran too early to)."""
        with self._slots_lock:
            gone = {f.stream_id for f in frames} - self._slots.keys()
        for stream_id in gone:
            self.analyser.forget(stream_id)

    def _put(self, item: _Batch | object) -> None:
        while True:
            try:
                self._handoff.put(item, timeout=0.25)
                self.metrics.queue_depth.labels("score").set(self._handoff.qsize())
                return
            except queue.Full:
                if self._stopping.is_set() and item is not _STOP:
                    return

    # -- score thread -------------------------------------------------------------------------

    def _score_loop(self) -> None:
        while True:
            item = self._handoff.get()
            with self._ready:  # the hand-over has room: a batch waiting for more can go now
                self._ready.notify_all()
            if item is _STOP:
                return
            assert isinstance(item, _Batch)
            try:
                self._score_batch(item)
            except Exception:
                self.engine_errors += 1
                log.exception("scoring failed on a batch of %d frames", len(item.results))

    def _score_batch(self, batch: _Batch) -> None:
        metrics = self.metrics
        started = time.perf_counter()
        analysed = self.analyser.score(batch.results)
        crops = sum(len(a.scored) for a in analysed)
        if crops:
            metrics.stage_seconds.labels("score").observe(time.perf_counter() - started)
            metrics.batch_size.labels("score").observe(crops)
        started = time.perf_counter()
        for analysis in analysed:
            try:
                self._finish_frame(analysis)
            except Exception:  # one stream's failure must not cost the others their frames
                self.engine_errors += 1
                log.exception(
                    "stream %s: finishing frame %d failed",
                    analysis.frame.stream_id, analysis.frame.seq,
                )
        metrics.stage_seconds.labels("publish").observe(time.perf_counter() - started)
        self.batches += 1
        self.batch_totals = (self.batch_totals[0] + 1, self.batch_totals[1] + len(analysed))

    def _finish_frame(self, result: FrameAnalysis) -> None:
        frame = result.frame
        slot = self.slot(frame.stream_id)
        if slot is None:  # removed while in flight
            return
        if result.error is not None:
            slot.frame_errors += 1
            slot.last_error = result.error
            log.warning("stream %s frame %d: %s", frame.stream_id, frame.seq, result.error)
            return
        faces = result.face_scores(slot.calibration.calibrator if slot.calibration else None)
        with slot.lock:
            # Under the slot's lock, so that once remove() returns no frame of the stream is
            # scored or published any more: its final events and stream.offline come last.
            if slot.closed:
                return
            if self.thresholds is not None:
                self.thresholds.apply(slot.scoring)
            now = self._clock()
            score = slot.scoring.update(
                seq=frame.seq, pts=frame.pts, captured_at=frame.captured_at, now=now, faces=faces
            )
            if score.evidence is not None:
                # Before the events: a listener that reacts to alert.start finds its evidence.
                self._put_evidence(score, result)
            if slot.analysed == 0:  # frames arrive: the stream is online (once per epoch)
                self.publisher.stream_online(frame.stream_id)
            self.publisher.publish(score)
            slot.analysed += 1
            slot.faces += len(faces)
            slot.last = score
            slot.history.add(score.now, score.p_stream, score.state.value)
            slot.rate.mark()
            # Here too: the stream's series are dropped at its removal and must not come back.
            self.metrics.frames_analysed.labels(frame.stream_id).inc()
            self.metrics.faces.labels(frame.stream_id).inc(len(faces))
        for event in score.events:
            self.metrics.events.labels(event.type).inc()
        self.metrics.end_to_end_seconds.observe(max(0.0, self._clock() - frame.captured_at))

    def _put_evidence(self, score: ScoreResult, result: FrameAnalysis) -> None:
        peak = score.evidence
        assert peak is not None
        crop = next((f.crop for f in result.faces if f.track_id == peak.track), None)
        if crop is None:
            return
        ok, jpeg = cv2.imencode(
            ".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, EVIDENCE_JPEG_QUALITY]
        )
        if ok:
            self.publisher.put_evidence(peak.event_id, jpeg.tobytes())
        if self.heatmaps is not None:
            self.heatmaps.submit(peak.event_id, crop)
