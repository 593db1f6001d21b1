"""The import rules of ARCHITECTURE.md: the core does no I/O and depends on no service code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_CORE = {
    "twisted",
    "socket",
    "asyncio",
    "threading",
    "multiprocessing",
    "subprocess",
    "concurrent",
    "select",
    "selectors",
    "server",
    "client",
    "sounddevice",
    "time",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "ptt").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_has_no_io_imports(path: Path) -> None:
    assert not _imports(path) & FORBIDDEN_IN_CORE


@pytest.mark.parametrize(("package", "other"), [("server", "client"), ("client", "server")])
def test_server_and_client_do_not_import_each_other(package: str, other: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert other not in _imports(path), path
