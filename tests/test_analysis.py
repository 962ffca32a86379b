"""The analysis path on its own: crop policy, one scorer batch across frames, calibration behind
the scorer, raw logits alongside, a bad frame passing through with its error."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from engines.calibrated import CalibratedScorer
from engines.calibration import Calibrator
from engines.retinaface.torch_detector import RetinaFaceDetector
from stream.analysis import EVERY_FACE, Analyser, CropPolicy
from stream.config import FaceSettings, PipelineSettings
from stream.faces import FaceStage
from stream.samples import FacePlacement, compose_frame
from tests.support.frames import CorruptFrame, crowd, rgb_frame, tiny_scorer


@pytest.fixture(scope="module")
def scorer() -> CalibratedScorer:
    return tiny_scorer(Calibrator("platt", (0.5, -0.2)), max_batch=3)


def stage(detector: RetinaFaceDetector, *, with_crops: bool = True) -> FaceStage:
    return FaceStage(detector, FaceSettings(min_face_px=8, max_faces=16), with_crops=with_crops)


def test_every_face_with_a_crop_is_scored_in_one_batch_across_frames(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer
) -> None:
    analyser = Analyser(stage(face_detector), scorer, EVERY_FACE)
    frames = [rgb_frame("a", crowd()), rgb_frame("b", compose_frame(640, 360,
                                                                  FacePlacement(200, 40, 0.6)))]
    results = analyser.analyse(frames)
    assert [r.frame for r in results] == frames
    assert sum(len(r.scored) for r in results) > scorer.max_batch  # split into engine calls
    for result in results:
        assert [s.face for s in result.scored] == list(result.faces)
        assert result.largest is result.scored[0]
        for scored in result.scored:
            assert scored.face.crop is not None
            alone = scorer.score(scored.face.crop[None])
            np.testing.assert_allclose(scored.logits, alone.logits[0], atol=1e-5)
            margin = float(scored.logits[1] - scored.logits[0])
            assert scored.p_fake == pytest.approx(float(special.expit(0.5 * margin - 0.2)))
            assert scored.raw_p_fake == pytest.approx(float(special.expit(margin)))


def test_the_live_policy_takes_confirmed_tracks_only_up_to_its_cap(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer
) -> None:
    policy = CropPolicy.live(PipelineSettings(max_crops_per_stream=2))
    analyser = Analyser(stage(face_detector), scorer, policy)
    first, second = (analyser.analyse([rgb_frame("cam", crowd(), i, i / 5)])[0]
                     for i in range(2))
    assert len(first.faces) >= 3 and first.scored == ()  # tracks not confirmed yet
    assert [s.face for s in second.scored] == list(second.faces[:2])


def test_without_crops_or_a_scorer_nothing_is_scored(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer
) -> None:
    no_crops = Analyser(stage(face_detector, with_crops=False), scorer, EVERY_FACE)
    (result,) = no_crops.analyse([rgb_frame("cam", crowd())])
    assert result.faces and all(f.crop is None for f in result.faces) and result.scored == ()
    faces_only = Analyser(stage(face_detector), None)
    (result,) = faces_only.analyse([rgb_frame("cam", crowd())])
    assert result.faces and result.scored == () and result.largest is None


def test_a_bad_frame_passes_through_with_its_error(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer
) -> None:
    analyser = Analyser(stage(face_detector), scorer, EVERY_FACE)
    bad = CorruptFrame("bad", 0, 0.0, 0.0, rgb=crowd())
    good, failed = analyser.analyse([rgb_frame("good", crowd()), bad])
    assert good.error is None and len(good.scored) >= 3
    assert failed.error is not None and "corrupt picture" in failed.error
    assert failed.faces == () and failed.scored == ()


def test_face_scores_take_a_streams_own_calibration_over_the_bundles(
    face_detector: RetinaFaceDetector, scorer: CalibratedScorer
) -> None:
    from engines.calibration import Calibrator

    analyser = Analyser(stage(face_detector), scorer, EVERY_FACE)
    (result,) = analyser.analyse([rgb_frame("cam", crowd())])
    assert [f.p_fake for f in result.face_scores()] == [s.p_fake for s in result.scored]
    camera = Calibrator("platt", (0.5, -2.0))
    own = result.face_scores(camera)
    expected = camera.p_fake(np.stack([s.logits for s in result.scored]))
    assert np.allclose([f.p_fake for f in own], expected, atol=1e-12)
    assert [f.track for f in own] == [s.track for s in result.scored]
