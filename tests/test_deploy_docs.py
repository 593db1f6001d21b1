"""The deployment docs and units stay true to the command lines: every ``ptt-server``/``ptt-kms``/``ptt-dispatch``
option written in ``deploy/*.md`` and the unit files exists in the argparse parser of the subcommand it is given to,
and every unit file parses (sections, keys) and starts an existing subcommand."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from server.cli import build_parser as server_parser
from server.dispatch.cli import _parser as dispatch_parser
from server.kms.cli import _parser as kms_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PARSERS = {"ptt-server": server_parser, "ptt-kms": kms_parser, "ptt-dispatch": dispatch_parser}
# A program name used as a command (alone or as …/bin/NAME): not part of a unit name, a URI (sip:ptt-server@…) or a
# path (/var/lib/ptt-kms).
COMMAND = re.compile(r"(?:(?<=bin/)|(?<![\w@:./-]))(ptt-server|ptt-kms|ptt-dispatch)(?![\w@./-])")
UNIT_SECTIONS = {"Unit", "Service", "Install"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _joined(text: str) -> str:
    """Continued lines joined: ``\\`` at a line's end, in Markdown code and in unit-file comments (``#   ...``)."""
    return re.sub(r"\\\n#?\s*", " ", text)


def commands(text: str) -> list[list[str]]:
    """Every command line of the three programs in ``text``: the words after the program's name, up to the end of
    the line, a backtick, a shell separator or a closing parenthesis."""
    found = []
    for line in _joined(text).splitlines():
        end = 0
        for match in COMMAND.finditer(line):
            if match.start() < end:
                continue  # an argument of the command before (the KMS account named ptt-server)
            rest = re.split(r"`|;|&&|\|\||\||\)|\s#\s", line[match.end() :])[0]
            end = match.end() + len(rest)
            found.append([match.group(1), *rest.split()])
    return found


def check_command(words: list[str]) -> list[str]:
    """What is wrong with one command line (empty: every option exists where it is given)."""
    program, *args = words
    parser = PARSERS[program]()
    allowed = _options(parser)
    path = [program]
    problems = []
    for word in args:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option not in allowed and option != "--help":
                problems.append(f"{' '.join(path)}: no option {option} (in: {' '.join(words)})")
        elif not word.startswith("-"):
            sub = _subparsers(parser)
            if word in sub:
                parser = sub[word]
                allowed |= _options(parser)  # the top level's options (--data) come before, but stay harmless
                path.append(word)
    return problems


def deploy_texts() -> list[Path]:
    return sorted([*DEPLOY.glob("*.md"), *DEPLOY.glob("*.service")])


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: sections of keys with their values (a key may repeat); ``ValueError`` if malformed."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(_joined_unit(text).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()):
            raise ValueError(f"line {number}: not KEY=VALUE in a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _joined_unit(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
    return re.sub(r"\\\n", " ", "\n".join(lines))


def test_the_scanner_finds_commands_and_skips_names() -> None:
    text = (
        "`ptt-server --data d init --node n` and sip:ptt-server@example.org, ptt-server@.service, ptt-kms.service\n"
        "ptt-kms --data /k user add ptt-server --service \\\n    --secret-out F; /var/lib/ptt-kms/kms.sqlite3\n"
        "/opt/ptt/.venv/bin/ptt-dispatch --server s --user a group list\n"
    )
    assert commands(text) == [
        ["ptt-server", "--data", "d", "init", "--node", "n"],
        ["ptt-kms", "--data", "/k", "user", "add", "ptt-server", "--service", "--secret-out", "F"],
        ["ptt-dispatch", "--server", "s", "--user", "a", "group", "list"],
    ]
    assert check_command(["ptt-server", "--data", "d", "init", "--node", "n"]) == []
    assert check_command(["ptt-server", "--data", "d", "client-info", "--node", "n"])  # --node is init's
    assert check_command(["ptt-kms", "init", "--no-such-option"])


@pytest.mark.parametrize("path", deploy_texts(), ids=lambda p: p.name)
def test_every_option_in_the_deploy_docs_exists(path: Path) -> None:
    found = commands(path.read_text())
    problems = [problem for words in found for problem in check_command(words)]
    assert not problems, "\n".join(problems)


def test_the_multi_host_guide_uses_the_cluster_options() -> None:
    found = commands((DEPLOY / "MULTI-HOST.md").read_text())
    inits = [words for words in found if words[0] == "ptt-server" and "init" in words]
    used = {word.split("=", 1)[0] for words in inits for word in words if word.startswith("--")}
    assert {"--database", "--node", "--data-key", "--listen", "--public-name"} <= used
    assert any(words[0] == "ptt-kms" and "init" in words and "--public-name" in words for words in found)


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.service")), ids=lambda p: p.name)
def test_every_unit_file_parses_and_starts_a_subcommand(path: Path) -> None:
    unit = parse_unit(path.read_text())
    assert set(unit) == UNIT_SECTIONS
    service = unit["Service"]
    assert len(service["ExecStart"]) == 1
    words = service["ExecStart"][0].split()
    program = Path(words[0]).name
    assert words[0].startswith("/") and program in PARSERS
    assert check_command([program, *words[1:]]) == []
    parser = PARSERS[program]()
    args = parser.parse_args([w.replace("%i", "node1") for w in words[1:]])
    assert args.command == "serve"
    assert service["User"] == ["ptt"] and service["NoNewPrivileges"] == ["true"]
    assert service["ProtectSystem"] == ["strict"] and service["PrivateTmp"] == ["true"]
    data = words[words.index("--data") + 1]
    assert data in service["ReadWritePaths"], "the data directory must be writable under ProtectSystem=strict"
    templated = path.name.endswith("@.service")
    assert ("%i" in data) == templated
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
