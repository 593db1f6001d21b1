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


def _full_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# The group server is itself a KMS client: it may use the client's KMS provisioning library, nothing else.
SERVER_MAY_IMPORT_FROM_CLIENT = {"client.keystore", "client.provisioning", "client.tls"}


def test_client_does_not_import_server() -> None:
    for path in (ROOT / "client").rglob("*.py"):
        assert not any(n == "server" or n.startswith("server.") for n in _full_imports(path)), path


def test_server_imports_only_the_kms_client_library_from_client() -> None:
    for path in (ROOT / "server").rglob("*.py"):
        used = {n for n in _full_imports(path) if n == "client" or n.startswith("client.")}
        assert used <= SERVER_MAY_IMPORT_FROM_CLIENT, (path, used)
