"""The relay's batched receive/send path on Linux (IPv4): recvmmsg/sendmmsg through ctypes.

When the socket is readable, :class:`BatchedPort` drains up to :data:`BATCH` datagrams with one ``recvmmsg`` and
sends all copies of each with one ``sendmmsg``. The kernel's per-datagram work is the same; what it saves is
the Python and system-call overhead of one ``sendto`` per copy (``bench.relay`` measures both against a C
forwarder).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import udp

from ptt.relaycore import Address

if TYPE_CHECKING:
    from server.relay import RelayProtocol

log = logging.getLogger("ptt.server.relay")

MAX_DATAGRAM = 2048
"""Largest datagram relayed (SRTP media and floor control are far below a 1500-octet MTU); larger are dropped."""

BATCH = 64
"""Datagrams drained per ``recvmmsg``."""


# -- the batched Linux path -----------------------------------------------------------------------------------


class IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    """``struct mmsghdr`` of recvmmsg(2)/sendmmsg(2)."""

    _fields_ = (("hdr", MsgHdr), ("len", ctypes.c_uint))


MMSG_SIZE = ctypes.sizeof(MMsgHdr)
SOCKADDR_IN_SIZE = 16
MSG_TRUNC = 0x20
MSG_DONTWAIT = 0x40
_MSG_LEN_OFFSET = MMsgHdr.len.offset
_MSG_FLAGS_OFFSET = MsgHdr.flags.offset


def _load_mmsg() -> tuple[Any, Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


MMSG = _load_mmsg()
"""(recvmmsg, sendmmsg) from libc, or None where they are not available."""


def batched_available() -> bool:
    return MMSG is not None


def sockaddr_in(addr: Address) -> bytes:
    """``struct sockaddr_in`` for an IPv4 (host, port)."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", addr[1], socket.inet_aton(addr[0]))


class FanoutTemplate:
    """One ``sendmmsg`` array for a fan-out list: a header and a sockaddr per destination, every header's
    iovec pointing at one shared iovec that is aimed at the datagram before each call."""

    __slots__ = ("buffer", "count", "pointer", "targets")

    def __init__(self, targets: list[Address], shared_iov: int) -> None:
        count = len(targets)
        names_at = count * MMSG_SIZE
        buffer = ctypes.create_string_buffer(names_at + count * SOCKADDR_IN_SIZE)
        base = ctypes.addressof(buffer)
        for k, target in enumerate(targets):
            header = MMsgHdr.from_buffer(buffer, k * MMSG_SIZE)
            header.hdr.name = base + names_at + k * SOCKADDR_IN_SIZE
            header.hdr.namelen = SOCKADDR_IN_SIZE
            header.hdr.iov = shared_iov
            header.hdr.iovlen = 1
            ctypes.memmove(base + names_at + k * SOCKADDR_IN_SIZE, sockaddr_in(target), SOCKADDR_IN_SIZE)
        self.targets = targets  # kept so that id(targets) cannot be reused while this template is cached
        self.buffer = buffer
        self.pointer = base
        self.count = count


