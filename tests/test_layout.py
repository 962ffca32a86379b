"""The import rules that keep the layout simple (docs/architecture.md): models know nothing of
streams, and sources know nothing of analysis, Redis or HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        hits = sorted(
            name for name in imports_of(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_engines_never_import_stream() -> None:
    assert offenders("engines", ("stream",)) == {}


def test_sources_never_import_analysis_redis_or_http() -> None:
    forbidden = ("stream.analysis", "stream.pipeline", "stream.publish", "stream.service",
                 "stream.api", "stream.redis_contract", "redis", "fastapi", "uvicorn", "httpx")
    assert offenders("stream/sources", forbidden) == {}


@pytest.mark.parametrize("package", ["stream", "engines"])
def test_no_product_module_grows_past_the_size_of_one_concept(package: str) -> None:
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text().splitlines())
        for path in (REPO / package).rglob("*.py")
    }
    assert {name: lines for name, lines in sizes.items() if lines > 600} == {}
