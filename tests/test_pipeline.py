"""The pipeline's scheduling: batches across streams, fairness, the live crop cap, a stream
removed while its frames are in flight, a failing frame isolated; the property that a frame
scores the same live as through ``dfstream score``; and an alert's heatmap beside its evidence.

Real RetinaFace weights, a random-weight ``tiny`` CLIP scorer, a real redis-server; sources are
``ListSource`` (always a frame ready, so no assertion depends on timing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from engines.calibrated import CalibratedScorer, CropScores
from engines.calibration import Calibrator
from engines.clip_detector import random_detector
from engines.retinaface.torch_detector import RetinaFaceDetector
from stream.analysis import EVERY_FACE, Analyser, CropPolicy
from stream.config import (
    FaceSettings,
    PipelineSettings,
    RedisSettings,
    ScoringSettings,
    Thresholds,
)
from stream.faces import FaceStage
from stream.heatmaps import HeatmapWorker
from stream.pipeline import Pipeline
from stream.publish.publisher import Publisher
from stream.samples import FacePlacement, compose_frame
from stream.scoring import StreamScoring
from stream.sources.base import Frame
from stream.sources.pyav import PyAVSource
from stream.video_score import score_video
from tests.support.frames import CorruptFrame, ListSource, crowd, tiny_scorer
from tests.support.sources import fast_ingest, wait_for

FACE = compose_frame(640, 360, FacePlacement(200, 40, 0.6))


@pytest.fixture(scope="module")
def scorer() -> CalibratedScorer:
    return tiny_scorer(Calibrator("temperature", (2.0,)), max_batch=8)


def live_analyser(
    detector: RetinaFaceDetector, scorer: CalibratedScorer, settings: PipelineSettings
) -> Analyser:
    stage = FaceStage(detector, FaceSettings(min_face_px=8, max_faces=16))
    return Analyser(stage, scorer, CropPolicy.live(settings))


@contextlib.asynccontextmanager
async def running(
    analyser: Analyser, settings: PipelineSettings, redis_url: str, heatmaps: bool = False
) -> AsyncIterator[Pipeline]:
    """A started pipeline; with ``heatmaps`` it computes them as the service does, with the
    scorer's random ``tiny`` detector (same seed, same weights)."""
    publisher = Publisher.from_settings(RedisSettings(), redis_url)
    await publisher.start()
    assert await publisher.wait_connected(5)
    worker = HeatmapWorker(lambda: random_detector("tiny"), publisher.put_heatmap) \
        if heatmaps else None
    pipeline = Pipeline(analyser, publisher, settings, heatmaps=worker)
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.stop()
        if worker is not None:
            worker.close()
        await publisher.close()


def add(pipeline: Pipeline, source: ListSource | PyAVSource,
        scoring_settings: ScoringSettings | None = None) -> None:
    scoring = StreamScoring.from_settings(source.stream_id, scoring_settings or ScoringSettings())
    pipeline.publisher.stream_online(source.stream_id, epoch=1)
    pipeline.add(source, scoring)  # type: ignore[arg-type]
    source.start()


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    ok = await asyncio.get_running_loop().run_in_executor(None, wait_for, predicate, timeout_s)
    assert ok, "condition not reached in time"


def sources(names: Sequence[str], pictures: Sequence[np.ndarray], pipeline: Pipeline,
            repeat: bool = True) -> list[ListSource]:
    return [ListSource(n, pictures, repeat=repeat, on_frame=pipeline.notify) for n in names]


