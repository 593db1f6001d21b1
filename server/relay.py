"""The media relay's UDP shell: datagrams in, :class:`ptt.relaycore.RelayCore` decides, copies out.

Two receive/send paths run the same core:

* the portable one: Twisted's UDP port reads one datagram at a time and :meth:`RelayProtocol.datagramReceived`
  sends each copy with the socket's own ``sendto`` (``transport.write`` would re-validate the address on every
  call, which costs more than the forwarding decision);
* on Linux, for IPv4, a batched one (:class:`server.relay_batched.BatchedPort`, recvmmsg/sendmmsg).

A :class:`~twisted.internet.task.LoopingCall` runs :meth:`RelayCore.sweep` ten times a second over a tenth of the
members each time (one pass over 60 000 members takes ~15 ms: forwarding would stop that long every second) and
reports members that stopped sending keepalives. Refused ``PTTJ`` packets (forged, replayed, or claiming an address
another member is bound to) and binding moves are logged here, at most about one line a second per member (the core
counts each).

``python -m server.relay --port N [--interface A]`` runs a bare relay (no control plane: nothing can bind
to it); the real wiring creates the core, listens with :func:`listen_relay` and feeds ``expect``/``set_talker``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from ptt.ratelimit import BucketTable
from ptt.recording import Burst
from ptt.relaycore import Address, Binding, RelayConfig, RelayCore, RtcpResult
from server.relay_batched import (  # the batched path's names, re-exported for bench.relay and tests
    BATCH,
    MAX_DATAGRAM,
    MMSG,
    MSG_DONTWAIT,
    BatchedPort,
    IoVec,
    MMsgHdr,
    MsgHdr,
    batched_available,
)

__all__ = [
    "BATCH",
    "MAX_DATAGRAM",
    "MMSG",
    "MSG_DONTWAIT",
    "BatchedPort",
    "IoVec",
    "MMsgHdr",
    "MsgHdr",
    "RelayProtocol",
    "batched_available",
    "listen_relay",
    "relay_core_from_environment",
]

log = logging.getLogger("ptt.server.relay")

RECEIVE_BUFFER = 4 << 20
"""SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max, and warns once here if it did): with ~1 KiB of
kernel memory per small datagram, 4 MiB holds ~100 ms at 40 000 datagrams/s. On this 2-core VM the relay (and the
C forwarder alike) is held up for 70-100 ms now and then while its core is not busy; 1 MiB lost copies then at
30 000 in/s with the relay's core 70 % used (`bench/RESULTS-relay.md`)."""

SWEEP_INTERVAL = 0.1
SWEEP_SHARE = 0.1
"""Every member is looked at once a second, in ten slices (see the module docstring)."""

FloorCallback = Callable[[Binding, bytes, Address], None]
DeadCallback = Callable[[list[Binding]], None]
JoinedCallback = Callable[[Binding, Address], None]
BurstsCallback = Callable[[list[Burst]], None]


