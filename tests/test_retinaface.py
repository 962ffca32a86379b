"""RetinaFace with the real published weights: accuracy, batching, backends, weight formats,
clear errors."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from engines import artifacts, store
from engines.devices import resolve_device
from engines.interfaces import FaceDetection
from engines.retinaface.decode import DetectionOptions, decode, prior_boxes
from engines.retinaface.network import MEAN_BGR, RetinaFace
from engines.retinaface.onnx_detector import RUN_FRAMES, OnnxRetinaFaceDetector, export_onnx
from engines.retinaface.torch_detector import RetinaFaceDetector
from engines.retinaface.weights import build_network, load_network, state_dict_from_folded_onnx
from stream.samples import ASTRONAUT_FACE_BOX, FacePlacement, astronaut, compose_frame, face_frames
from stream.tracker import box_iou
from tests.support.model_store import use_store

SHARED_MOBILENET = "retinaface_mobilenet0.25.pth"
"""The weights share's mobilenet0.25 checkpoint: biubug6's layout, but not the published model
(it misses the astronaut and fires on backdrops); used for layout and fusion tests only."""
ARTIFACT = "retinaface-mobilenet0.25"


@pytest.fixture(scope="module")
def detector(retinaface_weights: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector.load("mobilenet0.25", device="cpu")


def iou(a: np.ndarray, b: tuple[float, ...] | np.ndarray) -> float:
    return float(box_iou(np.asarray(a), np.asarray(b))[0, 0])


def describe(faces: list[FaceDetection]) -> str:
    return "; ".join(f"{f.score:.3f} at {np.round(f.box).tolist()}" for f in faces) or "none"


def paste_portraits(width: int, height: int, placements: list[FacePlacement]) -> np.ndarray:
    """Several astronaut portraits on one face-free backdrop."""
    canvas = next(face_frames(width, height, 1, face=False))[0].copy()
    portrait = astronaut()
    for place in placements:
        size = round(512 * place.scale)
        canvas[place.y:place.y + size, place.x:place.x + size] = cv2.resize(
            portrait, (size, size), interpolation=cv2.INTER_AREA
        )
    return canvas


# --- accuracy with the real weights ---------------------------------------------------------


def test_astronaut_face_is_found_with_ordered_landmarks(detector: RetinaFaceDetector) -> None:
    faces = detector.detect([astronaut()])[0]
    assert len(faces) == 1, f"expected the astronaut's face only, got {describe(faces)}"
    face = faces[0]
    assert iou(face.box, ASTRONAUT_FACE_BOX) >= 0.7, describe(faces)
    x1, y1, x2, y2 = face.box
    marks = face.landmarks
    assert ((marks[:, 0] >= x1) & (marks[:, 0] <= x2)).all(), marks
    assert ((marks[:, 1] >= y1) & (marks[:, 1] <= y2)).all(), marks
    eyes, nose, mouth = marks[:2, 1], marks[2, 1], marks[3:, 1]
    assert eyes.max() < nose < mouth.min(), marks
    assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0], marks


@pytest.mark.parametrize("image", ["backdrop", "rocket"])
def test_no_face_where_there_is_none(detector: RetinaFaceDetector, image: str) -> None:
    picture = (next(face_frames(640, 360, 1, face=False))[0] if image == "backdrop"
               else data.rocket())
    faces = detector.detect([np.ascontiguousarray(picture)])[0]
    assert faces == [], describe(faces)


@pytest.mark.parametrize("count", [2, 3])
def test_every_face_of_a_composed_image_is_found(
    detector: RetinaFaceDetector, count: int
) -> None:
    placements = [FacePlacement(40, 60, 0.9), FacePlacement(560, 200, 0.7),
                  FacePlacement(920, 320, 0.6)][:count]
    faces = detector.detect([paste_portraits(1280, 720, placements)])[0]
    assert len(faces) == count, describe(faces)
    for place in placements:
        best = max(iou(f.box, place.face_box()) for f in faces)
        assert best >= 0.5, f"face at {place.face_box()} not found; got {describe(faces)}"


# --- batching -------------------------------------------------------------------------------


def mixed_images() -> list[np.ndarray]:
    return [
        astronaut(),
        compose_frame(640, 360, FacePlacement(300, 40, 0.5)),
        compose_frame(1280, 720, FacePlacement(200, 100, 1.0)),
        np.ascontiguousarray(astronaut()[40:260, 120:420]),
        compose_frame(333, 517, FacePlacement(10, 100, 0.6)),
    ]


def assert_same_detections(
    a: list[FaceDetection], b: list[FaceDetection], confidence: float, tolerance: float = 1.0
) -> None:
    # Scores within a hair of the threshold may fall either side of it; compare the rest.
    a = [f for f in a if f.score > confidence + 0.01]
    b = [f for f in b if f.score > confidence + 0.01]
    assert len(a) == len(b), f"{describe(a)} vs {describe(b)}"
    for x, y in zip(sorted(a, key=lambda f: -f.score), sorted(b, key=lambda f: -f.score),
                    strict=True):
        assert np.abs(x.box - y.box).max() <= tolerance, (x.box, y.box)
        assert np.abs(x.landmarks - y.landmarks).max() <= tolerance
        assert abs(x.score - y.score) < 1e-3


def test_a_batch_of_mixed_sizes_gives_the_boxes_of_one_by_one(
    detector: RetinaFaceDetector,
) -> None:
    images = mixed_images()
    batched = detector.detect(images)
    assert sum(len(faces) for faces in batched) > 0, "nothing to compare"
    for image, faces in zip(images, batched, strict=True):
        assert_same_detections(detector.detect([image])[0], faces, detector.options.confidence)


def test_small_chunks_give_the_same_result(retinaface_weights: Path) -> None:
    chunked = RetinaFaceDetector.load("mobilenet0.25", device="cpu", max_batch=2)
    whole = RetinaFaceDetector.load("mobilenet0.25", device="cpu", max_batch=16)
    images = [*mixed_images()[:2]] * 3
    for a, b in zip(chunked.detect(images), whole.detect(images), strict=True):
        assert_same_detections(a, b, whole.options.confidence)


def test_boxes_stay_in_their_own_image(detector: RetinaFaceDetector) -> None:
    images = [np.ascontiguousarray(astronaut()[:100, :100]), compose_frame(1280, 720, None)]
    for image, faces in zip(images, detector.detect(images), strict=True):
        height, width = image.shape[:2]
        for face in faces:
            cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            assert 0 <= cx < width and 0 <= cy < height


def test_channels_last_does_not_change_results(retinaface_weights: Path) -> None:
    net, _ = load_network("mobilenet0.25")
    plain = RetinaFaceDetector(net, device="cpu", channels_last=False)
    fast = RetinaFaceDetector(net, device="cpu", channels_last=True)
    images = mixed_images()[:2]
    for a, b in zip(plain.detect(images), fast.detect(images), strict=True):
        assert_same_detections(a, b, plain.options.confidence, tolerance=0.05)


def test_empty_batch_gives_empty_result(detector: RetinaFaceDetector) -> None:
    assert detector.detect([]) == []


# --- network, priors, decoding --------------------------------------------------------------


def reference_priors(height: int, width: int) -> np.ndarray:
    """The published PriorBox loop, in pixels."""
    rows = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512)), strict=True):
        for i, j in itertools.product(range(math.ceil(height / step)),
                                      range(math.ceil(width / step))):
            for size in sizes:
                rows.append([(j + 0.5) * step, (i + 0.5) * step, size, size])
    return np.array(rows, np.float32)


@pytest.mark.parametrize("size", [(64, 64), (100, 150), (360, 640)])
def test_priors_follow_the_published_layout(size: tuple[int, int]) -> None:
    np.testing.assert_allclose(prior_boxes(*size).numpy(), reference_priors(*size))


def test_zero_deltas_decode_to_the_prior() -> None:
    priors = torch.tensor([[100.0, 50.0, 32.0, 32.0]])
    boxes, points = decode(torch.zeros(1, 4), torch.zeros(1, 10), priors)
    assert boxes.tolist() == [[84.0, 34.0, 116.0, 66.0]]
    assert points.tolist() == [[[100.0, 50.0]] * 5]


def bgr_input(rgb: np.ndarray) -> np.ndarray:
    """The published networks' input: BGR minus the training mean, NCHW float32."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - np.array(MEAN_BGR, np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


