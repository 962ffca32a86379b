"""A SYNTHETIC face-forgery set, for tests and demos only.

Nothing here is a real deepfake. The one human face that ships with an installed package in a
usable size is scikit-image's astronaut (public domain; ``skimage.data.lfw_subset`` faces are
25x25, too small for an 80 px face). Distinct "identities" are made from it by a mirror, a mild
warp of the face (width, height, jaw), skin tone, white balance, gamma and side light. A real clip
moves one identity smoothly over a face-free backdrop (gradients or a scikit-image picture,
panning slowly), with small rotation and scale changes and mild sensor noise.

A fake is made from a real clip, frame by frame, like a face swap: a *different* identity is
rendered in the same pose (with a little per-frame misalignment, the flicker of real swaps) and
blended into the face region through a feathered ellipse. Per fake one manipulation
(``MANIPULATIONS``): ``swap-blend`` (colour-matched, wide feather), ``swap-colour`` (no colour
match, a skin tone shift, narrow feather), ``swap-blur`` (face at generator resolution and a
blurred seam), ``swap-sharpen`` (over-sharpened face). Outside the mask a fake equals its real.

What a model can learn from this set: the blending seams, colour mismatch, resolution and noise
inconsistencies of this generator, on one photographed face. That exercises training, data
loading, paired sampling and evaluation end to end; it says nothing about detecting real
deepfakes.

Splits are drawn by source: a real and its fakes share a split, so nothing leaks.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stream.data.manifest import SOURCE_SEPARATOR, Dataset, load_manifest
from stream.samples import (
    ASTRONAUT_FACE_BOX,
    BACKDROP_PICTURES,
    astronaut,
    background,
    picture_backdrop,
    write_video,
)

MANIPULATIONS = ("swap-blend", "swap-colour", "swap-blur", "swap-sharpen")
MIN_FACE_PX = 90
"""Face height (the astronaut box) at least this, so a detector finds a face of 80+ px."""
PAN_PX = 24
"""How far the backdrop pans over a clip."""

Box = tuple[float, float, float, float]
_FACE_CENTRE = ((ASTRONAUT_FACE_BOX[0] + ASTRONAUT_FACE_BOX[2]) / 2,
                (ASTRONAUT_FACE_BOX[1] + ASTRONAUT_FACE_BOX[3]) / 2)
_FACE_HEIGHT = ASTRONAUT_FACE_BOX[3] - ASTRONAUT_FACE_BOX[1]


@dataclass(frozen=True)
class SynthConfig:
    """How big a set to make; the defaults make a ~1 MB set in seconds."""

    videos: int = 24
    frames: int = 16
    fps: int = 5
    width: int = 256
    height: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.videos < 2:
            raise ValueError(f"--videos {self.videos} is too few; make at least 2 (a real, a fake)")
        if self.frames < 1 or self.fps < 1:
            raise ValueError("--frames and the frame rate must be at least 1")
        if min(self.width, self.height) < 2 * MIN_FACE_PX:
            raise ValueError(f"--size {self.width}x{self.height} is too small for a "
                             f"{MIN_FACE_PX} px face; use at least {2 * MIN_FACE_PX} px a side")


# --- identities ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """One synthetic person: a geometry and colour transform of the astronaut portrait."""

    mirror: bool
    face_width: float
    face_height: float
    jaw: float
    skin: tuple[float, float]
    white_balance: tuple[float, float, float]
    gamma: float
    light: tuple[float, float]

    @classmethod
    def random(cls, rng: np.random.Generator) -> Identity:
        return cls(
            mirror=bool(rng.random() < 0.5),
            face_width=float(rng.uniform(0.9, 1.1)),
            face_height=float(rng.uniform(0.93, 1.07)),
            jaw=float(rng.uniform(-0.12, 0.12)),
            skin=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 12))),
            white_balance=(float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)),
                           float(rng.uniform(0.85, 1.15))),
            gamma=float(rng.uniform(0.8, 1.25)),
            light=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.0, 0.35))),
        )


def _face_envelope(shape: tuple[int, int], spread: float) -> np.ndarray:
    """A Gaussian bump over the astronaut's face, so warps and skin tone fade out around it."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    sx = spread * (ASTRONAUT_FACE_BOX[2] - ASTRONAUT_FACE_BOX[0])
    sy = spread * _FACE_HEIGHT
    return np.exp(-(((xs - _FACE_CENTRE[0]) / sx) ** 2 + ((ys - _FACE_CENTRE[1]) / sy) ** 2) / 2)


