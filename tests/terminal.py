"""A real terminal for end-to-end tests of the talk screen: a tmux session on a private server (``-L``), its size
set, keys sent, the screen read back as text (``capture-pane``) and resized."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import System
    from tests.audio_harness import VirtualAudio

SOCKET = f"ptt-test-{os.getpid()}"


class Terminal:
    def __init__(self, socket: str, name: str, width: int, height: int) -> None:
        self.socket, self.name = socket, name
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self, command: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        """Run ``command`` in a new session of this size; the pane stays after it exits (its last words and exit
        status readable)."""
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        line = f'cd {shlex.quote(str(cwd))} && env -i {assignments} {shlex.join(command)}; echo "[exit $?]"; sleep 600'
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", self.name, "-x", str(self.width),
                  "-y", str(self.height), line)  # fmt: skip
        self.tmux("set-option", "-t", self.name, "window-size", "manual")

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", self.name).split("\n")[: self.height]

    def text(self) -> str:
        return "\n".join(self.screen())

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def until(self, condition: Callable[[str], bool], timeout: float = 20, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if condition(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {what or condition} on the screen within {timeout} s:\n{text}")

    def exit_status(self, timeout: float = 20) -> int:
        """The command's exit status, once it has ended."""
        text = self.until(lambda text: re.search(r"\[exit \d+\]", text) is not None, timeout, "exit status")
        found = re.search(r"\[exit (\d+)\]", text)
        assert found is not None
        return int(found.group(1))

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-session", "-t", self.name], capture_output=True, timeout=10)


def stop_server(socket: str) -> None:
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=10)


def open_talk(system: System, audio: VirtualAudio, user: str, width: int, height: int) -> Terminal:
    """``ptt-client talk`` for ``user`` in a terminal of this size, on the user's virtual audio devices."""
    from bench.harness import ROOT

    env = {k: v for k, v in audio.env(user).items() if k.startswith(("PULSE", "XDG_RUNTIME"))}
    env.update(
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        HOME=str(system.root),
        PYTHONPATH=str(ROOT),
        PTT_KEYSTORE_PASSPHRASE="keystore-passphrase",
        TERM="tmux-256color",
    )
    terminal = Terminal(SOCKET, f"{user}{width}", width, height)
    terminal.start(
        [sys.executable, "-m", "client.cli", "--keystore", str(system.root / f"{user}.ks"), "talk",
         "--server-info", str(system.root / "server.json"), "--log-file", str(system.root / f"{user}.log")],
        env, ROOT,
    )  # fmt: skip
    terminal.until(lambda text: "joined fire" in text, what="'joined fire'")
    return terminal
