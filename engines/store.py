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


# --- RetinaFace face detectors (biubug6/Pytorch_Retinaface layout, MIT) --------------------------

register(Artifact(
    name="retinaface-mobilenet0.25",
    filename="retinaface_mobilenet0.25.pth",
    sha256="ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1",
    size=1_789_735,
    description="RetinaFace face detector, MobileNet-0.25 backbone (433k values); "
    "WIDER FACE val AP 90.70/88.16/73.82 (easy/medium/hard)",
    licence="MIT",
    manual_steps=(
        "copy retinaface_mobilenet0.25.pth (sha256 ed6fa7d4...19e1, 1,789,735 bytes) from the "
        "team's weights share into $DFSTREAM_HOME/models/, or point DFSTREAM_WEIGHTS_DIR at the "
        "folder that holds it. The upstream file mobilenet0.25_Final.pth of biubug6/"
        "Pytorch_Retinaface (mirrored at https://github.com/elliottzheng/face-detection/releases/"
        "download/0.0.1/mobilenet0.25_Final.pth, published sha256 2979b33ffafda5d74b6948cd7a5b9a7"
        "a62f62b949cef24e95fd15d2883a65220) is a different byte stream of the same size; to run "
        "it, set faces.weights to its path and faces.weights_sha256 to pin it."
    ),
))

register(Artifact(
    name="retinaface-resnet50",
    filename="retinaface_resnet50.pth",
    sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    size=109_497_761,
    description="RetinaFace face detector, ResNet-50 backbone (27M values); "
    "WIDER FACE val AP 95.48/94.04/84.43 (easy/medium/hard)",
    licence="MIT",
    urls=(
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
        "detection_Resnet50_Final.pth",
        "https://github.com/clibdev/Pytorch_Retinaface/releases/latest/download/"
        "retinaface-resnet-50.pth",
    ),
    manual_steps=(
        "download biubug6's Resnet50_Final.pth (the same bytes are published as facexlib's "
        "detection_Resnet50_Final.pth) on a connected machine and copy it to "
        "$DFSTREAM_HOME/models/retinaface_resnet50.pth; any of its published names is found too."
    ),
    aliases=("Resnet50_Final.pth", "detection_Resnet50_Final.pth", "retinaface-resnet-50.pth"),
))


# --- CLIP base weights and detector bundles ------------------------------------------------------
# The OpenAI CLIP towers and the published LN-CLIP detectors live on the Hugging Face hub, which
# publishes their sha256; they are fetched with huggingface_hub, checked against that sha256,
# converted (engines/checkpoints.py) and kept as self-describing safetensors: a base tower under
# ``bases/``, a detector bundle under ``bundles/``, each carrying the sha256 of its own tensors.

BASES_SUBDIR = "bases"
BUNDLES_SUBDIR = "bundles"
ENGINES_SUBDIR = "engines"
STORE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


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


HUB_MODELS: dict[str, HubModel] = {}


def register_hub_model(model: HubModel) -> HubModel:
    HUB_MODELS[model.name] = model
    return model


def hub_model(name: str) -> HubModel:
    try:
        return HUB_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(HUB_MODELS)) or "none"
        raise StoreError(f"unknown hub model {name!r}; known: {known}") from None


register_hub_model(HubModel(
    name="clip-vit-l-14-openai",
    kind="base",
    arch="ViT-L-14",
    weights=HubFile("openai/clip-vit-large-patch14", "model.safetensors"),
    fmt="hf-clip",
    description="OpenAI CLIP ViT-L/14 vision tower: the detector's frozen base (1.2 GB kept)",
    licence="MIT",
))
register_hub_model(HubModel(
    name="clip-vit-b-16-openai",
    kind="base",
    arch="ViT-B-16",
    weights=HubFile("openai/clip-vit-base-patch16", "model.safetensors"),
    fmt="hf-clip",
    description="OpenAI CLIP ViT-B/16 vision tower: base of the smaller detector (0.35 GB kept)",
    licence="MIT",
))
register_hub_model(HubModel(
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
register_hub_model(HubModel(
    name="ln-clip-l-14",
    kind="detector",
    arch="ViT-L-14",
    weights=HubFile("yermandy/deepfake-detection", "model.ckpt"),
    fmt="lightning",
    base="clip-vit-l-14-openai",
    description="LN-CLIP paper's detector (Lightning checkpoint), kept as a 0.4 MB bundle",
    licence="MIT",
))


def check_store_name(name: str) -> str:
    """Names become file names: refuse anything that could leave the store directory."""
    import re

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
    target = home() / "models" / subdir
    target.mkdir(parents=True, exist_ok=True)
    return target


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
    import re

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