def render_portrait(identity: Identity) -> np.ndarray:
    """The 512x512 portrait of ``identity``; its face stays at about ASTRONAUT_FACE_BOX."""
    image = astronaut().astype(np.float32)
    rows, cols = image.shape[:2]
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx, cy = _FACE_CENTRE
    weight = _face_envelope((rows, cols), 0.9)
    below = np.clip((ys - cy) / (_FACE_HEIGHT / 2), 0, 1)
    stretch_x = identity.face_width * (1 + identity.jaw * below)
    map_x = xs - weight * (xs - cx) * (1 - 1 / stretch_x)
    map_y = ys - weight * (ys - cy) * (1 - 1 / identity.face_height)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    angle, strength = identity.light
    side = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / cols
    lit = warped * np.asarray(identity.white_balance, np.float32) * (1 + strength * side)[..., None]
    toned = (np.clip(lit, 0, 255) / 255) ** identity.gamma
    lab = cv2.cvtColor(toned.astype(np.float32), cv2.COLOR_RGB2LAB)
    skin = _face_envelope((rows, cols), 0.6)
    lab[..., 1] += identity.skin[0] * skin
    lab[..., 2] += identity.skin[1] * skin
    rgb = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255, 0, 255).astype(np.uint8)
    if not identity.mirror:
        return rgb
    flip = np.array([[-1, 0, 2 * cx], [0, 1, 0]], np.float32)  # about the face centre
    return cv2.warpAffine(rgb, flip, (cols, rows), borderMode=cv2.BORDER_REFLECT)


def _portrait_matte() -> np.ndarray:
    """Where the portrait shows over the backdrop: head and shoulders, softly edged."""
    matte = np.zeros((512, 512), np.float32)
    cx, cy = round(_FACE_CENTRE[0]), round(_FACE_CENTRE[1])
    cv2.ellipse(matte, (cx, cy - 8), (70, 96), 0, 0, 360, 1.0, -1)
    cv2.ellipse(matte, (cx, cy + 60), (50, 60), 0, 0, 360, 1.0, -1)  # neck
    cv2.ellipse(matte, (cx + 10, 400), (210, 170), 0, 0, 360, 1.0, -1)  # shoulders
    return cv2.GaussianBlur(matte, (0, 0), 6)


# --- clips --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Where the portrait lies in one frame: portrait -> frame affine transform."""

    matrix: np.ndarray
    angle: float

    def face_box(self) -> Box:
        x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
        corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], np.float64)
        mapped = corners @ self.matrix.T
        return (float(mapped[:, 0].min()), float(mapped[:, 1].min()),
                float(mapped[:, 0].max()), float(mapped[:, 1].max()))

    def jittered(self, rng: np.random.Generator) -> Pose:
        """The same pose a little off (a swap's landmark alignment is never exact)."""
        delta = cv2.getRotationMatrix2D(_FACE_CENTRE, float(rng.normal(0, 1.0)),
                                        float(1 + rng.normal(0, 0.015)))
        delta[:, 2] = delta[:, 2] + rng.normal(0, 1.0, 2)
        matrix = self.matrix @ np.vstack([delta, [0, 0, 1]])
        return Pose(matrix, self.angle)


def clip_poses(config: SynthConfig, rng: np.random.Generator) -> list[Pose]:
    """A smooth path: the face drifts across the frame, turns a little and breathes in size."""
    short = min(config.width, config.height)
    face_px = max(MIN_FACE_PX, rng.uniform(0.34, 0.42) * short)
    base_scale = face_px / _FACE_HEIGHT
    half_w = 0.75 * face_px
    half_h = 0.7 * face_px
    low = np.array([half_w, half_h])
    high = np.array([config.width - half_w, config.height - half_h])
    start, end = rng.uniform(low, high), rng.uniform(low, high)
    tilt, swing, phase = rng.uniform(-6, 6), rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)
    poses = []
    for index in range(config.frames):
        t = index / max(config.frames - 1, 1)
        ease = t * t * (3 - 2 * t)
        centre = np.clip(start + (end - start) * ease, low, high)
        angle = float(tilt + swing * math.sin(2 * math.pi * t + phase))
        scale = float(base_scale * (1 + 0.05 * math.sin(2 * math.pi * t + 2 * phase)))
        matrix = cv2.getRotationMatrix2D(_FACE_CENTRE, angle, scale)
        matrix[:, 2] += centre - np.asarray(_FACE_CENTRE)
        poses.append(Pose(np.vstack([matrix, [0, 0, 1]]), angle))
    return poses


