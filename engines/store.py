"""The model store: where weights live, how they are fetched, and the checksums that vouch for them.

Lookup order for a known artifact: ``$DFSTREAM_WEIGHTS_DIR`` (read-only, e.g. a mounted volume or
the repository's shared weights), then the store at ``$DFSTREAM_HOME`` (default: the user cache
dir). Every file is checked against its published sha256 before use; a file that does not match
is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_cache_dir


class StoreError(RuntimeError):
    """A weight file is missing, corrupt or cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class Artifact:
    """A file the store knows how to find, fetch and verify."""

    name: str
    filename: str
    sha256: str
    size: int | None
    description: str
    licence: str
    urls: tuple[str, ...] = ()
    manual_steps: str = ""
    aliases: tuple[str, ...] = field(default=())


ARTIFACTS: dict[str, Artifact] = {}


def register(artifact: Artifact) -> Artifact:
    ARTIFACTS[artifact.name] = artifact
    return artifact


def artifact(name: str) -> Artifact:
    try:
        return ARTIFACTS[name]
    except KeyError:
        known = ", ".join(sorted(ARTIFACTS)) or "none"
        raise StoreError(f"unknown model {name!r}; known models: {known}") from None


def home() -> Path:
    """The writable store directory."""
    configured = os.environ.get("DFSTREAM_HOME")
    return Path(configured) if configured else Path(user_cache_dir("dfstream"))


def search_dirs() -> list[Path]:
    dirs = []
    extra = os.environ.get("DFSTREAM_WEIGHTS_DIR")
    if extra:
        dirs.append(Path(extra))
    dirs.append(home() / "models")
    return dirs


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def locate(art: Artifact) -> Path | None:
    """The first candidate file of ``art`` on disk, unchecked; None when absent everywhere."""
    for directory in search_dirs():
        for filename in (art.filename, *art.aliases):
            candidate = directory / filename
            if candidate.is_file():
                return candidate
    return None


def verify_file(art: Artifact, path: Path) -> None:
    """Raise StoreError unless ``path`` has the artifact's published size and sha256."""
    if art.size is not None and path.stat().st_size != art.size:
        raise StoreError(
            f"{path} is {path.stat().st_size} bytes, but {art.name} is {art.size} bytes: "
            "the file is truncated or a different model; delete it and pull again"
        )
    actual = sha256_of(path)
    if actual != art.sha256:
        raise StoreError(
            f"{path} has sha256 {actual}, expected {art.sha256} for {art.name}: "
            "the file is corrupt or a different model; delete it and pull again"
        )


def resolve(name: str) -> Path:
    """The verified path of a known model, or a StoreError that says how to get it."""
    art = artifact(name)
    path = locate(art)
    if path is None:
        where = ", ".join(str(d) for d in search_dirs())
        raise StoreError(
            f"{art.name} is not installed (looked in {where}). "
            f"Run `dfstream models pull {art.name}`"
            + (f", or: {art.manual_steps}" if art.manual_steps else "")
        )
    verify_file(art, path)
    return path


ProgressCallback = Callable[[int, int | None], None]


def pull(name: str, progress: ProgressCallback | None = None, timeout_s: float = 30.0) -> Path:
    """Download a known model into the store and verify it; offline, say so and how to proceed."""
    art = artifact(name)
    existing = locate(art)
    if existing is not None:
        verify_file(art, existing)
        return existing
    if not art.urls:
        raise StoreError(f"{art.name} has no download address. {art.manual_steps}")
    target_dir = home() / "models"
    target_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in art.urls:
        tmp_path: Path | None = None
        try:
            with tempfile.NamedTemporaryFile(dir=target_dir, delete=False, suffix=".part") as tmp:
                tmp_path = Path(tmp.name)
                with urllib.request.urlopen(url, timeout=timeout_s) as response:
                    total = response.length
                    done = 0
                    while block := response.read(1 << 20):
                        tmp.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            verify_file(art, tmp_path)
            final = target_dir / art.filename
            shutil.move(tmp_path, final)
            return final
        except (urllib.error.URLError, OSError, StoreError) as exc:
            errors.append(f"{url}: {exc}")
            if tmp_path is not None:
                tmp_path.unlink(missing_ok=True)
    raise StoreError(
        f"could not download {art.name} (offline?):\n  " + "\n  ".join(errors)
        + f"\nManual steps: download it on a connected machine and copy it to "
        f"{target_dir / art.filename} (sha256 {art.sha256})."
        + (f" {art.manual_steps}" if art.manual_steps else "")
    )


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path | None
    ok: bool
    detail: str


def installed(check: bool = False) -> list[InstalledModel]:
    """Every known model with where it is; with ``check``, whether its checksum holds."""
    rows = []
    for art in sorted(ARTIFACTS.values(), key=lambda a: a.name):
        path = locate(art)
        if path is None:
            rows.append(InstalledModel(art.name, None, False, "not installed"))
            continue
        if not check:
            rows.append(InstalledModel(art.name, path, True, "present (not verified)"))
            continue
        try:
            verify_file(art, path)
            rows.append(InstalledModel(art.name, path, True, "sha256 ok"))
        except StoreError as exc:
            rows.append(InstalledModel(art.name, path, False, str(exc)))
    return rows
