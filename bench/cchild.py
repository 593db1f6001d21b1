"""A C helper process of the cluster load generator (``bench.clustersink``, ``bench.clustertalker``): compiled with
``gcc -O2`` at run time, started with every member's UDP socket inherited (``pass_fds``), told what to do by lines
on its stdin and read in the reactor (its stdout is an ``IReadDescriptor``); ``quit`` ends it."""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer

from bench.harness import ROOT

__all__ = ["CChild", "compile_c"]


def compile_c(name: str, directory: Path) -> Path:
    """``bench/NAME.c`` compiled to ``directory/NAME``."""
    binary = directory / name
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / f"{name}.c")], check=True)
    return binary


class CChild:
    """The running process; a subclass parses what it writes (``received``) and answers ``_waiting`` in order."""

    name = "child"
    read_size = 4096

    def __init__(self, reactor: Any, binary: Path, fds: Sequence[int]) -> None:
        self.reactor = reactor
        self.process = subprocess.Popen(
            [str(binary), *(str(fd) for fd in fds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._commands = self.process.stdin
        self._fd = self.process.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._waiting: deque[defer.Deferred[Any]] = deque()
        reactor.addReader(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _send(self, line: str) -> None:
        self._commands.write(line.encode() + b"\n")
        self._commands.flush()

    def _ask(self, line: str) -> defer.Deferred[Any]:
        """Send ``line``; the Deferred fires with the answer the subclass takes from the output."""
        waiting: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(waiting)
        self._send(line)
        return waiting

    def received(self, chunk: bytes) -> None:
        raise NotImplementedError

    # the reactor's IReadDescriptor
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        try:
            chunk = os.read(self._fd, self.read_size)
        except BlockingIOError:
            return
        if chunk:
            self.received(chunk)
            return
        self.reactor.removeReader(self)
        while self._waiting:
            self._waiting.popleft().errback(RuntimeError(f"the {self.name} exited ({self.process.poll()})"))

    def connectionLost(self, reason: Any) -> None:
        pass

    def stop(self) -> None:
        self.reactor.removeReader(self)
        if self.process.poll() is None:
            try:
                self._send("quit")
                self._commands.close()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]
