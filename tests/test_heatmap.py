"""The heatmap of a crop's fake logit (engines/heatmap.py) and its worker (stream/heatmaps.py).

Random-weight detectors on the CPU: the map means nothing, but its shape, range, determinism,
the overlay and the preprocessing (the scorer's own) are what is checked.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import pytest

from engines.backends import create_scorer
from engines.clip_detector import LNCLIPDetector, random_detector
from engines.heatmap import compute_heatmap
from stream.heatmaps import HeatmapWorker
from stream.samples import FacePlacement, compose_frame


@pytest.fixture(scope="module")
def tiny() -> LNCLIPDetector:
    return random_detector("tiny")


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    """A 224x224 window on the astronaut's face."""
    frame = compose_frame(640, 360, FacePlacement(200, 40, 0.6))
    return np.ascontiguousarray(frame[40:264, 200:424])


def test_the_map_has_the_crops_size_and_range_and_is_not_flat(
    tiny: LNCLIPDetector, face_crop: np.ndarray
) -> None:
    heatmap = compute_heatmap(tiny, face_crop)
    saliency = heatmap.saliency
    assert saliency.shape == (224, 224) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert saliency.max() == pytest.approx(1.0) and saliency.std() > 0.01


def test_the_map_is_deterministic(tiny: LNCLIPDetector, face_crop: np.ndarray) -> None:
    first = compute_heatmap(tiny, face_crop)
    again = compute_heatmap(tiny, face_crop)
    fresh = compute_heatmap(random_detector("tiny"), face_crop)  # same seed, same weights
    assert np.array_equal(first.saliency, again.saliency)
    assert np.array_equal(first.saliency, fresh.saliency)
    assert first.jpeg == again.jpeg


def test_the_overlay_is_a_jpeg_of_the_crop(tiny: LNCLIPDetector, face_crop: np.ndarray) -> None:
    jpeg = compute_heatmap(tiny, face_crop).jpeg
    assert jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (224, 224, 3)
    # An overlay, not the crop alone: the colour map changes the picture.
    ok, plain = cv2.imencode(".jpg", face_crop[:, :, ::-1])
    assert ok and jpeg != plain.tobytes()


def test_it_explains_the_logit_the_scorer_gives(
    tiny: LNCLIPDetector, face_crop: np.ndarray
) -> None:
    """Same preprocessing as the scorer: the logit the map explains is the scorer's."""
    scorer = create_scorer(random_detector("tiny"), backend="torch", device="cpu", max_batch=1)
    logits = scorer.score(face_crop[None])
    margin = float(logits[0, 1] - logits[0, 0])
    assert compute_heatmap(tiny, face_crop).fake_logit == pytest.approx(margin, abs=1e-4)


def test_computing_it_leaves_no_gradients_on_the_model(
    tiny: LNCLIPDetector, face_crop: np.ndarray
) -> None:
    compute_heatmap(tiny, face_crop)
    assert all(p.grad is None for p in tiny.parameters())
    assert not tiny.visual.transformer.resblocks[-1]._forward_pre_hooks


@pytest.mark.slow
def test_it_works_for_a_full_size_tower(face_crop: np.ndarray) -> None:
    """ViT-B/16: another patch size (a 14x14 grid) and width than the tiny tower's."""
    heatmap = compute_heatmap(random_detector("ViT-B-16"), face_crop)
    assert heatmap.saliency.shape == (224, 224) and heatmap.saliency.std() > 0.01


def test_a_crop_of_another_size_is_refused(tiny: LNCLIPDetector) -> None:
    with pytest.raises(ValueError, match="224, 224, 3"):
        compute_heatmap(tiny, np.zeros((112, 112, 3), np.uint8))


class Sink:
    """Collects what the worker hands to the publisher."""

    def __init__(self) -> None:
        self.jpegs: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def put(self, event_id: str, jpeg: bytes) -> None:
        with self.lock:
            self.jpegs[event_id] = jpeg


def test_the_worker_hands_each_heatmap_on_and_survives_a_failure(
    face_crop: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    loads: list[int] = []

    def load() -> LNCLIPDetector:
        loads.append(1)
        return random_detector("tiny")

    sink = Sink()
    worker = HeatmapWorker(load, sink.put)
    with caplog.at_level(logging.ERROR, logger="stream.heatmaps"):
        worker.submit("cam-1-bad", np.zeros((10, 10, 3), np.uint8))
        worker.submit("cam-1-good", face_crop)
        worker.close()
    assert list(sink.jpegs) == ["cam-1-good"]
    assert sink.jpegs["cam-1-good"] == compute_heatmap(random_detector("tiny"), face_crop).jpeg
    assert (worker.computed, worker.failed) == (1, 1)
    assert loads == [1]  # loaded once, at the first heatmap
    assert any("cam-1-bad" in r.getMessage() for r in caplog.records)


def test_the_worker_loads_nothing_until_asked() -> None:
    loads: list[int] = []
    worker = HeatmapWorker(lambda: loads.append(1) or random_detector("tiny"), Sink().put)
    worker.close()
    assert loads == []


def test_bench_heatmap_reports_ms_per_heatmap_and_the_forward_baseline() -> None:
    import json

    from typer.testing import CliRunner

    from stream.cli import app

    result = CliRunner().invoke(app, ["bench", "heatmap", "--seconds", "0.3", "--rounds", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["arch"] == "tiny" and report["ms_per_heatmap"] > 0
    assert set(report["ms_per_call"]) == {"forward", "grad_cam", "heatmap"}
    assert set(report["ratios"]) == {"heatmap / forward", "grad_cam / forward"}
