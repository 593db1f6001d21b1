"""The load generator of ``bench.cluster``: many group members in ONE process against several server nodes.

Like ``bench.loadgen``, members need no KMS round trip: their ECCSI keys are issued here from the bench KMS's master
secrets, and every CSK I_MESSAGE is built before anything connects. Member ``k`` of group ``g`` is
``sip:m{g*size+k}@example.org``; members are spread round-robin over the nodes client-info lists (``nodes``), as
real clients would spread, and their TCP connections come from several loopback addresses (127.0.1.x, 200 members
each), since the server limits logins per address. Each member: TLS control connection, ECCSI login, CSK, ``join``
of its group, then its own UDP socket bound at the relay the ``joined`` reply names (authenticated ``PTTJ``,
``ptt.relaycore.JoinSigner``), with a keepalive every 5 s. Logins run ``--concurrency`` at a time (the server
verifies at most 512 at once); a refused or failed member is retried twice.

Receiving: once ``setup`` has bound every member, each member socket gets a socket filter that drops RTP in the
kernel (``bench.clustersink.drop_rtp_in_kernel``): the copies are counted in the socket's ``drops``
(/proc/net/udp) and never read. Python stops reading the sockets and hands them to a C child process, the sink
(``bench/sink.c``, ``bench.clustersink``: compiled with gcc at start, the sockets passed with ``pass_fds``), which
passes the RTCP (floor control) back over a pipe, tagged with the member's index; the reactor hands it to that
member's ``MemberSocket.datagramReceived``. So a received copy costs the generator nothing and the machine is left
to the nodes. Python still sends everything (joins, keepalives, floor control, RTP) on the same sockets.
``received`` in the ``load`` report is the copies the member sockets got (their filter's count, plus any the
sink or Python read).

Talking: in each of the first GROUPS groups one member at a time presses PTT (a TS 24.380 ``FloorParticipant``, its
floor messages SRTCP under its CSK), and once granted sends RTP at RATE packets/s for BURST seconds, releases, and
after ``--pause`` seconds the next member of the group presses. Python does only the floor control: the RTP is sent
by a second C child, the talker (``bench/talker.c``, ``bench.clustertalker``: the same sockets, GSO batches), told
``start``/``stop`` at each grant and release; Python's sending of the RTP had cost as much CPU as the nodes'
forwarding. Media is not SRTP-protected: the relay forwards opaque packets from the floor holder (it checks only
the source address of the binding, the RTP form, the rate and the holder's SSRC), and the listeners only count what
arrives. Floor request -> Granted times are taken on this process's clock (its reactor lag included).

Commands on stdin, one a line, each answered by one line on stdout:

  setup              -> ``setup-done {json}``: every member logs in, sends its CSK, joins and binds
  load SECONDS RATE GROUPS BURST
                     -> ``load-done {json}``: the first GROUPS groups talk for SECONDS at RATE packets/s per
                        talker, BURST seconds per turn; sent (by the talker) and received media packets, floor
                        grants and their latencies (ms), requests never granted, requests denied by cause ("no
                        answer from the floor control server": the request was never answered), the sink's and the
                        talker's CPU seconds
  quit
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol, stdio, task
from twisted.protocols.basic import LineReceiver

from bench.clustermembers import Counters, GroupCall, Member, MemberSocket
from bench.clusterproc import tree_cpu_seconds
from bench.clustersink import Sink, compile_sink, drop_rtp_in_kernel, udp_drops
from bench.clustertalker import Talker, compile_talker
from bench.loadgen import issue_identities, member_uri
from client.control import ControlClient, ControlError
from client.tls import pinned_client_options, trust_from_info
from ptt.control import unb64
from ptt.mikey.imessage import IdentityKeys, build_i_message
from ptt.relaycore import JoinSigner
from ptt.srtcp import CskKeys
from ptt.ts33180 import KeyPurpose, new_key_id

GROUP_HOST = "groups.example.org"
KEEPALIVE = 5.0
TICK = 0.02
MEMBERS_PER_ADDRESS = 200


def group_uri(index: int) -> str:
    return f"sip:c{index:04d}@{GROUP_HOST}"


class _Quiet:
    """What the server pushes (stored I_MESSAGEs, groups, call events) is not needed here."""

    def on_imessage(self, group: str, gmk_id: bytes, data: bytes) -> object:
        return None

    def on_groups(self, groups: list[dict[str, Any]]) -> None:
        pass

    def on_event(self, message: dict[str, Any]) -> None:
        pass

    def on_disconnected(self, reason: str) -> None:
        pass


class _ControlFactory(protocol.Factory):
    def __init__(self, reactor: Any, keys: IdentityKeys) -> None:
        self.reactor = reactor
        self.keys = keys

    def buildProtocol(self, addr: Any) -> ControlClient:
        return ControlClient(lambda now: self.keys, _Quiet(), self.reactor)


class ClusterLoad:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        info = json.loads(Path(args.server_info).read_text())
        self.nodes = [
            (str(n["host"]), int(n["control_port"]), trust_from_info(str(n["cert_pem"]).encode(), info.get("tls_ca")))
            for n in info["nodes"]
        ]
        self.server_uri = str(info["server_uri"])
        self.counters = Counters()
        now = time.time()
        started = time.perf_counter()
        total = args.groups * args.size
        _, identities = issue_identities(Path(args.root), [member_uri(i) for i in range(total)], now)
        self.members = []
        for index, keys in enumerate(identities):
            csk = CskKeys(csk=os.urandom(16), csk_id=new_key_id(KeyPurpose.CSK), rand=os.urandom(16))
            message = build_i_message(initiator=keys, responder_uri=self.server_uri, key=csk.csk,
                                      key_id=csk.csk_id, now=now, rand=csk.rand)  # fmt: skip
            source = f"127.0.1.{1 + index // MEMBERS_PER_ADDRESS}"
            self.members.append(Member(keys.uri, keys, csk, message, index % len(self.nodes), source, self.counters))
        self.calls = [
            GroupCall(reactor, group_uri(g), self.members[g * args.size : (g + 1) * args.size], self.counters)
            for g in range(args.groups)
        ]
        self.prepared = time.perf_counter() - started
        self._keepalive = task.LoopingCall(self._keepalives)
        self._pacer = task.LoopingCall(self._pace)
        self._keepalive_slice = 0
        self._sink_binary = compile_sink(Path(args.root))
        self._talker_binary = compile_talker(Path(args.root))
        self.sink: Sink | None = None
        self.talker: Talker | None = None
        self._talking: list[GroupCall] = []
        self._sink_members: list[Member] = []

    @defer.inlineCallbacks
    def _connect(self, member: Member) -> Any:
        host, port, trust = self.nodes[member.node]
        tcp: Any = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=15, bindAddress=(member.source, 0))
        endpoint: Any = endpoints.wrapClientTLS(pinned_client_options(host, trust), tcp)
        client = yield endpoint.connect(_ControlFactory(self.reactor, member.keys))
        client.welcome.addTimeout(30, self.reactor)
        yield client.welcome
        member.control = client
        yield client.send_csk(member.csk_message)

    @defer.inlineCallbacks
    def _join(self, member: Member, group: str) -> Any:
        assert member.control is not None
        member.ssrc = struct.unpack(">I", os.urandom(4))[0]
        for attempt in range(20):
            try:
                reply = yield member.control.join(group, member.ssrc)
                break
            except ControlError as exc:
                if exc.code != 503 or attempt == 19:
                    raise
                yield task.deferLater(self.reactor, 1.0, lambda: None)
        member.signer = JoinSigner(member.ssrc, unb64(reply["token"], "token"), member.csk.csk)
        member.relay = (str(reply["relay"]["host"]), int(reply["relay"]["port"]))
        if member.port is None:
            member.port = self.reactor.listenUDP(0, MemberSocket(member), interface="127.0.0.1")
        member.keepalive()

    @defer.inlineCallbacks
    def _setup_one(self, member: Member, group: str, errors: list[str]) -> Any:
        for attempt in range(3):
            try:
                if member.control is None:
                    yield self._connect(member)
                yield self._join(member, group)
                return True
            except Exception as exc:  # reported, retried: one member's failure must not stop the others
                errors.append(f"{type(exc).__name__}: {str(exc)[:80]}")
                if member.control is not None:
                    member.control.link.loseConnection()
                    member.control = None
                yield task.deferLater(self.reactor, 1.0 + attempt, lambda: None)
        return False

    @defer.inlineCallbacks
    def setup(self) -> Any:
        started = time.perf_counter()
        limit = defer.DeferredSemaphore(self.args.concurrency)
        errors: list[str] = []
        # Keepalives from the start: the relay unbinds a member silent for 15 s, and binding 2 000 members takes
        # longer than that (the first ones bound would be dead before the last one is).
        if not self._keepalive.running:
            self._keepalive.start(KEEPALIVE / 5, now=False)
        work = [limit.run(self._setup_one, member, call.uri, errors) for call in self.calls for member in call.members]
        results = yield defer.gatherResults(work)
        self._start_sink()
        ok = sum(1 for r in results if r)
        report = {"seconds": round(time.perf_counter() - started, 2), "ok": ok, "failed": len(results) - ok,
                  "errors": sorted(set(errors))[:5], "retries": len(errors)}  # fmt: skip
        return "setup-done " + json.dumps(report)

    def _start_sink(self) -> None:
        """Hand every bound member socket to the C sink (``bench.clustersink``) and the C talker
        (``bench.clustertalker``): from now on the sink reads them and the talker sends their RTP; Python sends only
        the signalling on them and gets their RTCP through :meth:`_rtcp`."""
        for child in (self.sink, self.talker):
            if child is not None:
                child.stop()
        self._sink_members = [m for m in self.members if m.port is not None]
        for index, member in enumerate(self._sink_members):
            member.port.stopReading()
            drop_rtp_in_kernel(member.port.socket)
            member.media_index = index
        fds = [member.port.fileno() for member in self._sink_members]
        self.sink = Sink(self.reactor, self._sink_binary, fds, self._rtcp)
        self.talker = Talker(self.reactor, self._talker_binary, fds)

    def _rtcp(self, index: int, data: bytes) -> None:
        member = self._sink_members[index]
        member.port.protocol.datagramReceived(data, member.relay)

    @defer.inlineCallbacks
    def _received(self) -> Any:
        """Media copies received so far: those the member sockets' filters counted (their drops: a full receive
        buffer would count there too, but only RTCP, rare, is ever queued), the sink's count and any the Python
        sockets read."""
        counted = 0
        if self.sink is not None:
            counted, _ = yield self.sink.count()
        return counted + self.counters.received + self._socket_drops()

    def _socket_drops(self) -> int:
        return udp_drops({m.port.getHost().port for m in self.members if m.port is not None})

    def _keepalives(self) -> None:
        """A fifth of the members every second: each one every 5 s."""
        slice_ = self._keepalive_slice % 5
        self._keepalive_slice += 1
        for member in self.members[slice_::5]:
            member.keepalive()

    def _pace(self) -> None:
        now = time.monotonic()
        for call in self._talking:
            call.tick(now)

    @defer.inlineCallbacks
    def load(self, seconds: float, rate: float, groups: int, burst: float) -> Any:
        if self.talker is None:
            return "error load before setup"
        self.counters.received = self.counters.lost = self.counters.denied = 0
        self.counters.latencies_ms = []
        self.counters.denied_why = {}
        self._talking = self.calls[:groups]
        base = yield self._received()
        sent_base = yield self.talker.count()
        calls_base = self.talker.calls
        cpu = time.process_time()
        sink_cpu, talker_cpu = self._child_cpu(self.sink), self._child_cpu(self.talker)
        started = time.monotonic()
        for call in self._talking:
            call.start(burst, self.args.pause, rate, self.talker)
        self._pacer.start(TICK, now=False)
        yield task.deferLater(self.reactor, seconds, lambda: None)
        for call in self._talking:
            call.stop()
        self._pacer.stop()
        sent = (yield self.talker.count()) - sent_base
        seconds = time.monotonic() - started
        received = (yield self._received()) - base
        yield task.deferLater(self.reactor, 0.3, lambda: None)  # what is still on its way
        late = (yield self._received()) - base - received
        report = {
            "seconds": round(seconds, 3), "sent": sent, "received": received + late,
            "late": late, "latencies_ms": [round(x, 3) for x in self.counters.latencies_ms],
            "lost": self.counters.lost, "denied": self.counters.denied,
            "denied_why": self.counters.denied_why, "cpu": round(time.process_time() - cpu, 3),
            "sink_cpu": round(self._child_cpu(self.sink) - sink_cpu, 3),
            "talker_cpu": round(self._child_cpu(self.talker) - talker_cpu, 3), "groups": len(self._talking),
            "talker_calls": self.talker.calls - calls_base, "gso": self.talker.gso,
        }  # fmt: skip
        yield task.deferLater(self.reactor, 1.0, lambda: None)  # the floors go idle before the next command
        return "load-done " + json.dumps(report)

    @staticmethod
    def _child_cpu(child: Sink | Talker | None) -> float:
        return tree_cpu_seconds(child.pid) if child is not None else 0.0

    def quit(self) -> None:
        for child in (self.sink, self.talker):
            if child is not None:
                child.stop()
        for member in self.members:
            if member.control is not None:
                member.control.link.loseConnection()


class _Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, load: ClusterLoad, done: defer.Deferred[None]) -> None:
        self.generator = load
        self.done = done

    def connectionMade(self) -> None:
        self.answer(f"ready {self.generator.prepared:.2f}")

    def answer(self, line: Any) -> None:
        self.sendLine(str(line).replace("\n", " ").encode())  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        word, *args = line.decode().split()
        if word == "setup":
            self.generator.setup().addBoth(self.answer)
        elif word == "load":
            seconds, rate, groups, burst = float(args[0]), float(args[1]), int(args[2]), float(args[3])
            self.generator.load(seconds, rate, groups, burst).addBoth(self.answer)
        elif word == "quit":
            self.connectionLost()
        else:
            self.answer(f"error unknown command {word!r}")

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.generator.quit()
            self.done.callback(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the bench's data directory (bench.clusterharness)")
    parser.add_argument("--server-info", required=True, help="a client-info file listing every node")
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--size", type=int, default=10, help="members per group")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between a release and the next press")
    parser.add_argument("--concurrency", type=int, default=200, help="members logging in at a time")
    args = parser.parse_args(argv)

    def run(reactor: Any) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        stdio.StandardIO(_Commands(ClusterLoad(reactor, args), done), reactor=reactor)  # type: ignore[no-untyped-call]
        done.addCallback(lambda _: task.deferLater(reactor, 0.5, lambda: None))
        return done

    task.react(run, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