def rgb_input(rgb: np.ndarray) -> torch.Tensor:
    """Our network's input: RGB minus the mean (the BGR swap is folded into its first conv)."""
    centred = rgb.astype(np.float32) - np.array(MEAN_BGR[::-1], np.float32)
    return torch.from_numpy(np.ascontiguousarray(centred.transpose(2, 0, 1)[None]))


def test_converted_weights_match_the_published_onnx(retinaface_weights: Path) -> None:
    """Our network with the mapped weights computes what the published ONNX model computes."""
    import onnxruntime as ort

    net = build_network("mobilenet0.25",
                        state_dict_from_folded_onnx(retinaface_weights.read_bytes()))
    session = ort.InferenceSession(str(retinaface_weights), providers=["CPUExecutionProvider"])
    # Sides are multiples of 32 (no padding to agree on); both pictures hold a face.
    for rgb in (astronaut(), compose_frame(320, 256, FacePlacement(40, 20, 0.4))):
        loc, conf, marks = session.run(["loc", "conf", "landmarks"], {"input": bgr_input(rgb)})
        assert conf[0, :, 1].max() > 0.9  # real detections are among the compared values
        with torch.inference_mode():
            ours = net(rgb_input(rgb))
        for mine, theirs in zip(ours, (loc, conf[..., 1], marks), strict=True):
            torch.testing.assert_close(mine, torch.from_numpy(theirs), atol=1e-4, rtol=0)


