"""Every mistake a field user makes with ``ptt-client`` ends in one line on stderr and a documented exit code, never
a traceback (issue 18). The real CLI as a subprocess, against a real KMS and group server where one is needed;
``client.toml`` alone is enough to talk."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import GROUP, ROOT, System, clean_env, start_system, stop_system
from client.errors import EXIT_CODES_HELP, Exit


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"), outsiders=("dave",))
    yield running
    stop_system(running)


def cli(*args: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if home is not None:  # no client.toml of the machine's user
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def refused(out: subprocess.CompletedProcess[str], code: Exit, *words: str) -> str:
    """The run ended with ``code`` and one line on stderr naming ``words``, and no traceback anywhere."""
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == code, (out.returncode, out.stderr)
    assert len(lines) == 1 and lines[0].startswith("ptt-client: "), out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def talk(system: System, user: str, *args: str, keystore: str | None = None) -> subprocess.CompletedProcess[str]:
    root = system.root
    return cli(
        "--keystore", keystore or str(root / f"{user}.ks"), "--passphrase-file", str(root / "ks.pw"),
        "talk", "--server-info", str(root / "server.json"), "--script", "wait 0.3", "--quiet", *args,
        home=root,
    )  # fmt: skip


def test_wrong_passphrase(system: System, tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not-the-passphrase\n")
    out = cli("--keystore", str(system.root / "alice.ks"), "--passphrase-file", str(tmp_path / "wrong"), "keys")
    refused(out, Exit.KEYSTORE, "wrong passphrase", "alice.ks")


def test_missing_keystore(system: System, tmp_path: Path) -> None:
    refused(talk(system, "alice", keystore=str(tmp_path / "none.ks")), Exit.KEYSTORE, "no keystore at", "provision")


def test_missing_server_info(system: System, tmp_path: Path) -> None:
    out = talk(system, "alice", "--server-info", str(tmp_path / "absent.json"))
    refused(out, Exit.SERVER_INFO, "cannot read the server info", "absent.json")


def test_malformed_server_info(system: System, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"host": ')
    refused(talk(system, "alice", "--server-info", str(tmp_path / "bad.json")), Exit.SERVER_INFO, "is not JSON")
    # the KMS's enrolment file where the server's info belongs: a common mix-up
    out = talk(system, "alice", "--server-info", str(system.root / "enrol.json"))
    refused(out, Exit.SERVER_INFO, "is no server info", "ptt-server client-info")


def test_uri_the_keystore_does_not_hold(system: System) -> None:
    out = talk(system, "alice", "--uri", "sip:bob@example.org")
    refused(out, Exit.KEYSTORE, "holds keys for sip:alice@example.org, not for sip:bob@example.org")


def test_unknown_group_and_not_a_member_are_told_apart(system: System) -> None:
    out = talk(system, "alice", "--group", "sip:nothing@example.org")
    refused(out, Exit.REFUSED, "no group sip:nothing@example.org")
    out = talk(system, "dave", "--group", GROUP)
    refused(out, Exit.REFUSED, "sip:dave@example.org is not a member of", GROUP)
    refused(talk(system, "dave"), Exit.REFUSED, "in no group")  # no --group: every group of one's own


def test_client_toml_is_enough_and_its_mistakes_name_the_line(system: System, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(
        f'keystore = "{system.root / "alice.ks"}"\npassphrase_file = "{system.root / "ks.pw"}"\n'
        f'server_info = "{system.root / "server.json"}"\ngroup = "{GROUP}"\n'
    )
    out = cli("--config", str(config), "talk", "--script", "wait 0.3", "--quiet", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"connected as sip:alice@example.org; groups: {GROUP}" in out.stdout  # the identity from the keystore
    # XDG_CONFIG_HOME is where it is found without --config
    (tmp_path / ".config" / "ptt").mkdir(parents=True)
    config.rename(tmp_path / ".config" / "ptt" / "client.toml")
    assert cli("talk", "--script", "wait 0.3", "--quiet", home=tmp_path).returncode == 0
    # the command line wins over the file
    out = cli("talk", "--group", "sip:nothing@example.org", "--script", "wait 0.3", home=tmp_path)
    refused(out, Exit.REFUSED, "no group sip:nothing@example.org")
    broken = tmp_path / "broken.toml"
    broken.write_text('uri = "sip:alice@example.org"\ngroup = sip:fire\n')
    refused(cli("--config", str(broken), "talk", home=tmp_path), Exit.USAGE, "broken.toml", "line 2")
    broken.write_text('uri = "sip:alice@example.org"\n\nspeaker = "USB"\n')
    refused(cli("--config", str(broken), "talk", home=tmp_path), Exit.USAGE, "broken.toml:3", "unknown setting")
    refused(cli("--config", str(tmp_path / "absent.toml"), "keys", home=tmp_path), Exit.USAGE, "absent.toml")


def test_a_new_keystore_passphrase_is_asked_twice(system: System, tmp_path: Path) -> None:
    pid, terminal = pty.fork()
    if pid == 0:  # the CLI on a terminal: getpass prompts there
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "client.cli", "--keystore", str(tmp_path / "new.ks"),
                  "provision", "--enrolment", str(system.root / "enrol.json"), "--user", "alice",
                  "--uri", "sip:alice@example.org"], clean_env())  # fmt: skip
    seen = b""

    def until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen and time.monotonic() < deadline:
            seen += os.read(terminal, 1024)
        assert text in seen, seen

    until(b"New keystore passphrase: ")
    os.write(terminal, b"first-passphrase\n")
    until(b"New keystore passphrase again: ")
    os.write(terminal, b"second-passphrase\n")
    _, status = os.waitpid(pid, 0)
    with pytest.raises(OSError):
        while chunk := os.read(terminal, 1024):
            seen += chunk
    assert os.waitstatus_to_exitcode(status) == Exit.USAGE, seen
    assert b"the two new keystore passphrases differ" in seen and b"Traceback" not in seen
    assert not (tmp_path / "new.ks").exists()


def test_adhoc_errors_are_one_line(system: System, tmp_path: Path) -> None:
    socket = str(tmp_path / "none.sock")
    out = cli("--keystore", str(system.root / "alice.ks"), "adhoc", "--control-socket", socket, "list")
    refused(out, Exit.UNREACHABLE, "no ad-hoc client running")
    out = cli(
        "--keystore", str(system.root / "alice.ks"), "--passphrase-file", str(system.root / "ks.pw"), "adhoc",
        "--control-socket", socket, "join", "--no-audio", "--interface", "127.0.0.1", "--script", "wait-keyed 0.5",
        home=system.root,
    )  # fmt: skip
    refused(out, Exit.FAILED, "not keyed after 0.5 s")


def test_exit_codes_are_documented() -> None:
    out = cli("--help")
    assert out.returncode == 0 and EXIT_CODES_HELP in out.stdout
    for code in Exit:
        assert f"\n  {int(code):<4} " in EXIT_CODES_HELP
    readme = (ROOT / "README.md").read_text()
    assert all(f"| {int(code)} |" in readme for code in Exit)
    refused(cli("talk", "--ptt-key", "nonsense"), Exit.USAGE, "DEVICE:KEY")
