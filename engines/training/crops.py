"""The prepared crop set: aligned face crops of every video of a dataset, cached on disk.

``dfstream data prepare`` writes it with the service's own analysis path, so training and
evaluation see exactly the crops the live service scores. Layout of a prepared folder::

    prepared.json          format, version, settings, and one entry per video (label, split, ...)
    crops/<key>.npz        per video: crops (n, S, S, 3) uint8 RGB, frame_index (n,), boxes (n, 4),
                           landmarks (n, 5, 2), det_score (n,) -- frames without a face are absent

A video's file is written atomically when it is done, so an interrupted preparation resumes
where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import UserError

FORMAT = "dfstream-prepared-crops"
VERSION = 1
INDEX = "prepared.json"
CROPS_DIR = "crops"
LABELS = {"real": 0, "fake": 1}


class PreparedSetError(UserError, ValueError):
    """A prepared folder is missing, of another format, or inconsistent; the message says how
    to rebuild it."""


@dataclass(frozen=True)
class PreparedVideo:
    """One video of the set and where its crops are."""

    id: str
    label: str
    split: str
    source_id: str = ""
    manipulation: str = ""
    frames_requested: int = 0
    frames_with_face: int = 0

    @property
    def target(self) -> int:
        """1 for fake, 0 for real."""
        return LABELS[self.label]

    @property
    def key(self) -> str:
        """The video's file name in ``crops/``: its id with path separators made flat."""
        return self.id.replace("/", "__").replace("\\", "__")


@dataclass(frozen=True)
class VideoCrops:
    crops: np.ndarray
    frame_index: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    det_score: np.ndarray

    def __len__(self) -> int:
        return int(self.crops.shape[0])


@dataclass
class PreparedSet:
    """A prepared folder: its index and lazy access to each video's crops."""

    root: Path
    videos: list[PreparedVideo]
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, root: Path) -> PreparedSet:
        index = Path(root) / INDEX
        if not index.is_file():
            raise PreparedSetError(
                f"{root} is not a prepared crop set (no {INDEX}); run `dfstream data prepare "
                f"MANIFEST --out {root}` first"
            )
        data = json.loads(index.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise PreparedSetError(
                f"{index} is format {data.get('format')!r} version {data.get('version')!r}, not "
                f"{FORMAT} {VERSION}; prepare the set again"
            )
        videos = [PreparedVideo(**v) for v in data["videos"]]
        return cls(Path(root), videos, dict(data.get("settings", {})))

    def split(self, name: str) -> list[PreparedVideo]:
        """The videos of a split that have at least one face crop."""
        return [v for v in self.videos if v.split == name and v.frames_with_face > 0]

    def load(self, video: PreparedVideo) -> VideoCrops:
        return read_video_crops(self.root / CROPS_DIR / f"{video.key}.npz")

    def arrays(self, videos: Sequence[PreparedVideo]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All crops of ``videos`` stacked, with per-crop targets and per-crop video numbers."""
        crops, targets, owners = [], [], []
        for number, video in enumerate(videos):
            loaded = self.load(video)
            crops.append(loaded.crops)
            targets.append(np.full(len(loaded), video.target, np.int64))
            owners.append(np.full(len(loaded), number, np.int64))
        if not crops:
            empty = np.empty(0, np.int64)
            return np.empty((0, 224, 224, 3), np.uint8), empty, empty
        return np.concatenate(crops), np.concatenate(targets), np.concatenate(owners)


def read_video_crops(path: Path) -> VideoCrops:
    if not path.is_file():
        raise PreparedSetError(f"{path} is missing; run `dfstream data prepare` again to resume")
    with np.load(path) as data:
        return VideoCrops(
            data["crops"], data["frame_index"], data["boxes"], data["landmarks"],
            data["det_score"],
        )


def write_video_crops(root: Path, video: PreparedVideo, crops: VideoCrops) -> Path:
    """Write one video's crops atomically (a half-written file never looks done)."""
    directory = Path(root) / CROPS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{video.key}.npz"
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part.npz")
    os.close(fd)
    try:
        np.savez(tmp, **vars(crops), meta=np.array(json.dumps(asdict(video))))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def read_video_entry(path: Path) -> PreparedVideo | None:
    """The entry stored with a finished video's crops, or None if there is none yet."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        return PreparedVideo(**json.loads(str(data["meta"])))


def write_index(root: Path, videos: Iterable[PreparedVideo], settings: dict[str, Any]) -> Path:
    index = Path(root) / INDEX
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "videos": [asdict(v) for v in videos],
    }
    tmp = index.with_suffix(".json.part")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, index)
    return index
