"""The model store: where its files live, the sha256 that vouches for a file, and the registry
shape shared by the catalogues of known models (engines.artifacts, engines.hub).

Lookup order: the read-only ``weights_dir`` (e.g. a mounted volume or the repository's shared
weights), then ``<home>/models`` (home defaults to the user cache dir). The locations are values
set by one explicit ``configure`` call: the command line makes it once from the settings
(stream.config.configure_store), so engines never read the process environment for them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from platformdirs import user_cache_dir

from engines.errors import UserError

BASES_SUBDIR = "bases"
BUNDLES_SUBDIR = "bundles"
ENGINES_SUBDIR = "engines"
STORE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

ProgressCallback = Callable[[int, int | None], None]
"""(bytes done, bytes total or None)."""


class StoreError(UserError, RuntimeError):
    """A weight file is missing, corrupt or cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class StoreLocations:
    """Where the store reads and writes: ``home/models`` (writable) after ``weights_dir``."""

    home: Path
    weights_dir: Path | None = None

    @property
    def models(self) -> Path:
        """The writable directory every installed file goes to."""
        return self.home / "models"

    def search_dirs(self) -> list[Path]:
        return [*([self.weights_dir] if self.weights_dir is not None else []), self.models]


def default_home() -> Path:
    return Path(user_cache_dir("dfstream"))


_locations = StoreLocations(default_home())


def configure(home: Path | None = None, weights_dir: Path | None = None) -> StoreLocations:
    """Point the store at ``home`` (None: the user cache dir) and an optional read-only
    ``weights_dir`` searched first; returns the previous locations (so a caller can restore)."""
    global _locations
    previous = _locations
    _locations = StoreLocations(
        Path(home) if home is not None else default_home(),
        Path(weights_dir) if weights_dir is not None else None,
    )
    return previous


def locations() -> StoreLocations:
    return _locations


def home() -> Path:
    """The writable store directory."""
    return _locations.home


def search_dirs() -> list[Path]:
    return _locations.search_dirs()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_store_name(name: str) -> str:
    """Names become file names: refuse anything that could leave the store directory."""
    if not re.match(STORE_NAME_PATTERN, name):
        raise StoreError(
            f"invalid name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    return name


def find_in_store(subdir: str, name: str) -> Path | None:
    """``<dir>/<subdir>/<name>.safetensors`` in the first search dir that has it."""
    check_store_name(name)
    for directory in search_dirs():
        candidate = directory / subdir / f"{name}.safetensors"
        if candidate.is_file():
            return candidate
    return None


def store_files(subdir: str) -> list[Path]:
    """Every ``*.safetensors`` under ``subdir`` of the search dirs; earlier dirs shadow later."""
    seen: dict[str, Path] = {}
    for directory in search_dirs():
        folder = directory / subdir
        if folder.is_dir():
            for path in sorted(folder.glob("*.safetensors")):
                seen.setdefault(path.stem, path)
    return [seen[name] for name in sorted(seen)]


def writable_dir(subdir: str) -> Path:
    target = _locations.models / subdir
    target.mkdir(parents=True, exist_ok=True)
    return target


class Named(Protocol):
    @property
    def name(self) -> str: ...


EntryT = TypeVar("EntryT", bound=Named)


class Registry(dict[str, EntryT], Generic[EntryT]):
    """Known entries by name. One shape for every catalogue, so that an unknown name fails the
    same way everywhere: a StoreError that lists the known ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, entry: EntryT) -> EntryT:
        self[entry.name] = entry
        return entry

    def lookup(self, name: str) -> EntryT:
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self)) or "none"
            raise StoreError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None
