"""The face stage over frames of many streams, and ``dfstream faces`` on images and videos."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from engines.align import plan_crop, template_points
from engines.retinaface.torch_detector import RetinaFaceDetector
from stream.cli import app
from stream.config import FaceSettings, load_settings
from stream.faces import FaceStage, FrameFaces
from stream.samples import (
    ASTRONAUT_FACE_BOX,
    FacePlacement,
    astronaut,
    compose_frame,
    face_placement,
)
from stream.sources.reader import read_frames
from stream.tracker import box_iou
from tests.support.frames import CorruptFrame, rgb_frame


@pytest.fixture(scope="module")
def detector(retinaface_weights: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector.load("mobilenet0.25", device="cpu")


def describe(result: FrameFaces) -> str:
    return "; ".join(f"{f.score:.3f} at {np.round(f.box).tolist()}" for f in result.faces) or "none"


# --- mapping, filtering, crops (independent of what the weights find) -----------------------


def test_detections_are_mapped_to_full_resolution(detector: RetinaFaceDetector) -> None:
    stage = FaceStage(detector, FaceSettings(min_face_px=8, max_faces=256),
                      detect_max_side=640)
    frame = rgb_frame("cam", compose_frame(1280, 720, FacePlacement(300, 80, 1.0)))
    small, scale = frame.detection_image(640)
    assert small.shape[:2] == (360, 640) and scale == 0.5
    raw = detector.detect([small])[0]
    (result,) = stage.process([frame])
    assert result.error is None
    by_area = sorted(raw, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    assert len(result.faces) == len(by_area)
    for face, det in zip(result.faces, by_area, strict=True):
        np.testing.assert_allclose(face.box, det.box * 2, rtol=1e-6)
        np.testing.assert_allclose(face.landmarks, det.landmarks * 2, rtol=1e-6)
        assert face.score == det.score


def faces_of_three_sizes() -> np.ndarray:
    """The astronaut three times, large to small, on one 1280x720 backdrop."""
    picture = None
    for place in (FacePlacement(40, 60, 1.0), FacePlacement(600, 100, 0.7),
                  FacePlacement(980, 300, 0.5)):
        picture = compose_frame(1280, 720, place, backdrop=picture)
    assert picture is not None
    return picture


def test_small_faces_are_dropped_and_the_largest_kept(detector: RetinaFaceDetector) -> None:
    frame = rgb_frame("cam", faces_of_three_sizes())
    everything = FaceStage(detector, FaceSettings(min_face_px=8, max_faces=256))
    faces = everything.process([frame])[0].faces
    assert len(faces) >= 2, "needs detections of several sizes"
    sides = sorted(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in faces)
    threshold = int(sides[len(sides) // 2]) + 1
    limited = FaceStage(detector, FaceSettings(min_face_px=threshold, max_faces=1))
    kept = limited.process([frame])[0].faces
    expected = [f for f in faces if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= threshold]
    assert len(kept) == min(1, len(expected))
    if kept:
        assert kept[0].area == max(f.area for f in expected)
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)


def test_crops_come_from_the_face_region_of_the_full_frame(detector: RetinaFaceDetector) -> None:
    rgb = compose_frame(1280, 720, FacePlacement(300, 80, 1.0))
    stage = FaceStage(detector, FaceSettings(min_face_px=8))
    (result,) = stage.process([rgb_frame("cam", rgb)])
    assert result.faces
    for face in result.faces:
        assert face.crop is not None and face.crop.shape == (224, 224, 3)
        assert face.crop.dtype == np.uint8
        plan = plan_crop(face.box, face.landmarks, face.score, min_landmark_score=0.9)
        assert plan.alignment == face.alignment
        assert np.abs(plan.apply(rgb).astype(int) - face.crop).max() <= 1
    no_crops = FaceStage(detector, FaceSettings(min_face_px=8), with_crops=False)
    assert all(f.crop is None for f in no_crops.process([rgb_frame("cam", rgb)])[0].faces)


def test_streams_of_one_batch_keep_their_own_tracks(detector: RetinaFaceDetector) -> None:
    stage = FaceStage(detector, FaceSettings(min_face_px=8))
    pictures = {"a": compose_frame(640, 360, FacePlacement(100, 40, 0.5)),
                "b": compose_frame(1280, 720, FacePlacement(500, 100, 0.9)),
                "c": astronaut()}
    first = stage.process([rgb_frame(s, p, 0, 0.0) for s, p in pictures.items()])
    second = stage.process([rgb_frame(s, p, 1, 0.2) for s, p in pictures.items()])
    for before, after in zip(first, second, strict=True):
        assert before.frame.stream_id == after.frame.stream_id
        assert sorted(f.track_id for f in before.faces) == list(range(1, len(before.faces) + 1))
        assert [f.track_id for f in before.faces] == [f.track_id for f in after.faces]
        assert all(f.confirmed for f in after.faces) and not any(f.confirmed for f in before.faces)
    stage.forget("a")
    assert "a" not in stage.trackers


def test_a_bad_frame_fails_alone(detector: RetinaFaceDetector, face_video_360p: Path) -> None:
    stage = FaceStage(detector, FaceSettings(min_face_px=8))
    decoded = next(read_frames(face_video_360p, fps=None, limit=1, stream_id="video"))
    frames = [
        rgb_frame("good", compose_frame(640, 360, FacePlacement(100, 40, 0.5))),
        CorruptFrame("bad", 0, 0.0, time.time(), rgb=np.zeros((8, 8, 3), np.uint8)),
        decoded,  # a real PyAV frame: converted from YUV, region by region
    ]
    alone = [stage.process([frames[0]])[0], stage.process([frames[2]])[0]]
    good, bad, video = stage.process(frames)
    assert bad.error is not None and "corrupt picture" in bad.error and bad.faces == ()
    assert good.error is None and video.error is None
    for together, single in ((good, alone[0]), (video, alone[1])):
        assert [f.box.tolist() for f in together.faces] == [f.box.tolist() for f in single.faces]
    assert all(f.crop is not None and f.crop.shape == (224, 224, 3) for f in video.faces)


# --- end to end with the real weights -------------------------------------------------------


def test_the_astronaut_is_found_at_full_resolution(detector: RetinaFaceDetector) -> None:
    # The 512x512 photograph upscaled into a 1080p frame: detection runs at 640, boxes map back.
    scale = 1080 / 512
    frame_rgb = np.zeros((1080, 1920, 3), np.uint8)
    frame_rgb[:, 420:420 + 1080] = cv2.resize(astronaut(), (1080, 1080),
                                              interpolation=cv2.INTER_CUBIC)
    stage = FaceStage(detector, FaceSettings())
    (result,) = stage.process([rgb_frame("cam", frame_rgb)])
    expected = np.array(ASTRONAUT_FACE_BOX) * scale + [420, 0, 420, 0]
    assert len(result.faces) == 1, describe(result)
    assert box_iou(result.faces[0].box, expected)[0, 0] >= 0.7, describe(result)


def test_an_aligned_real_face_is_upright_with_eyes_on_the_template(
    detector: RetinaFaceDetector,
) -> None:
    rotated = cv2.warpAffine(astronaut(), cv2.getRotationMatrix2D((224, 117), 25, 1.0),
                             (512, 512))
    stage = FaceStage(detector, FaceSettings())
    (result,) = stage.process([rgb_frame("cam", rotated)])
    assert len(result.faces) == 1, describe(result)
    face = result.faces[0]
    assert face.alignment == "landmarks"
    plan = plan_crop(face.box, face.landmarks, face.score)
    eyes = np.c_[face.landmarks[:2], np.ones(2)] @ plan.matrix.T
    angle = np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
    assert abs(angle) < 3
    assert np.abs(eyes - template_points()[:2]).max() < 8


def test_a_moving_face_keeps_one_track_through_a_video(
    detector: RetinaFaceDetector, face_video_720p: Path
) -> None:
    stage = FaceStage(detector, FaceSettings())
    results = []
    frames = list(read_frames(face_video_720p, fps=10, limit=None, stream_id="cam"))
    for start in range(0, len(frames), 8):
        results.extend(stage.process(frames[start:start + 8]))
    assert len(results) == 20
    found = [r for r in results if r.faces]
    assert len(found) >= 18, f"face found in {len(found)} of {len(results)} frames"
    for result in found:
        truth = face_placement(result.frame.seq, 60, 1280, 720).face_box()
        assert len(result.faces) == 1, describe(result)
        assert box_iou(result.faces[0].box, np.array(truth))[0, 0] >= 0.5, describe(result)
    assert {f.track_id for r in found for f in r.faces} == {1}


def test_no_face_in_a_face_free_video(
    detector: RetinaFaceDetector, no_face_video: Path
) -> None:
    stage = FaceStage(detector, FaceSettings())
    frames = list(read_frames(no_face_video, fps=5, limit=None, stream_id="cam"))
    results = stage.process(frames)
    assert [describe(r) for r in results if r.faces] == []


# --- dfstream faces -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr with the console's line wrapping undone."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_cli_prints_the_astronaut_as_json(retinaface_weights: Path, astronaut_png: Path) -> None:
    code, out, err = run_cli("faces", str(astronaut_png), "--json", "--device", "cpu")
    assert code == 0, err
    faces = json.loads(out)
    assert len(faces) == 1, faces
    face = faces[0]
    assert set(face) == {"box", "score", "landmarks"}
    assert box_iou(np.array(face["box"]), np.array(ASTRONAUT_FACE_BOX))[0, 0] >= 0.7
    assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])


@pytest.mark.parametrize("mode", ["gray", "rgba", "gray16"])
def test_cli_converts_images_it_reads(
    retinaface_weights: Path, tmp_path: Path, mode: str
) -> None:
    bgr = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    if mode == "gray":
        picture = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    elif mode == "rgba":
        picture = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    else:
        picture = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    path = tmp_path / f"{mode}.png"
    cv2.imwrite(str(path), picture)
    code, out, err = run_cli("faces", str(path), "--json", "--device", "cpu")
    assert code == 0, err
    assert isinstance(json.loads(out), list)


def test_cli_on_a_video_reports_frames_tracks_and_crops(
    retinaface_weights: Path, face_video_360p: Path, tmp_path: Path
) -> None:
    crops = tmp_path / "crops"
    code, out, err = run_cli("faces", str(face_video_360p), "--json", "--frames", "6",
                             "--fps", "15", "--save-crops", str(crops), "--device", "cpu")
    assert code == 0, err
    rows = json.loads(out)
    assert {row["frame"] for row in rows} <= {0, 2, 4, 6, 8, 10}
    for row in rows:
        assert {"frame", "pts", "track", "confirmed", "box", "score", "landmarks",
                "crop"} <= set(row)
        picture = cv2.imread(row["crop"])
        assert picture is not None and picture.shape == (224, 224, 3)
    assert len(list(crops.glob("*.png"))) == len(rows)


def test_cli_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              astronaut_png: Path) -> None:
    code, _, err = run_cli("faces", str(tmp_path / "missing.png"))
    assert code == 2 and "does not exist" in err
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 this is neither an image nor a video" * 100)
    code, _, err = run_cli("faces", str(garbage), "--device", "cpu")
    assert code == 2 and "cannot be opened as an image or a video" in err
    monkeypatch.setenv("DFSTREAM_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("DFSTREAM_HOME", str(tmp_path / "home"))
    code, _, err = run_cli("faces", str(astronaut_png))
    assert code == 2 and "not installed" in err


def test_settings_choose_the_backend(retinaface_weights: Path) -> None:
    from stream.faces import build_face_detector

    settings = load_settings(faces={"device": "cpu"})
    assert build_face_detector(settings.faces).name == "retinaface-mobilenet0.25-onnx"
    settings.faces.backend = "torch"
    assert build_face_detector(settings.faces).name == "retinaface-mobilenet0.25"