def test_an_onnx_export_of_another_layout_is_refused_by_node_name() -> None:
    from engines.retinaface.onnx_detector import export_onnx as export

    torch.manual_seed(0)
    ours = export(build_network("mobilenet0.25", None))  # node names under /net/..., fused
    with pytest.raises(store.StoreError, match=r"convolution '/net/.*' does not map onto"):
        state_dict_from_folded_onnx(ours)


def test_the_shared_checkpoint_keeps_the_published_layout(shared_weights: Path) -> None:
    """Layout compatibility only: every key and shape matches (what it detects is not tested)."""
    path = shared_weights / SHARED_MOBILENET
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = RetinaFace("mobilenet0.25").state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)
    _, info = load_network("mobilenet0.25", weights=path, sha256=store.sha256_of(path))
    assert not info.registered


def test_fused_rgb_network_matches_the_unfused_bgr_forward(shared_weights: Path) -> None:
    # The shared checkpoint carries real batch-norm statistics: a fusion test worth having.
    state = torch.load(shared_weights / SHARED_MOBILENET, map_location="cpu", weights_only=True)
    unfused = RetinaFace("mobilenet0.25")
    unfused.load_state_dict(state)
    unfused.eval()
    fused = build_network("mobilenet0.25", dict(state))
    rgb = compose_frame(320, 256, FacePlacement(40, 20, 0.4))
    with torch.inference_mode():
        for a, b in zip(unfused(torch.from_numpy(bgr_input(rgb))), fused(rgb_input(rgb)),
                        strict=True):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_value_counts_match_the_published_models() -> None:
    def count(arch: str) -> int:
        return sum(t.numel() for k, t in RetinaFace(arch).state_dict().items())

    assert count("mobilenet0.25") == 433_343
    assert 27_000_000 < count("resnet50") < 28_000_000


def test_resnet50_loads_a_data_parallel_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in RetinaFace("resnet50").state_dict().items()}
    path = tmp_path / "Resnet50_Final.pth"
    torch.save(state, path)
    net, info = load_network("resnet50", weights=path)
    assert not info.registered and info.sha256 == store.sha256_of(path)
    loc, scores, marks = net(torch.zeros(1, 3, 64, 96))
    assert loc.shape == (1, prior_boxes(64, 96).shape[0], 4)
    assert scores.shape == loc.shape[:2] and marks.shape[-1] == 10


# --- ONNX Runtime ---------------------------------------------------------------------------


def test_onnx_runtime_matches_torch(
    retinaface_weights: Path, detector: RetinaFaceDetector
) -> None:
    net, _ = load_network("mobilenet0.25")
    onnx = OnnxRetinaFaceDetector(export_onnx(net), arch="mobilenet0.25")
    images = mixed_images()
    for a, b in zip(detector.detect(images), onnx.detect(images), strict=True):
        assert_same_detections(a, b, detector.options.confidence, tolerance=0.05)


def test_onnx_runs_a_batch_in_parts_with_the_same_detections(retinaface_weights: Path) -> None:
    """A batch over RUN_FRAMES goes through ONNX Runtime in parts (its arena keeps the largest
    run): frame by frame and in one batch of 9 (not a multiple) detect the same faces."""
    net, _ = load_network("mobilenet0.25")
    onnx = OnnxRetinaFaceDetector(export_onnx(net), arch="mobilenet0.25")
    images = (mixed_images() * 2)[:9]
    assert len(images) > 2 * RUN_FRAMES
    alone = [onnx.detect([image])[0] for image in images]
    batched = onnx.detect(images)
    assert any(alone)
    for a, b in zip(alone, batched, strict=True):
        assert_same_detections(a, b, onnx.options.confidence, tolerance=0.05)


