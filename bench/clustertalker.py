"""The send side of ``bench.clusterload``'s talkers in C: ``bench/talker.c``, compiled with ``gcc -O2`` at run time
(as ``bench.clustersink`` compiles ``bench/sink.c``) and started as a child process that inherits every member's
UDP socket (``pass_fds``). Python keeps the floor control: when a member's request is granted it tells the talker
``start`` (the member, its SSRC, the rate and its relay's address), at the release ``stop``; the talker sends the
RTP from the member's own socket (the relay forwards only what comes from the floor holder's bound address), a
tick's packets in one GSO ``sendmsg``. So the generator's CPU no longer grows with the media it offers, and on a
2-core machine the nodes can have the cores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer

from bench.cchild import CChild, compile_c

__all__ = ["Talker", "compile_talker"]


def compile_talker(directory: Path) -> Path:
    return compile_c("talker", directory)


class Talker(CChild):
    """The running talker: ``fds[i]`` is member ``i``'s socket."""

    name = "talker"

    def __init__(self, reactor: Any, binary: Path, fds: Sequence[int]) -> None:
        super().__init__(reactor, binary, fds)
        self._buffer = b""
        self.calls = 0  # system calls that sent the RTP so far (as of the last count)
        self.gso = True  # whether the kernel took GSO batches (as of the last count)

    def start(self, index: int, ssrc: int, rate: float, relay: tuple[str, int]) -> None:
        self._send(f"start {index} {ssrc} {rate:g} {relay[0]} {relay[1]}")

    def stop_member(self, index: int) -> None:
        self._send(f"stop {index}")

    def count(self) -> defer.Deferred[int]:
        """RTP datagrams sent so far."""
        return self._ask("count")

    def received(self, chunk: bytes) -> None:
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for line in lines:
            word, *values = line.decode().split()
            if word == "count" and self._waiting:
                self.calls, self.gso = int(values[1]), values[2] == "1"
                self._waiting.popleft().callback(int(values[0]))
