"""The synthetic face-forgery set: a valid manifest split by source, decodable videos whose faces
a real detector finds, and fakes that differ from their source only in the face region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engines.retinaface.torch_detector import RetinaFaceDetector
from stream.cli import app
from stream.data.manifest import Dataset, load_manifest
from stream.data.synth import MANIPULATIONS, SynthConfig, synthesize
from stream.sources.reader import read_frames

CONFIG = SynthConfig(videos=8, frames=8, seed=3)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return synthesize(tmp_path_factory.mktemp("synth"), CONFIG)


@pytest.fixture(scope="module")
def decoded(synth_set: Dataset) -> dict[str, list[np.ndarray]]:
    return {e.id: [f.to_rgb() for f in read_frames(e.path)] for e in synth_set}


@pytest.fixture(scope="module")
def detector(retinaface_weights: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector.load("mobilenet0.25", device="cpu")


def largest_box(detections: list) -> np.ndarray | None:  # type: ignore[type-arg]
    if not detections:
        return None
    best = max(detections, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    return np.asarray(best.box)


def test_manifest_is_valid_and_split_by_source(synth_set: Dataset) -> None:
    again = load_manifest(synth_set.root / "manifest.csv")
    assert again.entries == synth_set.entries
    header = (synth_set.root / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,label,source_id,split,manipulation,synthetic"
    assert synth_set.synthetic and all(e.synthetic for e in synth_set)
    counts = synth_set.counts()
    assert sum(c["real"] for c in counts.values()) == 4
    assert sum(c["fake"] for c in counts.values()) == 4
    assert all(counts[s]["real"] >= 1 for s in ("train", "val", "test"))
    pairs = synth_set.pairs()
    assert len(pairs) == 4
    for fake, real in pairs:
        assert real.label == "real" and real.split == fake.split
        assert fake.source_id == real.source_id
    assert set(synth_set.manipulations()) == set(MANIPULATIONS)
    # The layout also reads as a folder tree, with the same sources.
    tree = load_manifest(_without_manifest(synth_set.root))
    assert sorted((e.id, e.source_id) for e in tree) == sorted(
        (e.id, e.source_id) for e in synth_set)


def _without_manifest(root: Path) -> Path:
    """A view of the set without its manifest (links to its split folders)."""
    view = root.parent / (root.name + "-tree")
    if not view.exists():
        view.mkdir()
        for split in ("train", "val", "test"):
            (view / split).symlink_to(root / split, target_is_directory=True)
    return view


def test_videos_decode_at_the_configured_size(decoded: dict[str, list[np.ndarray]]) -> None:
    for name, frames in decoded.items():
        assert len(frames) == CONFIG.frames, name
        assert all(f.shape == (CONFIG.height, CONFIG.width, 3) for f in frames), name


def test_a_real_face_detector_finds_the_faces(
    detector: RetinaFaceDetector, decoded: dict[str, list[np.ndarray]]
) -> None:
    for name, frames in decoded.items():
        boxes = [largest_box(d) for d in detector.detect(frames)]
        found = [b for b in boxes if b is not None]
        assert len(found) >= 0.8 * len(frames), f"{name}: faces in {len(found)}/{len(frames)}"
        assert min(b[3] - b[1] for b in found) >= 80, f"{name}: faces under 80 px"


def test_fakes_differ_from_their_source_in_the_face_only(
    detector: RetinaFaceDetector, synth_set: Dataset, decoded: dict[str, list[np.ndarray]]
) -> None:
    for fake, real in synth_set.pairs():
        real_frames = decoded[real.id]
        inside, outside = [], []
        for box, a, b in zip(detector.detect(real_frames), real_frames, decoded[fake.id],
                             strict=True):
            face = largest_box(box)
            assert face is not None
            x1, y1, x2, y2 = np.round(face).astype(int).clip(0)
            diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)
            mask = np.zeros(diff.shape, bool)
            mask[y1:y2, x1:x2] = True
            inside.append(diff[mask].mean())
            # Outside: away from the face box, past the blend's feather.
            margin = round(0.25 * (y2 - y1))
            far = np.ones(diff.shape, bool)
            far[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
            outside.append(diff[far].mean())
        name = f"{fake.id} ({fake.manipulation})"
        assert np.mean(inside) > 4 * np.mean(outside), (name, inside, outside)
        assert np.mean(outside) < 2.0, (name, outside)


def test_cli_prints_the_summary_and_the_same_seed_gives_the_same_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--videos", "3",
                                      "--frames", "2", "--seed", "7", "--size", "200x180",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["manifest"] == str(out / "manifest.csv")
    assert (summary["videos"], summary["real"], summary["fake"]) == (3, 2, 1)
    assert sum(s["real"] + s["fake"] for s in summary["splits"].values()) == 3
    again = synthesize(tmp_path / "again", SynthConfig(videos=3, frames=2, seed=7,
                                                        width=200, height=180))
    assert (out / "manifest.csv").read_text() == (again.root / "manifest.csv").read_text()
    first = load_manifest(out)
    for a, b in zip(first, again, strict=True):
        for fa, fb in zip(read_frames(a.path), read_frames(b.path), strict=True):
            assert np.abs(fa.to_rgb().astype(int) - fb.to_rgb().astype(int)).mean() < 0.5
    refused = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--videos", "2"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