def test_onnx_export_is_written_and_reloads(retinaface_weights: Path, tmp_path: Path) -> None:
    net, _ = load_network("mobilenet0.25")
    path = tmp_path / "models" / "retinaface.onnx"
    export_onnx(net, path)
    onnx = OnnxRetinaFaceDetector(path, arch="mobilenet0.25")
    images = [compose_frame(200, 120, None), compose_frame(96, 64, None)]
    assert len(onnx.detect(images)) == 2  # dynamic batch and size


# --- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "is empty"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (np.zeros((64, 48), np.uint8), r"shape \(64, 48\) \(grayscale\)"),
        (np.zeros((64, 48, 1), np.uint8), "grayscale"),
        (np.zeros((64, 48, 4), np.uint8), r"shape \(64, 48, 4\) \(RGBA\)"),
        (np.zeros((2, 64, 48, 3), np.uint8), "HxWx3"),
    ],
)
def test_bad_images_are_refused_by_name(
    detector: RetinaFaceDetector, image: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        detector.detect([astronaut(), image])
    with pytest.raises(ValueError, match="image 1"):
        detector.detect([astronaut(), image])


def test_a_non_array_is_refused(detector: RetinaFaceDetector) -> None:
    with pytest.raises(TypeError, match="numpy array"):
        detector.detect([[[0, 0, 0]]])  # type: ignore[list-item]


def test_missing_weights_say_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(monkeypatch, tmp_path / "home", weights_dir=tmp_path / "none")
    with pytest.raises(store.StoreError, match=r"not installed.*models pull retinaface-mobilenet"):
        RetinaFaceDetector.load("mobilenet0.25")


@pytest.mark.parametrize("damage", ["truncated", "same size"])
def test_corrupt_store_weights_are_refused(
    retinaface_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    content = bytearray(retinaface_weights.read_bytes())
    if damage == "truncated":
        content = content[: len(content) // 2]
    else:
        content[len(content) // 2] ^= 0xFF
    (tmp_path / artifacts.ARTIFACTS.lookup(ARTIFACT).filename).write_bytes(bytes(content))
    use_store(monkeypatch, tmp_path / "home", weights_dir=tmp_path)
    with pytest.raises(store.StoreError, match=r"corrupt|truncated"):
        RetinaFaceDetector.load("mobilenet0.25")


def test_an_explicit_file_with_the_wrong_checksum_is_refused(
    retinaface_weights: Path, tmp_path: Path
) -> None:
    path = tmp_path / "weights.onnx"
    shutil.copy(retinaface_weights, path)
    with pytest.raises(store.StoreError, match=f"expected {'0' * 64}"):
        load_network("mobilenet0.25", weights=path, sha256="0" * 64)
    published = artifacts.ARTIFACTS.lookup(ARTIFACT).sha256
    _, info = load_network("mobilenet0.25", weights=path, sha256=published)
    assert info.sha256 == published and not info.registered


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("garbage.pth", b"not a checkpoint at all" * 50, "cannot be read as PyTorch weights"),
     ("garbage.onnx", b"not a model at all" * 50, "cannot be read as an ONNX model"),
     ("garbage.pth", None, "not exist"), ("garbage.onnx", None, "not exist")],
)
def test_unreadable_explicit_weights_are_refused(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(store.StoreError, match=message):
        load_network("mobilenet0.25", weights=path)


def test_weights_of_another_backbone_are_refused(
    shared_weights: Path, retinaface_weights: Path
) -> None:
    with pytest.raises(store.StoreError, match="does not hold RetinaFace resnet50 weights"):
        load_network("resnet50", weights=shared_weights / SHARED_MOBILENET)
    with pytest.raises(store.StoreError, match="RetinaFace resnet50"):
        load_network("resnet50", weights=retinaface_weights)


def test_unusable_devices_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown device|not supported"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="only offered on CUDA"):
            RetinaFaceDetector(RetinaFace("mobilenet0.25"), device="cpu", half=True)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="confidence"):
        DetectionOptions(confidence=1.5)
    with pytest.raises(ValueError, match="nms_iou"):
        DetectionOptions(nms_iou=0)


# --- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu(retinaface_weights: Path, detector: RetinaFaceDetector) -> None:
    net, _ = load_network("mobilenet0.25")
    cuda = RetinaFaceDetector(net, device="cuda")
    half = RetinaFaceDetector(net, device="cuda", half=True)
    images = mixed_images()
    expected = detector.detect(images)
    for a, b in zip(expected, cuda.detect(images), strict=True):
        assert_same_detections(a, b, detector.options.confidence)
    for a, b in zip(expected, half.detect(images), strict=True):
        assert_same_detections(
            [f for f in a if f.score > 0.9], [f for f in b if f.score > 0.9], 0.9, tolerance=2.0
        )
