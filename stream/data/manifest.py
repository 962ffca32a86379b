"""A dataset of labelled videos, read from a manifest (CSV or JSONL) or a folder tree.

Manifest rows have ``path,label,source_id,split`` and optionally ``manipulation`` and
``synthetic`` (``1``/``true`` for a video that a generator made, real or fake, not a camera: what
``dfstream data synth`` writes; a detector trained on it says so wherever it runs). ``path`` is a
video file or a folder of frame images, relative to the manifest's folder or absolute; ``label``
is ``real`` or ``fake``; ``split`` is ``train``, ``val`` or ``test``; ``source_id`` is a real
video's own id and, for a fake, the id of the real video it was made from (empty when unknown).
Knowing the source lets training sample a fake with its source real, which the LN-CLIP authors
found essential against shortcut learning, and lets validation refuse splits that leak a source.

A folder tree ``ROOT/{train,val,test}/{real,fake}/<video or frame folder>`` is read the same way:
a real's source_id is its stem, a fake's is ``SOURCE`` in ``SOURCE__name.mp4`` (else empty).

Validation collects every problem and raises one DatasetError listing each with its line and fix,
so a broken manifest is mended in one pass.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engines.errors import UserError

LABELS = ("real", "fake")
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label", "source_id", "split")
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
"""A folder holding one of these is read through it rather than as a folder tree."""
SOURCE_SEPARATOR = "__"
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"", "0", "false", "no"})


class DatasetError(UserError, ValueError):
    """The dataset cannot be used as it is; the message lists every problem and its fix."""

    def __init__(self, where: Path, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{where}: {len(problems)} problem(s):\n{listed}")


@dataclass(frozen=True)
class VideoEntry:
    """One video (or frame folder) of the dataset."""

    id: str
    path: Path
    label: str
    source_id: str
    split: str
    manipulation: str = ""
    synthetic: bool = False

    @property
    def is_fake(self) -> bool:
        return self.label == "fake"


@dataclass(frozen=True)
class Dataset:
    """Validated entries; ids, paths and real source ids are unique, every fake's source exists."""

    root: Path
    entries: list[VideoEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def synthetic(self) -> bool:
        """Whether any video is synthetic (then so is whatever is trained or measured on it)."""
        return any(e.synthetic for e in self.entries)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)

    def by_split(self, split: str) -> list[VideoEntry]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return [e for e in self.entries if e.split == split]

    def reals(self) -> dict[str, VideoEntry]:
        """Real entries by source_id."""
        return {e.source_id: e for e in self.entries if not e.is_fake}

    def pairs(self, split: str | None = None) -> list[tuple[VideoEntry, VideoEntry]]:
        """(fake, its source real) for every fake that names a source, for paired sampling."""
        reals = self.reals()
        return [
            (e, reals[e.source_id])
            for e in self.entries
            if e.is_fake and e.source_id and (split is None or e.split == split)
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """Videos per split and label, e.g. ``{"train": {"real": 8, "fake": 8}, ...}``."""
        return {
            split: {label: sum(1 for e in self.entries if (e.split, e.label) == (split, label))
                    for label in LABELS}
            for split in SPLITS
        }

    def manipulations(self) -> dict[str, int]:
        """Fakes per manipulation (``""`` when the manifest does not say)."""
        return dict(sorted(Counter(e.manipulation for e in self.entries if e.is_fake).items()))


@dataclass(frozen=True)
class _Row:
    """A manifest row as written, with where it came from (for messages)."""

    where: str
    values: dict[str, str]


def load_manifest(path: str | Path) -> Dataset:
    """Read and validate a CSV/JSONL manifest or a folder tree; raise DatasetError listing all
    problems."""
    path = Path(path)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return load_manifest(path / name)
        return _validate(path, path, _tree_rows(path))
    if not path.is_file():
        raise DatasetError(path, [f"{path} does not exist; pass a manifest (.csv or .jsonl) or "
                                  "a folder with train/val/test subfolders"])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise DatasetError(path, [f"unknown manifest type {path.suffix!r}; use .csv or .jsonl"])
    return _validate(path, path.parent, rows)


def _csv_rows(path: Path) -> list[_Row]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(path, [
                f"line 1: missing column(s) {', '.join(missing)}; the header needs "
                f"{','.join(REQUIRED_COLUMNS)} (and optionally manipulation, synthetic)"
            ])
        reader.fieldnames = header
        return [
            _Row(f"line {reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k})
            for row in reader
            if any((v or "").strip() for v in row.values() if isinstance(v, str))
        ]


def _jsonl_rows(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg}); write one object per line")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: not a JSON object; write one object per line")
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in value]
        if missing:
            problems.append(f"line {number}: missing column(s) {', '.join(missing)}; every "
                            f"object needs {', '.join(REQUIRED_COLUMNS)}")
            continue
        rows.append(_Row(f"line {number}", {
            k: "" if v is None else str(v).strip() for k, v in value.items()
        }))
    if problems:
        raise DatasetError(path, problems)
    return rows