class BatchedPort(udp.Port):
    """A Twisted UDP port that drains its socket with recvmmsg and fans out with sendmmsg (Linux, IPv4).

    Only used with a :class:`RelayProtocol`: it calls the core directly and hands RTCP to the protocol.
    """

    max_batches = 16
    """Batches per wakeup, so one busy socket cannot starve the reactor's other work (Twisted's own UDP port
    stops after 256 KiB for the same reason)."""

    max_templates = 4096

    def __init__(self, port: int, proto: RelayProtocol, interface: str, reactor: Any) -> None:
        if MMSG is None:
            raise RuntimeError("recvmmsg/sendmmsg are not available")
        super().__init__(port, proto, interface, MAX_DATAGRAM, reactor)
        self.relay = proto
        self._recvmmsg, self._sendmmsg = MMSG
        self._data = ctypes.create_string_buffer(BATCH * MAX_DATAGRAM)
        self._names = ctypes.create_string_buffer(BATCH * SOCKADDR_IN_SIZE)
        self._iovs = (IoVec * BATCH)()
        self._msgs = (MMsgHdr * BATCH)()
        data_at, names_at = ctypes.addressof(self._data), ctypes.addressof(self._names)
        for i in range(BATCH):
            self._iovs[i].base = data_at + i * MAX_DATAGRAM
            self._iovs[i].len = MAX_DATAGRAM
            header = self._msgs[i].hdr
            header.name = names_at + i * SOCKADDR_IN_SIZE
            header.namelen = SOCKADDR_IN_SIZE
            header.iov = ctypes.addressof(self._iovs[i])
            header.iovlen = 1
        self._shared_iov = IoVec()
        self._templates: dict[int, FanoutTemplate] = {}
        self._addresses: dict[int, Address] = {}

    def doRead(self) -> None:
        fd = self.socket.fileno()
        recvmmsg, sendmmsg = self._recvmmsg, self._sendmmsg
        relay, core = self.relay, self.relay.core
        route, stats, seconds = core.route, core.stats, relay._seconds
        msgs_at = ctypes.addressof(self._msgs)
        # Fixed views on the receive area: reading lengths, flags and sender addresses costs no ctypes calls.
        words = memoryview(self._msgs).cast("B").cast("I")
        data = memoryview(self._data).cast("B")
        name_words = memoryview(self._names).cast("B").cast("I")
        name_shorts = memoryview(self._names).cast("B").cast("H")
        len_index, flags_index = _MSG_LEN_OFFSET // 4, _MSG_FLAGS_OFFSET // 4
        stride = MMSG_SIZE // 4
        shared = self._shared_iov
        templates, addresses = self._templates, self._addresses
        data_at = ctypes.addressof(self._data)
        for _ in range(self.max_batches):
            count = recvmmsg(fd, msgs_at, BATCH, MSG_DONTWAIT, None)
            if count <= 0:
                if count < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    log.warning("recvmmsg: %s", errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
                return
            now = seconds()
            for i in range(count):
                try:
                    length = words[i * stride + len_index]
                    if words[i * stride + flags_index] & MSG_TRUNC:
                        stats["dropped_malformed"] += 1
                        continue
                    # sockaddr_in: family, port (network order), IPv4 address: one int names the sender.
                    key = name_words[i * 4 + 1] << 16 | name_shorts[i * 8 + 1]
                    addr = addresses.get(key)
                    if addr is None:
                        addr = self._address(key)
                    start = i * MAX_DATAGRAM
                    datagram = bytes(data[start : start + length])
                    if length > 1 and 192 <= datagram[1] <= 223:
                        relay.rtcp_received(datagram, addr, now)
                        continue
                    targets = route(datagram, addr, now)
                    if not targets:
                        continue
                    template = templates.get(id(targets))
                    if template is None or template.targets is not targets:
                        template = self._template(targets)
                    shared.base = data_at + start
                    shared.len = length
                    sent = sendmmsg(fd, template.pointer, template.count, 0)
                    if sent != template.count:
                        self._send_rest(fd, template, sent)
                except Exception:
                    log.exception("relay: datagram from the batch not handled")
            if count < BATCH:
                return

    def _address(self, key: int) -> Address:
        packed = struct.pack("=I", key >> 16)
        port = struct.unpack("!H", struct.pack("=H", key & 0xFFFF))[0]
        addr = (socket.inet_ntoa(packed), port)
        if len(self._addresses) >= 65536:  # senders come and go: keep the cache bounded
            self._addresses.clear()
        self._addresses[key] = addr
        return addr

    def _template(self, targets: list[Address]) -> FanoutTemplate:
        if len(self._templates) >= self.max_templates:  # old fan-out lists (membership changed) pile up
            self._templates.clear()
        template = FanoutTemplate(targets, ctypes.addressof(self._shared_iov))
        self._templates[id(targets)] = template
        return template

    def _send_rest(self, fd: int, template: FanoutTemplate, sent: int) -> None:
        """sendmmsg stopped early: the message after the ``sent`` ones failed. Skip it, send the others."""
        done = max(sent, 0)
        while done < template.count:
            if sent <= 0:  # the message at ``done`` failed
                self.relay.send_errors += 1
                done += 1
                if done >= template.count:
                    return
            sent = self._sendmmsg(fd, template.pointer + done * MMSG_SIZE, template.count - done, 0)
            if sent > 0:
                done += sent
