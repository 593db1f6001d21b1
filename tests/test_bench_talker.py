"""The cluster benchmark's C children (``bench.cchild``): the talker (``bench/talker.c``) sends well-formed RTP from
the member's own socket, with its SSRC, at the rate asked, only between ``start`` and ``stop``, and counts what it
sent; the sink (``bench/sink.c``) counts RTP and hands RTCP back."""

from __future__ import annotations

import select
import shutil
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from bench.clustersink import Sink, compile_sink
from bench.clustertalker import Talker, compile_talker

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


class _NoReactor:
    """The talker only registers its stdout; the test reads it itself."""

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass


def _count(talker: Talker) -> int:
    answer = talker.count()
    result: list[int] = []
    answer.addCallback(result.append)
    deadline = time.monotonic() + 5
    while not result and time.monotonic() < deadline:
        if select.select([talker.fileno()], [], [], 0.5)[0]:
            talker.doRead()
    assert result, "the talker did not answer count"
    return result[0]


def _drain(sock: socket.socket, quiet: float = 0.2) -> list[bytes]:
    packets = []
    while select.select([sock], [], [], quiet)[0]:
        packets.append(sock.recv(4096))
    return packets


def test_talker_sends_rtp_from_the_member_socket_between_start_and_stop(tmp_path: Path) -> None:
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    members = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for member in members:
        member.bind(("127.0.0.1", 0))
    talker = Talker(_NoReactor(), compile_talker(tmp_path), [m.fileno() for m in members])
    try:
        assert _count(talker) == 0
        talker.start(1, 0xDEADBEEF, 200.0, relay.getsockname())
        time.sleep(0.5)
        talker.stop_member(1)
        sent = _count(talker)
        packets: list[tuple[bytes, Any]] = []
        while select.select([relay], [], [], 0.2)[0]:
            packets.append(relay.recvfrom(4096))
        assert len(packets) == sent
        assert talker.calls < sent / 2  # batches: ~4 packets per call at 200/s and a 20-ms tick
        assert 80 <= sent <= 125  # 200/s for ~0.5 s (the first at once, then per 20-ms tick)
        assert {addr for _, addr in packets} == {members[1].getsockname()}  # the member's own bound socket
        seqs = []
        for data, _ in packets:
            version, payload_type, seq, _, ssrc = struct.unpack_from("!BBHII", data)
            assert (version, payload_type, ssrc, len(data)) == (0x80, 111, 0xDEADBEEF, 182)
            seqs.append(seq)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        time.sleep(0.1)
        assert _drain(relay) == []  # stopped: nothing more
        assert _count(talker) == sent
    finally:
        talker.stop()
        for sock in (relay, *members):
            sock.close()


def test_sink_counts_rtp_and_passes_rtcp_to_the_member(tmp_path: Path) -> None:
    """The receive side (``bench/sink.c``, the same ``bench.cchild`` plumbing): RTP copies are counted, RTCP
    (second octet 192..223) comes back framed with the member's index, and the count answers after it."""
    members = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for member in members:
        member.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    delivered: list[tuple[int, bytes]] = []
    fds = [m.fileno() for m in members]
    sink = Sink(_NoReactor(), compile_sink(tmp_path), fds, lambda index, data: delivered.append((index, data)))
    try:
        rtp = struct.pack("!BBHII", 0x80, 111, 1, 0, 7) + bytes(20)
        rtcp = bytes([0x80, 204]) + struct.pack("!H", 2) + b"MCPT" + bytes(4)
        for _ in range(3):
            sender.sendto(rtp, members[0].getsockname())
        sender.sendto(rtcp, members[1].getsockname())
        time.sleep(0.2)
        answer = sink.count()
        counts: list[tuple[int, int]] = []
        answer.addCallback(counts.append)
        deadline = time.monotonic() + 5
        while not counts and time.monotonic() < deadline:
            if select.select([sink.fileno()], [], [], 0.5)[0]:
                sink.doRead()
        assert counts == [(3, 1)]
        assert delivered == [(1, rtcp)] and sink.frames == 1
    finally:
        sink.stop()
        for sock in (sender, *members):
            sock.close()
    assert sink.process.poll() is not None  # "quit" ended it