def _tree_rows(root: Path) -> list[_Row]:
    splits = [root / s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DatasetError(root, [f"no {'/'.join(SPLITS)} folder under {root}; lay it out as "
                                  "ROOT/<split>/<real|fake>/<video> or pass a manifest"])
    rows: list[_Row] = []
    for split_dir in splits:
        for label in LABELS:
            label_dir = split_dir / label
            if not label_dir.is_dir():
                continue
            for item in sorted(label_dir.iterdir()):
                if item.name.startswith(".") or not (
                    item.is_dir() or item.suffix.lower() in VIDEO_SUFFIXES
                ):
                    continue
                if label == "real":
                    source = item.stem
                else:
                    head, sep, _ = item.stem.partition(SOURCE_SEPARATOR)
                    source = head if sep else ""
                rows.append(_Row(str(item.relative_to(root)), {
                    "path": str(item.relative_to(root)), "label": label,
                    "source_id": source, "split": split_dir.name,
                }))
    return rows


def _entry_id(path: Path, root: Path) -> str:
    try:
        relative = PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        relative = PurePosixPath(path.as_posix())
    return str(relative.with_suffix("")) if relative.suffix else str(relative)


def _media_problem(path: Path) -> str | None:
    if path.is_dir():
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return f"folder {path} holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        return None
    if not path.is_file():
        return f"{path} does not exist; fix the path (relative to the manifest's folder)"
    return None


def _validate(where: Path, root: Path, rows: Iterable[_Row]) -> Dataset:
    rows = list(rows)
    if not rows:
        raise DatasetError(where, ["the dataset is empty; add real and fake videos to it"])
    problems: list[str] = []
    entries: list[tuple[_Row, VideoEntry]] = []
    seen_paths: dict[Path, str] = {}
    seen_ids: dict[str, str] = {}
    for row in rows:
        values = row.values
        raw_path = values.get("path", "")
        label = values.get("label", "").lower()
        split = values.get("split", "").lower()
        if not raw_path:
            problems.append(f"{row.where}: empty path; give a video file or frame folder")
            continue
        path = Path(raw_path) if Path(raw_path).is_absolute() else root / raw_path
        if label not in LABELS:
            problems.append(f"{row.where}: unknown label {values.get('label')!r}; use real or fake")
        if split not in SPLITS:
            problems.append(f"{row.where}: unknown split {values.get('split')!r}; use "
                            f"{', '.join(SPLITS)}")
        media = _media_problem(path)
        if media:
            problems.append(f"{row.where}: {media}")
        resolved = path.resolve()
        if resolved in seen_paths:
            problems.append(f"{row.where}: duplicate path {raw_path} (first at "
                            f"{seen_paths[resolved]}); list each video once")
            continue
        seen_paths[resolved] = row.where
        entry_id = _entry_id(path, root)
        if entry_id in seen_ids:
            problems.append(f"{row.where}: id {entry_id!r} is already used at {seen_ids[entry_id]}"
                            " (same name, other suffix); rename one of them")
            continue
        seen_ids[entry_id] = row.where
        source = values.get("source_id", "")
        synthetic = values.get("synthetic", "").lower()
        if synthetic not in TRUE_WORDS | FALSE_WORDS:
            problems.append(f"{row.where}: synthetic is {values.get('synthetic')!r}; write 1 "
                            "(made by a generator) or 0 (camera footage), or leave it empty")
        if label == "real" and not source:
            source = entry_id
        if label in LABELS:  # kept for the source checks even when the row has other problems
            entries.append((row, VideoEntry(entry_id, path, label, source, split,
                                            values.get("manipulation", ""),
                                            synthetic in TRUE_WORDS)))
    problems += _source_problems(entries)
    if problems:
        raise DatasetError(where, problems)
    return Dataset(root, [entry for _, entry in entries])


def _source_problems(entries: list[tuple[_Row, VideoEntry]]) -> list[str]:
    """Real source ids must be unique; a fake's source must be a real of the same split."""
    problems: list[str] = []
    reals: dict[str, tuple[_Row, VideoEntry]] = {}
    for row, entry in entries:
        if entry.is_fake:
            continue
        if entry.source_id in reals:
            first = reals[entry.source_id][0].where
            problems.append(f"{row.where}: source_id {entry.source_id!r} is already the id of "
                            f"the real video at {first}; give each real video its own source_id")
        else:
            reals[entry.source_id] = (row, entry)
    for row, entry in entries:
        if not entry.is_fake or not entry.source_id:
            continue
        source = reals.get(entry.source_id)
        if source is None:
            problems.append(f"{row.where}: fake names source_id {entry.source_id!r}, which no "
                            "real video in the dataset has; add that real or fix the source_id")
        elif source[1].split != entry.split and {source[1].split, entry.split} <= set(SPLITS):
            problems.append(f"{row.where}: fake is in {entry.split} but its source real "
                            f"({source[0].where}) is in {source[1].split}, so the split leaks; "
                            "put a fake in its source's split")
    return problems
