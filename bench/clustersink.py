"""The receive side of ``bench.clusterload``'s members in C: ``bench/sink.c``, compiled with ``gcc -O2`` at run time
(as ``bench.relay`` compiles ``bench/forwarder.c``) and started as a child process that inherits every member's UDP
socket (``pass_fds``). Python keeps the sockets for sending (joins, keepalives, floor control, RTP) but stops
reading them; the sink reads them all (epoll, recvmmsg), counts the RTP copies and passes RTCP (floor control,
second octet 192..223) back over a pipe as ``[member index u32][length u16][datagram]`` frames, which
:class:`Sink` reads in the reactor and hands to the member's ``datagramReceived``. So a received copy costs the
generator a few hundred nanoseconds of C instead of a pass through Twisted.

``sink.count()`` asks for the counters (``count`` on the sink's stdin); the answer comes as a frame after every
RTCP frame received before it.

:func:`drop_rtp_in_kernel` goes further: a socket filter (classic BPF) drops the RTP copies in the kernel, where
they are counted in the socket's ``drops`` (/proc/net/udp, :func:`udp_drops`) without ever being queued or read;
only RTCP reaches the sink. A copy then costs the generator nothing: the kernel's delivery up to the socket is paid
in the sending relay's system call on loopback, as it would be on any host."""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer

from bench.cchild import CChild, compile_c

__all__ = ["Sink", "compile_sink", "drop_rtp_in_kernel", "udp_drops"]

COUNT_INDEX = 0xFFFFFFFF
_HEADER = struct.Struct("!IH")
_COUNTS = struct.Struct("!QQ")


def compile_sink(directory: Path) -> Path:
    return compile_c("sink", directory)


_SO_ATTACH_FILTER = 26
_RTP_FILTER = b"".join(
    struct.pack("HBBI", *instruction)
    for instruction in (
        (0x30, 0, 0, 9),  # ldb [9]: the datagram's second octet (the filter sees it from the 8-octet UDP header)
        (0x35, 0, 2, 192),  # jge #192, else drop
        (0x25, 1, 0, 223),  # jgt #223 -> drop
        (0x06, 0, 0, 0xFFFFFFFF),  # 192..223: RTCP (RFC 5761), kept
        (0x06, 0, 0, 0),  # anything else (RTP): dropped and counted in the socket's drops
    )
)


def drop_rtp_in_kernel(sock: socket.socket) -> None:
    """Attach the filter that keeps only RTCP: the RTP copies the member gets are counted in its socket's drops."""
    program = ctypes.create_string_buffer(_RTP_FILTER)  # the kernel copies it during setsockopt
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", len(_RTP_FILTER) // 8,
                                                                      ctypes.addressof(program)))  # fmt: skip


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped at the IPv4 UDP sockets bound to ``ports`` so far (receive buffer full, or
    refused by a socket filter): the ``drops`` column of /proc/net/udp."""
    total = 0
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) in ports:
                total += int(fields[-1])
    return total


class Sink(CChild):
    """The running sink: ``fds[i]`` is member ``i``'s socket, ``deliver(i, datagram)`` gets its RTCP."""

    name = "sink"
    read_size = 1 << 16

    def __init__(self, reactor: Any, binary: Path, fds: Sequence[int], deliver: Callable[[int, bytes], None]) -> None:
        super().__init__(reactor, binary, fds)
        self.deliver = deliver
        self._buffer = bytearray()
        self.frames = 0

    def count(self) -> defer.Deferred[tuple[int, int]]:
        """(RTP datagrams received, RTCP datagrams passed on) so far."""
        return self._ask("count")

    def received(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            index, length = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + length
            if end > len(buffer):
                break
            body = bytes(buffer[offset + _HEADER.size : end])
            offset = end
            if index == COUNT_INDEX:
                if self._waiting:
                    self._waiting.popleft().callback(_COUNTS.unpack(body))
            else:
                self.frames += 1
                self.deliver(index, body)
        del buffer[:offset]
