"""``ptt-client talk``'s screen in a real terminal (tmux) at 80x24 and 200x50: every field visible without
scrolling, the floor shown as Alice presses and releases SPACE, resizing followed, key help on '?', logs in the
log file and never on the screen (issue 18). Real KMS, server and clients; audio on virtual PulseAudio devices."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import ROOT, System, start_system, stop_system
from tests.audio_harness import VirtualAudio
from tests.terminal import SOCKET, Terminal, open_talk, stop_server

pytestmark = pytest.mark.xdist_group("audio")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"))
    yield running
    stop_system(running)
    stop_server(SOCKET)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    with VirtualAudio(["alice", "bob"], tmp_path_factory.mktemp("pulse")) as virtual:
        yield virtual


def assert_fits(terminal: Terminal, user: str) -> list[str]:
    """Every field on the screen, the header on the first line (nothing scrolled), no line wider than the screen."""
    lines = terminal.screen()
    assert len(lines) == terminal.height and all(len(line) <= terminal.width for line in lines), lines
    assert lines[0].startswith(f" PTT  {user}@example.org  [connected]  keys to "), lines[0]
    text = "\n".join(lines)
    for field in ("group", "floor", "talking", "alert", "fire", "mic [", "dB", "audio running", "PTT SPACE",
                  "in: default", "out: default", "── events", "? help · q quit"):  # fmt: skip
        assert field in text, (field, text)
    assert "WARNING" not in text and "Traceback" not in text, text  # logs go to the log file
    return lines


def row(lines: list[str], group: str = "fire") -> str:
    return next(line for line in lines if f"  {group} " in line)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50)])
def test_the_screen_fits_and_follows_the_floor(system: System, audio: VirtualAudio, width: int, height: int) -> None:
    alice = open_talk(system, audio, "alice", width, height)
    bob = open_talk(system, audio, "bob", width, height)
    try:
        for terminal, user in ((alice, "alice"), (bob, "bob")):
            terminal.until(lambda text: "audio running" in text, what="audio running")
            assert "idle" in row(assert_fits(terminal, user))
        alice.keys("Space")  # a tap: talk until the next tap
        alice.until(lambda text: "TALKING" in row(text.split("\n")), what="Alice talking")
        assert "you" in row(alice.screen())
        bob.until(lambda text: "taken" in row(text.split("\n")) and "alice" in row(text.split("\n")).split())
        assert "alice@example.org talks" in bob.text()  # in the event log too
        assert_fits(alice, "alice")
        assert_fits(bob, "bob")
        alice.keys("Space")
        bob.until(lambda text: "idle" in row(text.split("\n")) and "fire: floor idle" in text.split("events")[1])
        alice.until(lambda text: "idle" in row(text.split("\n")), what="Alice's floor idle")
        alice.keys("?")
        help_screen = alice.until(lambda text: "── keys" in text, what="the key help")
        assert "imminent peril" in help_screen and "broadcast" in help_screen and "quit" in help_screen
        alice.keys("x")  # any key closes it
        alice.until(lambda text: "── events" in text, what="the events again")
        alice.resize(120, 30) if width == 80 else alice.resize(81, 24)
        # the clock ends the header at the right edge (capture-pane drops the one trailing space)
        alice.until(lambda text: len(text.split("\n")[0]) == alice.width - 1, what="the header across the new width")
        assert_fits(alice, "alice")
        alice.keys("q")
        assert alice.exit_status() == 0
        log = (system.root / "alice.log").read_text()
        assert "ptt.client.app INFO connected" in log  # the log file got the logs
    finally:
        alice.stop()
        bob.stop()


def test_stderr_goes_to_the_log_file_while_the_screen_is_up(tmp_path: Path) -> None:
    """PortAudio and ALSA write to file descriptor 2 from C: while the screen is up that is the log file."""
    code = (
        "import os, sys, pathlib; from client.tui import LogToFile\n"
        "logs = LogToFile(pathlib.Path(sys.argv[1]))\n"
        "os.write(2, b'ALSA lib pcm.c: underrun occurred\\n')\n"
        "logs.restore()\n"
        "os.write(2, b'after the screen\\n')\n"
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "client.log")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "underrun" in (tmp_path / "client.log").read_text() and "underrun" not in done.stderr
    assert done.stderr == "after the screen\n"
