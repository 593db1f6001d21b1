"""The import rules of ARCHITECTURE.md ("Who may import what").

- The core (``ptt/``) does no I/O and depends on no service code: each of its modules imports only the standard
  library modules listed below (none of which opens files or sockets, starts threads or processes, or reads the
  clock), the third-party libraries listed below (each where it is needed, with the reason), and ``ptt`` itself.
  An allow-list, not a deny-list: a new dependency must be added here, with its reason, on purpose.
- ``client/`` never imports ``server/``; ``server/`` imports from ``client/`` only the KMS client library and the
  client TLS contexts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted((ROOT / "ptt").rglob("*.py"))

# Standard library modules the core may import: codecs, arithmetic, data structures, hashing and randomness.
STDLIB_ALLOWED = {
    "__future__": "annotations",
    "abc": "abstract base classes",
    "base64": "base64 codecs (control frames, XML signature values)",
    "binascii": "its codec error (binascii.Error)",
    "bisect": "sorted sequences",
    "collections": "deque, OrderedDict, defaultdict (jitter buffer, replay caches, rate limits)",
    "collections.abc": "abstract container types for annotations",
    "contextlib": "suppress and other context helpers (no I/O of their own)",
    "dataclasses": "messages, events and records",
    "datetime": "TS 33.180 XML times: parsing, formatting, arithmetic (never now(): the time is passed in)",
    "enum": "protocol constants",
    "functools": "caches of precomputed tables",
    "hashlib": "SHA-256 in KDFs, identifiers and replay caches",
    "heapq": "timer queues",
    "hmac": "HMAC-SHA-256 and compare_digest",
    "ipaddress": "parsing and packing addresses in ad-hoc announcements (no lookups)",
    "itertools": "iteration helpers",
    "json": "control channel and enrolment codecs (strings in and out)",
    "logging": "diagnostic records; the processes configure where they go (the core never sets up handlers)",
    "math": "arithmetic",
    "operator": "functional helpers",
    "os": "os.urandom only (random keys, salts, RANDs, SSRCs): see RESTRICTED",
    "re": "validation of URIs, names and XML values",
    "secrets": "random scalars (ECCSI, KMS secrets)",
    "struct": "fixed-width binary fields (RTP, control frames)",
    "types": "type helpers",
    "typing": "annotations",
}

# Attributes of an allowed module the core may use, where the rest of the module does I/O.
RESTRICTED = {"os": {"urandom"}}

# Third-party libraries the core needs, and where: (path prefixes under ptt/, reason).
THIRD_PARTY_ALLOWED = {
    "gmpy2": (("ptt/crypto/",), "GMP big integers for the SAKKE/ECCSI field, curve and pairing arithmetic"),
    "cryptography": (
        ("ptt/",),
        "AES-GCM (key parameters, sealed blobs), scrypt (sealed blobs), P-256 keys and X.509 (XML signatures)",
    ),
    "lxml": (("ptt/kmsformat/",), "the hardened parser of TS 33.180 Annex D XML and c14n for its signatures"),
    "signxml": (("ptt/kmsformat/",), "XML-DSig signing and verification of KMS responses (ECDSA-SHA256, exc-c14n)"),
    "pylibsrtp": (("ptt/srtp.py", "ptt/srtcp.py"), "libsrtp: SRTP/SRTCP protect and unprotect (AEAD and AES-CM)"),
}

# Submodules reachable as ``from <allowed> import <name>`` that do I/O.
_KNOWN_IO_SUBMODULES = {"os.path", "logging.handlers", "logging.config", "json.tool"}

# Built-ins that do I/O or run code from strings; the core never calls them.
FORBIDDEN_BUILTINS = {"open", "print", "input", "breakpoint", "exec", "eval", "compile", "__import__"}
# Methods that read the wall clock (datetime.now, date.today, ...): the core takes ``now`` as an argument.
CLOCK_METHODS = {"now", "utcnow", "today"}


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _third_party_allowed(name: str, module: str) -> bool:
    top = name.split(".")[0]
    if top not in THIRD_PARTY_ALLOWED:
        return False
    prefixes, _ = THIRD_PARTY_ALLOWED[top]
    return any(module.startswith(p) for p in prefixes)


def _allowed(name: str, module: str) -> bool:
    return name in STDLIB_ALLOWED or name == "ptt" or name.startswith("ptt.") or _third_party_allowed(name, module)


def core_violations(module: str, source: str) -> list[str]:
    """Everything in the core module ``module`` (e.g. 'ptt/srtp.py') with text ``source`` that breaks the rules,
    each as 'module:line: what'."""
    tree = ast.parse(source, filename=module)
    problems: list[str] = []
    aliases: dict[str, str] = {}  # local name -> restricted module it stands for

    def bad(node: ast.AST, what: str) -> None:
        problems.append(f"{module}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _allowed(alias.name, module):
                    bad(node, f"imports {alias.name}, which is not on the core's allow-list")
                if alias.name in RESTRICTED:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not _allowed(node.module, module):
                bad(node, f"imports {node.module}, which is not on the core's allow-list")
            for alias in node.names:
                if node.module in RESTRICTED and alias.name not in RESTRICTED[node.module]:
                    bad(node, f"imports {node.module}.{alias.name}; only {sorted(RESTRICTED[node.module])} of it")
                # ``from cryptography import x509`` is fine, but ``from os import path`` is a module of its own
                if node.module in STDLIB_ALLOWED and f"{node.module}.{alias.name}" in _KNOWN_IO_SUBMODULES:
                    bad(node, f"imports {node.module}.{alias.name}, which does I/O")
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_BUILTINS:
                bad(node, f"calls {node.func.id}()")
            elif isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_METHODS:
                bad(node, f"reads the wall clock (.{node.func.attr}()); take `now` as an argument")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            restricted = aliases[node.value.id]
            if node.attr not in RESTRICTED[restricted]:
                bad(node, f"uses {restricted}.{node.attr}; only {sorted(RESTRICTED[restricted])} of {restricted}")
    return problems


@pytest.mark.parametrize("path", CORE_MODULES, ids=_relative)
def test_core_imports_only_the_allow_list(path: Path) -> None:
    problems = core_violations(_relative(path), path.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import socket", "imports socket"),
        ("import time", "imports time"),
        ("from twisted.internet import reactor", "imports twisted.internet"),
        ("import server.kms.store", "imports server.kms.store"),
        ("from client import keystore", "imports client"),
        ("import os.path", "imports os.path"),
        ("import os\nos.listdir('.')", "uses os.listdir"),
        ("import os as o\no.environ", "uses os.environ"),
        ("from os import getpid", "imports os.getpid"),
        ("from logging import handlers", "imports logging.handlers"),
        ("import pylibsrtp", "imports pylibsrtp"),  # allowed in ptt/srtp.py and ptt/srtcp.py only
        ("import lxml.etree", "imports lxml.etree"),  # ptt/kmsformat/ only
        ("import numpy", "imports numpy"),
        ("open('keys')", "calls open()"),
        ("print('x')", "calls print()"),
        ("from datetime import datetime\ndatetime.now()", "reads the wall clock"),
    ],
)
def test_the_rule_catches(source: str, expected: str) -> None:
    """The checker itself: each of these, in a core module, is reported with the module, the line and the import."""
    problems = core_violations("ptt/probe.py", source + "\n")
    assert len(problems) == 1 and expected in problems[0] and problems[0].startswith("ptt/probe.py:"), problems


def test_the_rule_allows_what_the_core_needs() -> None:
    kmsformat = "import os\nfrom os import urandom\nimport lxml.etree\nfrom signxml.signer import XMLSigner\n"
    assert core_violations("ptt/kmsformat/probe.py", kmsformat) == []
    srtp = "import pylibsrtp\nfrom cryptography.hazmat.primitives.ciphers.aead import AESGCM\nfrom . import rtp\n"
    assert core_violations("ptt/srtp.py", srtp) == []


def test_each_allowed_third_party_library_is_used() -> None:
    """The list stays honest: a library the core no longer needs is taken off it."""
    used: set[str] = set()
    for path in CORE_MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                used.add(node.module.split(".")[0])
    assert set(THIRD_PARTY_ALLOWED) <= used, set(THIRD_PARTY_ALLOWED) - used


# --- client/ and server/ ---


def _full_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# The group server is itself a KMS client: it may use the client's KMS provisioning library, and the client TLS
# contexts (pinned certificates; ptt-dispatch's HTTPS client), nothing else.
SERVER_MAY_IMPORT_FROM_CLIENT = {"client.keystore", "client.provisioning", "client.tls", "client.history"}


def test_client_does_not_import_server() -> None:
    for path in (ROOT / "client").rglob("*.py"):
        assert not any(n == "server" or n.startswith("server.") for n in _full_imports(path)), path


def test_server_imports_only_the_kms_client_library_from_client() -> None:
    for path in (ROOT / "server").rglob("*.py"):
        used = {n for n in _full_imports(path) if n == "client" or n.startswith("client.")}
        assert used <= SERVER_MAY_IMPORT_FROM_CLIENT, (path, used)