def random_backdrop(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """A face-free backdrop a little larger than the frame (room to pan)."""
    width, height = config.width + PAN_PX, config.height + PAN_PX
    choice = int(rng.integers(len(BACKDROP_PICTURES) + 2))
    if choice < len(BACKDROP_PICTURES):
        picture = picture_backdrop(BACKDROP_PICTURES[choice], width, height).astype(np.float32)
        tint = rng.uniform(0.75, 1.2, 3).astype(np.float32)
        blurred = cv2.GaussianBlur(picture * tint, (0, 0), 1.0)
        return np.clip(blurred, 0, 255).astype(np.uint8)
    red, green, blue = (int(v) for v in rng.integers(60, 170, 3))
    return background(width, height, phase=float(rng.uniform(0, 2 * math.pi)),
                      base=(red, green, blue))


def render_real(
    portrait: np.ndarray, backdrop: np.ndarray, poses: list[Pose], config: SynthConfig,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The real clip's RGB frames: the portrait at each pose over the panning backdrop."""
    matte = _portrait_matte()
    size = (config.width, config.height)
    pan = rng.uniform(-1, 1, 2) * PAN_PX / 2
    frames = []
    for index, pose in enumerate(poses):
        t = index / max(len(poses) - 1, 1)
        x0, y0 = (np.array([PAN_PX / 2, PAN_PX / 2]) + pan * (2 * t - 1)).round().astype(int)
        back = backdrop[y0 : y0 + config.height, x0 : x0 + config.width].astype(np.float32)
        face = cv2.warpAffine(portrait, pose.matrix[:2], size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        alpha = cv2.warpAffine(matte, pose.matrix[:2], size, flags=cv2.INTER_LINEAR)[..., None]
        frame = alpha * face + (1 - alpha) * back + rng.normal(0, 1.5, back.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


# --- fakes --------------------------------------------------------------------------------------


def face_mask(pose: Pose, size: tuple[int, int], feather: float) -> np.ndarray:
    """The swapped region: an ellipse over the inner face at ``pose``, feathered by ``feather``
    (a fraction of the face size)."""
    x1, y1, x2, y2 = pose.face_box()
    centre = (round((x1 + x2) / 2), round(y1 + 0.55 * (y2 - y1)))
    axes = (max(1, round(0.36 * (x2 - x1))), max(1, round(0.42 * (y2 - y1))))
    mask = np.zeros((size[1], size[0]), np.float32)
    cv2.ellipse(mask, centre, axes, -pose.angle, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, feather * (y2 - y1)))[..., None]


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source`` with the LAB mean and spread of ``target`` inside the mask."""
    inside = mask[..., 0] > 0.5
    if not inside.any():
        return source
    src = cv2.cvtColor(source.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    dst = cv2.cvtColor(target.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    s_mean, s_std = src[inside].mean(0), src[inside].std(0) + 1e-3
    d_mean, d_std = dst[inside].mean(0), dst[inside].std(0)
    matched = (src - s_mean) / s_std * d_std + d_mean
    return np.clip(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB) * 255, 0, 255)


def swap_frame(
    real: np.ndarray, donor: np.ndarray, pose: Pose, manipulation: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """One fake frame: the donor portrait warped to (about) ``pose`` and blended into ``real``'s
    face region the way ``manipulation`` says."""
    size = (real.shape[1], real.shape[0])
    face = cv2.warpAffine(donor, pose.jittered(rng).matrix[:2], size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    feather = {"swap-blend": 0.08, "swap-colour": 0.03, "swap-blur": 0.05,
               "swap-sharpen": 0.04}[manipulation]
    mask = face_mask(pose, size, feather)
    target = real.astype(np.float32)
    if manipulation == "swap-colour":
        lab = cv2.cvtColor(face / 255, cv2.COLOR_RGB2LAB)
        lab[..., 1:] += rng.uniform(-12, 12, 2).astype(np.float32)
        face = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255, 0, 255)
    else:
        face = _match_colour(face, target, mask)
    if manipulation == "swap-blur":
        _, y1, _, y2 = pose.face_box()
        factor = min(1.0, 48 / max(1.0, y2 - y1))  # the face as a 48 px generator made it
        small = cv2.resize(face, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        face = np.asarray(cv2.resize(small, size, interpolation=cv2.INTER_LINEAR), np.float32)
    elif manipulation == "swap-sharpen":
        face = np.clip(cv2.addWeighted(face, 2.2, cv2.GaussianBlur(face, (0, 0), 1.5), -1.2, 0),
                       0, 255)
    fake = mask * face + (1 - mask) * target
    if manipulation == "swap-blur":
        seam = (mask > 0.05) & (mask < 0.95)
        fake = np.where(seam, cv2.GaussianBlur(fake, (0, 0), 1.5), fake)
    return np.clip(fake, 0, 255).astype(np.uint8)


# --- the set ------------------------------------------------------------------------------------


def assign_splits(sources: int, rng: np.random.Generator) -> list[str]:
    """A split per source: about 70/15/15, at least one val and test source once there are 3."""
    held = max(1, round(0.15 * sources)) if sources >= 3 else 0
    order = rng.permutation(sources)
    splits = ["train"] * sources
    for rank, index in enumerate(order[: 2 * held]):
        splits[int(index)] = "val" if rank < held else "test"
    return splits


def synthesize(
    out: Path, config: SynthConfig, progress: Callable[[str], None] | None = None,
    *, overwrite: bool = False,
) -> Dataset:
    """Write the set and ``out/manifest.csv``; return it loaded and validated.

    Layout ``out/<split>/<real|fake>/`` (reals ``sNNN.mp4``, fakes ``sNNN__<manipulation>.mp4``),
    so ``out`` also reads as a folder tree. ``progress`` is called once per video written.
    """
    out = Path(out)
    _prepare(out, overwrite)
    reals = math.ceil(config.videos / 2)
    fakes = config.videos - reals
    splits = assign_splits(reals, np.random.default_rng([config.seed, 0]))
    rows: list[dict[str, str]] = []
    for index in range(reals):
        rng = np.random.default_rng([config.seed, 1, index])
        source, split = f"s{index:03d}", splits[index]
        poses = clip_poses(config, rng)
        frames = render_real(render_portrait(Identity.random(rng)), random_backdrop(config, rng),
                             poses, config, rng)
        rows.append(_write(out, f"{split}/real/{source}.mp4", frames, config, "real", source,
                           split, ""))
        if progress:
            progress(rows[-1]["path"])
        for number in range(index, fakes, reals):  # the fakes made from this source
            fake_rng = np.random.default_rng([config.seed, 2, number])
            manipulation = MANIPULATIONS[number % len(MANIPULATIONS)]
            donor = render_portrait(Identity.random(fake_rng))
            swapped = [swap_frame(f, donor, p, manipulation, fake_rng)
                       for f, p in zip(frames, poses, strict=True)]
            name = f"{split}/fake/{source}{SOURCE_SEPARATOR}{manipulation}.mp4"
            rows.append(_write(out, name, swapped, config, "fake", source, split, manipulation))
            if progress:
                progress(rows[-1]["path"])
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "source_id", "split",
                                                    "manipulation", "synthetic"])
        writer.writeheader()
        writer.writerows(rows)
    return load_manifest(manifest)


def held_out_pair(
    out: Path, config: SynthConfig, manipulation: str = "swap-blend"
) -> tuple[Path, Path]:
    """A real clip of an identity no ``synthesize`` set of ``config.seed`` holds (its own random
    stream), and a fake made from it by ``manipulation``: ``out/real.mp4``, ``out/fake.mp4``.
    These are the demo's two cameras, so their keyframes come every second."""
    if manipulation not in MANIPULATIONS:
        raise ValueError(f"unknown manipulation {manipulation!r}; one of {MANIPULATIONS}")
    rng = np.random.default_rng([config.seed, 3])
    poses = clip_poses(config, rng)
    frames = render_real(render_portrait(Identity.random(rng)), random_backdrop(config, rng),
                         poses, config, rng)
    donor = render_portrait(Identity.random(rng))
    swapped = [swap_frame(f, donor, p, manipulation, rng) for f, p in zip(frames, poses,
                                                                          strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "real.mp4", out / "fake.mp4"
    for path, clip in zip(paths, (frames, swapped), strict=True):
        write_video(path, iter(clip), fps=config.fps, gop=config.fps, crf=18)
    return paths


def _prepare(out: Path, overwrite: bool) -> None:
    mine = [out / "manifest.csv", *(out / s for s in ("train", "val", "test"))]
    if any(p.exists() for p in mine):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a set; pass --overwrite to replace it "
                                  "or choose another --out")
        for path in mine:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write(
    out: Path, name: str, frames: list[np.ndarray], config: SynthConfig, label: str,
    source: str, split: str, manipulation: str,
) -> dict[str, str]:
    write_video(out / name, iter(frames), fps=config.fps, gop=config.frames, crf=18)
    return {"path": name, "label": label, "source_id": source, "split": split,
            "manipulation": manipulation, "synthetic": "1"}