async def test_a_batch_takes_one_frame_per_stream_in_rotating_order(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    settings = PipelineSettings(max_frames=2, max_wait_ms=0)
    analyser = live_analyser(face_detector, scorer, settings)
    async with running(analyser, settings, redis_url) as pipeline:
        streams = sources(["a", "b", "c"], [FACE], pipeline)
        for source in streams:
            add(pipeline, source)
        await until(lambda: pipeline.batches >= 12)
        for source in streams:
            pipeline.remove(source.stream_id)
    taken = [source.taken for source in streams]
    # Every stream always had a frame ready, two fit a batch: rotation shares them out evenly.
    assert max(taken) - min(taken) <= 2, taken
    assert min(taken) >= 6, taken


async def test_the_live_policy_caps_crops_per_frame_and_skips_unconfirmed_tracks(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    picture = crowd()
    found = len(analyser_faces(face_detector, picture))
    assert found >= 3, f"the crowded picture shows {found} faces"
    settings = PipelineSettings(max_frames=4, max_wait_ms=0, max_crops_per_stream=2)
    analyser = live_analyser(face_detector, scorer, settings)
    async with running(analyser, settings, redis_url) as pipeline:
        (source,) = sources(["crowd"], [picture] * 3, pipeline, repeat=False)
        add(pipeline, source)
        slot = pipeline.slot("crowd")
        assert slot is not None
        await until(lambda: slot.analysed == 3)
        per_frame = [len(slot.last.faces)] if slot.last else []
    # The first frame's tracks are not yet confirmed (track_min_hits 2): nothing scored.
    assert slot.faces == 2 + 2, slot.faces
    assert per_frame == [2]
    assert [f.track for f in slot.last.faces] == [1, 2]  # the two largest


def analyser_faces(detector: RetinaFaceDetector, picture: np.ndarray) -> tuple[object, ...]:
    stage = FaceStage(detector, FaceSettings(min_face_px=8, max_faces=16))
    return stage.process([Frame("probe", 0, 0.0, 0.0, rgb=picture)])[0].faces


async def test_a_removed_stream_publishes_nothing_more_and_its_tracks_are_forgotten(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    settings = PipelineSettings(max_frames=4, max_wait_ms=0)
    analyser = live_analyser(face_detector, scorer, settings)
    async with running(analyser, settings, redis_url) as pipeline:
        gone, stays = sources(["gone", "stays"], [FACE], pipeline)
        add(pipeline, gone)
        add(pipeline, stays)
        await until(lambda: pipeline.batches >= 3)
        slot = pipeline.remove("gone")  # frames of it may be in the hand-over right now
        assert slot is not None
        analysed = slot.analysed
        batches = pipeline.batches
        await until(lambda: pipeline.batches >= batches + 4)
        assert slot.analysed == analysed
        assert "gone" not in analyser.face_stage.trackers
        still = pipeline.slot("stays")
        assert still is not None and still.analysed > 0


async def test_a_failing_frame_costs_its_stream_that_frame_only(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    settings = PipelineSettings(max_frames=4, max_wait_ms=0)
    analyser = live_analyser(face_detector, scorer, settings)
    bad_frames = [CorruptFrame("bad", i, i / 5, 0.0, rgb=FACE) for i in range(3)]
    async with running(analyser, settings, redis_url) as pipeline:
        (good,) = sources(["good"], [FACE] * 4, pipeline, repeat=False)
        bad = ListSource("bad", bad_frames, on_frame=pipeline.notify)
        add(pipeline, bad)
        add(pipeline, good)
        good_slot, bad_slot = pipeline.slot("good"), pipeline.slot("bad")
        assert good_slot is not None and bad_slot is not None
        await until(lambda: good_slot.analysed == 4 and bad_slot.frame_errors == 3)
        assert bad_slot.analysed == 0
        assert bad_slot.last_error is not None and "corrupt picture" in bad_slot.last_error
        assert good_slot.frame_errors == 0 and good_slot.faces >= 3
        assert pipeline.engine_errors == 0


async def test_a_frame_scores_the_same_live_as_through_dfstream_score(
    face_detector: RetinaFaceDetector,
    scorer: CalibratedScorer,
    redis_url: str,
    face_video_360p: Path,
) -> None:
    settings = PipelineSettings(max_frames=4, max_wait_ms=0)
    analyser = live_analyser(face_detector, scorer, settings)
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe("dfstream:scores:file")
    live: dict[float, float] = {}
    async with running(analyser, settings, redis_url) as pipeline:
        source = PyAVSource("file", str(face_video_360p), fast_ingest(), analysis_fps=30,
                            realtime=False, on_frame=pipeline.notify)
        add(pipeline, source)
        slot = pipeline.slot("file")
        assert slot is not None
        # Read as fast as analysis takes frames, losing none; then every taken frame analysed.
        await until(lambda: source.stats().ended)
        await until(lambda: slot.analysed + slot.frame_errors >= source.stats().frames_taken)
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + 2.0
        while loop.time() < quiet_until:  # until two seconds without a message
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            quiet_until = loop.time() + 2.0
            payload = orjson.loads(message["data"])
            if payload["faces"]:
                live[round(payload["pts"], 3)] = payload["faces"][0]["p_fake"]
        source.stop()
    await pubsub.aclose()
    await client.aclose()

    offline = Analyser(FaceStage(face_detector, FaceSettings(min_face_px=8, max_faces=16)),
                       scorer, EVERY_FACE)
    result = score_video(face_video_360p, offline, frames=10_000)
    scored = {round(f.pts, 3): f.p_fake for f in result.frames if f.p_fake is not None}
    common = sorted(set(live) & set(scored))
    assert len(common) >= 0.8 * len(scored), (len(live), len(scored), len(common))
    differences = [abs(live[t] - scored[t]) for t in common]
    assert max(differences) <= 1e-5, max(differences)


ALWAYS = ScoringSettings(thresholds=Thresholds(enter=0.0, exit=0.0, min_duration_s=0.0,
                                               cooldown_s=0.0))
"""Any face alerts (the random scorer gives p in (0, 1))."""
NEVER = ScoringSettings(thresholds=Thresholds(enter=1.0, exit=1.0))


def alert_ids(client: redis.Redis, stream: str) -> set[str]:
    events = [orjson.loads(fields[b"event"]) for _, fields in client.xrange("dfstream:events")]
    return {e["event_id"] for e in events
            if e["stream"] == stream and e["type"].startswith("alert.")}


async def test_an_alert_has_a_heatmap_beside_its_evidence_and_no_alert_has_none(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    settings = PipelineSettings(max_frames=4, max_wait_ms=0)
    analyser = live_analyser(face_detector, scorer, settings)
    client = redis.Redis.from_url(redis_url)
    async with running(analyser, settings, redis_url, heatmaps=True) as pipeline:
        alerting, calm = sources(["alerting", "calm"], [FACE], pipeline)
        add(pipeline, alerting, ALWAYS)
        add(pipeline, calm, NEVER)
        calm_slot = pipeline.slot("calm")
        assert calm_slot is not None
        await until(lambda: any(client.exists(f"dfstream:heatmap:{event_id}")
                                for event_id in alert_ids(client, "alerting")))
        await until(lambda: calm_slot.faces >= 3)  # the calm stream's faces were scored too
        for name in ("alerting", "calm"):
            pipeline.remove(name)
    # Closed: every heatmap handed over is written by now.
    alerts = alert_ids(client, "alerting")
    stored = {key.decode().removeprefix("dfstream:heatmap:")
              for key in client.scan_iter("dfstream:heatmap:*")}
    assert stored and stored <= alerts
    assert alert_ids(client, "calm") == set()
    for event_id in stored:
        heatmap = client.get(f"dfstream:heatmap:{event_id}")
        evidence = client.get(f"dfstream:evidence:{event_id}")
        assert isinstance(heatmap, bytes) and evidence is not None and heatmap != evidence
        picture = cv2.imdecode(np.frombuffer(heatmap, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == (224, 224, 3)
        ttl = client.ttl(f"dfstream:heatmap:{event_id}")
        assert 0 < ttl <= RedisSettings().evidence_ttl_s
    client.close()


class FailsOnce:
    """A crop scorer that raises on its ``fail_on``-th call (an engine fault mid-stream)."""

    def __init__(self, engine: CalibratedScorer, fail_on: int) -> None:
        self.engine, self.fail_on, self.calls = engine, fail_on, 0
        self.max_batch = engine.max_batch
        self.calibrator = engine.calibrator

    def score(self, crops: np.ndarray) -> CropScores:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("the engine failed on this batch")
        return self.engine.score(crops)


async def test_a_scorer_failing_mid_stream_costs_only_that_batch(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer, redis_url: str
) -> None:
    settings = PipelineSettings(max_frames=2, max_wait_ms=0)
    failing = FailsOnce(scorer, fail_on=3)
    analyser = live_analyser(face_detector, failing, settings)  # type: ignore[arg-type]
    async with running(analyser, settings, redis_url) as pipeline:
        streams = sources(["a", "b"], [FACE], pipeline)
        for source in streams:
            add(pipeline, source)
        await until(lambda: failing.calls > 3 and pipeline.batches >= 8)
        for source in streams:
            pipeline.remove(source.stream_id)
    # The failed batch is counted, and batches went on after it (batches counts finished ones).
    assert pipeline.engine_errors == 1 and pipeline.batches >= 8
