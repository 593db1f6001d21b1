"""The send side of ``bench.clusterload``'s talkers in C: ``bench/talker.c``, compiled with ``gcc -O2`` at run time
(as ``bench.clustersink`` compiles ``bench/sink.c``) and started as a child process that inherits every member's
UDP socket (``pass_fds``). Python keeps the floor control: when a member's request is granted it tells the talker
``start`` (the member, its SSRC, the rate and its relay's address), at the release ``stop``; the talker sends the
RTP from the member's own socket (the relay forwards only what comes from the floor holder's bound address), a
tick's packets in one GSO ``sendmsg``. So the generator's CPU no longer grows with the media it offers, and on a
2-core machine the nodes can have the cores."""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer

from bench.harness import ROOT

__all__ = ["Talker", "compile_talker"]

SOURCE = ROOT / "bench" / "talker.c"


def compile_talker(directory: Path) -> Path:
    binary = directory / "talker"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return binary


class Talker:
    """The running talker: ``fds[i]`` is member ``i``'s socket."""

    def __init__(self, reactor: Any, binary: Path, fds: Sequence[int]) -> None:
        self.reactor = reactor
        self.process = subprocess.Popen(
            [str(binary), *(str(fd) for fd in fds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._commands = self.process.stdin
        self._fd = self.process.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""
        self._waiting: deque[defer.Deferred[int]] = deque()
        self.calls = 0  # system calls that sent the RTP so far (as of the last count)
        self.gso = True  # whether the kernel took GSO batches (as of the last count)
        reactor.addReader(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _send(self, line: str) -> None:
        self._commands.write(line.encode() + b"\n")
        self._commands.flush()

    def start(self, index: int, ssrc: int, rate: float, relay: tuple[str, int]) -> None:
        self._send(f"start {index} {ssrc} {rate:g} {relay[0]} {relay[1]}")

    def stop_member(self, index: int) -> None:
        self._send(f"stop {index}")

    def count(self) -> defer.Deferred[int]:
        """RTP datagrams sent so far."""
        waiting: defer.Deferred[int] = defer.Deferred()
        self._waiting.append(waiting)
        self._send("count")
        return waiting

    # the reactor's IReadDescriptor
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "talker"

    def doRead(self) -> None:
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        if not chunk:
            self.reactor.removeReader(self)
            while self._waiting:
                self._waiting.popleft().errback(RuntimeError(f"the talker exited ({self.process.poll()})"))
            return
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for line in lines:
            word, *values = line.decode().split()
            if word == "count" and self._waiting:
                self.calls, self.gso = int(values[1]), values[2] == "1"
                self._waiting.popleft().callback(int(values[0]))

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
