"""Our safetensors files (base towers and bundles): the tensors' identity digest, atomic writes,
and the JSON metadata header that makes each file self-describing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engines.checkpoints.errors import CheckpointError

FORMAT_VERSION = "1"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors as float32, by sorted name: the same weights in any file format
    (HF, open_clip, ours; fp16 or fp32 on disk) give the same digest."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name].detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}:{list(array.shape)}:<f4\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def as_stored(tensor: torch.Tensor) -> torch.Tensor:
    """float32, contiguous, owning its storage (safetensors refuses views into shared memory)."""
    out = tensor.detach().to("cpu", torch.float32).contiguous()
    if out.untyped_storage().nbytes() != out.numel() * out.element_size():
        out = out.clone()
    return out


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write through a temporary file beside ``path``, so a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_metadata(path: Path, expected_format: str) -> dict[str, str]:
    """The metadata header of one of our files, refused unless its format and version are ours."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != expected_format:
        raise CheckpointError(
            f"{path} is not a {expected_format} file (format {metadata.get('format')!r})"
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {metadata.get('version')!r}; this dfstream reads "
            f"version {FORMAT_VERSION}"
        )
    return metadata


def json_field(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    """A JSON-valued metadata entry; a missing or malformed one names the file."""
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata {key!r} missing or not JSON ({exc})") from None


def utc_now() -> str:
    """The creation time written into a file's metadata (UTC, ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
