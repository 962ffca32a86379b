"""The Hugging Face hub catalogue: the OpenAI CLIP towers and published LN-CLIP detectors that
``dfstream models pull`` fetches, and their download, checked against the sha256 the hub publishes.

Fetched files are converted (engines.checkpoints) and kept as self-describing safetensors: a base
tower under ``bases/``, a detector bundle under ``bundles/``, each carrying the sha256 of its own
tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engines.store import ProgressCallback, Registry, StoreError, sha256_of


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face hub repository."""

    repo_id: str
    filename: str
    revision: str = "main"
    size: int | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{self.filename}"


@dataclass(frozen=True)
class HubModel:
    """A base tower or a published detector that ``pull`` fetches from the hub and converts."""

    name: str
    kind: str
    """'base' (a CLIP vision tower) or 'detector' (converted into a bundle)."""
    arch: str
    weights: HubFile
    fmt: str
    """How engines.checkpoints reads the weights: 'hf-clip', 'gend' or 'lightning'."""
    description: str
    licence: str
    config: HubFile | None = None
    """A small JSON published beside the weights, checked before the big download."""
    base: str | None = None
    """For a detector: the base tower it was tuned from."""


HUB_MODELS: Registry[HubModel] = Registry("hub model")


HUB_MODELS.add(HubModel(
    name="clip-vit-l-14-openai",
    kind="base",
    arch="ViT-L-14",
    weights=HubFile("openai/clip-vit-large-patch14", "model.safetensors"),
    fmt="hf-clip",
    description="OpenAI CLIP ViT-L/14 vision tower: the detector's frozen base (1.2 GB kept)",
    licence="MIT",
))
HUB_MODELS.add(HubModel(
    name="clip-vit-b-16-openai",
    kind="base",
    arch="ViT-B-16",
    weights=HubFile("openai/clip-vit-base-patch16", "model.safetensors"),
    fmt="hf-clip",
    description="OpenAI CLIP ViT-B/16 vision tower: base of the smaller detector (0.35 GB kept)",
    licence="MIT",
))
HUB_MODELS.add(HubModel(
    name="gend-clip-l-14",
    kind="detector",
    arch="ViT-L-14",
    weights=HubFile("yermandy/GenD_CLIP_L_14", "model.safetensors", size=1_215_928_160),
    config=HubFile("yermandy/GenD_CLIP_L_14", "config.json"),
    fmt="gend",
    base="clip-vit-l-14-openai",
    description="GenD: LN-tuned CLIP ViT-L/14 detector (Yermakov et al.), kept as a 0.4 MB bundle",
    licence="see the model card of yermandy/GenD_CLIP_L_14",
))
HUB_MODELS.add(HubModel(
    name="ln-clip-l-14",
    kind="detector",
    arch="ViT-L-14",
    weights=HubFile("yermandy/deepfake-detection", "model.ckpt"),
    fmt="lightning",
    base="clip-vit-l-14-openai",
    description="LN-CLIP paper's detector (Lightning checkpoint), kept as a 0.4 MB bundle",
    licence="MIT",
))


def _progress_tqdm(progress: ProgressCallback | None) -> type | None:
    """A silent tqdm class that reports download progress to ``progress``."""
    if progress is None:
        return None
    report = progress
    from tqdm.auto import tqdm

    class _Reporting(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)  # type: ignore[call-overload]

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            total = int(self.total) if self.total else None
            report(self._done, total)
            return super().update(n)

    return _Reporting


def hub_manual_steps(file: HubFile, import_command: str) -> str:
    return (
        f"on a machine with internet access, download {file.url} "
        f"(or `hf download {file.repo_id} {file.filename} --local-dir DIR`), copy it here and "
        f"run `{import_command}`"
    )


def hub_download(
    file: HubFile,
    dest_dir: Path,
    import_command: str,
    progress: ProgressCallback | None = None,
    timeout_s: float = 10.0,
) -> tuple[Path, dict[str, str]]:
    """Download one hub file and check it against the sha256 the hub publishes for it.

    Returns the file and its provenance (repository, file, commit, sha256). Offline, the
    StoreError says so and gives the manual steps ending in ``import_command``.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    manual = hub_manual_steps(file, import_command)
    try:
        meta = get_hf_file_metadata(
            hf_hub_url(file.repo_id, file.filename, revision=file.revision), timeout=timeout_s
        )
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "cannot reach it"
        raise StoreError(
            f"could not reach the Hugging Face hub for {file.repo_id}/{file.filename} "
            f"(offline?): {type(exc).__name__}: {exc}\nManual steps: {manual}"
        ) from None
    revision = meta.commit_hash or file.revision
    try:
        path = Path(hf_hub_download(
            file.repo_id,
            file.filename,
            revision=revision,
            local_dir=dest_dir,
            etag_timeout=timeout_s,
            tqdm_class=_progress_tqdm(progress),
        ))
    except Exception as exc:
        raise StoreError(
            f"download of {file.url} failed: {type(exc).__name__}: {exc}\nManual steps: {manual}"
        ) from None
    if file.size is not None and path.stat().st_size != file.size:
        raise StoreError(
            f"{file.url} arrived with {path.stat().st_size} bytes, expected {file.size}"
        )
    actual = sha256_of(path)
    published = (meta.etag or "").strip('"').removeprefix("W/").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", published) and published != actual:
        path.unlink(missing_ok=True)
        raise StoreError(
            f"{file.url} has sha256 {actual}, but the hub publishes {published}: "
            "the download is corrupt; try again"
        )
    return path, {
        "repo": file.repo_id,
        "file": file.filename,
        "revision": revision,
        "sha256": actual,
        "sha256_checked_against_hub": str(bool(re.fullmatch(r"[0-9a-f]{64}", published))),
    }