class RelayProtocol(DatagramProtocol):
    """Connects one UDP port to a :class:`RelayCore`; floor control, joins and deaths go to the callbacks."""

    def __init__(
        self,
        core: RelayCore,
        clock: Any,
        on_floor: FloorCallback,
        on_dead: DeadCallback,
        on_joined: JoinedCallback | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.on_floor = on_floor
        self.on_dead = on_dead
        self.on_joined = on_joined
        self.on_bursts: BurstsCallback | None = None  # recorded bursts, drained at each sweep (server.recorder)
        self.send_errors = 0
        self._seconds: Callable[[], float] = clock.seconds
        self._sendto: Callable[[bytes, Address], int] | None = None
        self._sweeper: LoopingCall | None = None
        # per member and kind (one key for packets naming no known binding): ~1 log line a second, bursts of 5
        self._log_limit: BucketTable[str] = BucketTable(1.0, 5, capacity=1024)

    def startProtocol(self) -> None:
        transport: Any = self.transport
        self._sendto = transport.socket.sendto
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopProtocol(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self._sendto = None

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        if len(data) > MAX_DATAGRAM:  # the port reads MAX_DATAGRAM + 1: this one was truncated
            self.core.stats["dropped_malformed"] += 1
            return
        now = self._seconds()
        if len(data) > 1 and 192 <= data[1] <= 223:
            self.rtcp_received(data, addr, now)
            return
        targets = self.core.route(data, addr, now)
        if targets:
            sendto = self._sendto
            assert sendto is not None
            for target in targets:
                try:  # free when nothing is raised (CPython 3.11+); a bad address costs only its own copy
                    sendto(data, target)
                except OSError:
                    self.send_errors += 1

    def rtcp_received(self, data: bytes, addr: Address, now: float) -> None:
        """RTCP (RFC 5761 demultiplexed): joins and floor control go to the callbacks."""
        result = self.core.handle_rtcp(data, addr, now)
        if result.kind == "floor":
            assert result.binding is not None
            self._call(self.on_floor, result.binding, result.data, addr)
        elif result.kind == "joined" and self.on_joined is not None:
            assert result.binding is not None
            self._call(self.on_joined, result.binding, addr)
        elif result.kind in ("refused", "moved"):
            self._log_binding(result, addr, now)

    def _log_binding(self, result: RtcpResult, addr: Address, now: float) -> None:
        binding = result.binding
        key = f"{result.kind} {binding.group} {binding.member}" if binding is not None else result.kind
        if not self._log_limit.take(key, now):
            return
        if result.kind == "moved":
            assert binding is not None
            log.info("%s in %s moved its binding to %s:%d", binding.member, binding.group, addr[0], addr[1])
        elif binding is not None:
            log.warning(
                "PTTJ from %s:%d for %s in %s refused: %s",
                addr[0],
                addr[1],
                binding.member,
                binding.group,
                result.reason,
            )
        else:
            log.warning("PTTJ from %s:%d refused: %s", addr[0], addr[1], result.reason)

    def send(self, data: bytes, addr: Address) -> None:
        """Send a datagram from the relay's port (floor control replies from the server)."""
        if self._sendto is None:
            raise RuntimeError("the relay is not listening")
        try:
            self._sendto(data, addr)
        except OSError as exc:
            self.send_errors += 1
            log.debug("send to %s failed: %s", addr, exc)

    def _sweep(self) -> None:
        dead = self.core.sweep(self._seconds(), SWEEP_SHARE)
        if dead:
            self._call(self.on_dead, dead)
        self.drain_bursts()

    def drain_bursts(self) -> None:
        """Hand the completed recorded bursts to ``on_bursts`` (dropped if nothing stores them)."""
        tap = self.core.tap
        if tap.completed:
            bursts, tap.completed = tap.completed, []
            if self.on_bursts is not None:
                self._call(self.on_bursts, bursts)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        # A failing callback must not stop the relay from reading its socket.
        try:
            callback(*args)
        except Exception:
            log.exception("relay callback %r failed", callback)


class LossyRelayCore(RelayCore):
    """For loss tests only (PTT_RELAY_TEST_LOSS=0.05): drops that fraction of forwarded media, seeded."""

    def __init__(self, loss: float, seed: int = 1) -> None:
        import random

        super().__init__()
        self.loss = loss
        self._random = random.Random(seed).random

    def route(self, data: bytes, addr: Address, now: float) -> list[Address] | None:
        targets = super().route(data, addr, now)
        if targets and self._random() < self.loss:
            self.stats["dropped_test_loss"] = self.stats.get("dropped_test_loss", 0) + 1
            return None
        return targets


def relay_core_from_environment(environ: Mapping[str, str]) -> RelayCore:
    """The relay core, or for loss tests a lossy one (``PTT_RELAY_TEST_LOSS``)."""
    loss = float(environ.get("PTT_RELAY_TEST_LOSS", "0") or 0)
    if loss > 0:
        log.warning("relay drops %.1f %% of media on purpose (PTT_RELAY_TEST_LOSS)", loss * 100)
        return LossyRelayCore(loss)
    return RelayCore()


def listen_relay(
    reactor: Any,
    core: RelayCore,
    port: int,
    interface: str = "127.0.0.1",
    *,
    on_floor: FloorCallback,
    on_dead: DeadCallback,
    on_joined: JoinedCallback | None = None,
    batched: bool | None = None,
    receive_buffer: int = RECEIVE_BUFFER,
) -> tuple[RelayProtocol, IListeningPort]:
    """Listen for media on ``interface:port``. ``batched``: None uses recvmmsg/sendmmsg where available
    (Linux, IPv4), True insists on it, False keeps Twisted's portable one-datagram-at-a-time path."""
    protocol = RelayProtocol(core, reactor, on_floor, on_dead, on_joined)
    ipv4 = ":" not in interface
    if batched is None:
        batched = ipv4 and batched_available()
    elif batched and not (ipv4 and batched_available()):
        raise RuntimeError("the batched relay path needs Linux and an IPv4 interface")
    listening: Any
    if batched:
        listening = BatchedPort(port, protocol, interface, reactor)
        listening.startListening()
    else:
        listening = reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=MAX_DATAGRAM + 1)
    try:
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        granted = listening.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.warning("cannot set SO_RCVBUF: %s", exc)
    else:
        if sys.platform.startswith("linux") and granted // 2 < receive_buffer:  # Linux reports twice what it grants
            log.warning(
                "the relay's receive buffer is %d KiB, not the %d KiB asked for: raise net.core.rmem_max "
                "(deploy/MULTI-HOST.md), or bursts and stalls lose media",
                granted // 2048,
                receive_buffer // 1024,
            )
    return protocol, listening


def main(argv: list[str] | None = None) -> int:
    """Run a relay with no control plane (for trying the port out; ``bench.relay`` drives a populated one)."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--portable", action="store_true", help="no recvmmsg/sendmmsg")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    core = RelayCore(RelayConfig())
    listening: Any
    _, listening = listen_relay(
        reactor,
        core,
        args.port,
        args.interface,
        on_floor=lambda binding, data, addr: log.info("floor from %s (%d octets)", binding.member, len(data)),
        on_dead=lambda dead: log.info("dead: %s", ", ".join(f"{b.group}/{b.member}" for b in dead)),
        batched=False if args.portable else None,
    )
    log.info("relay on %s:%d", args.interface, listening.getHost().port)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
