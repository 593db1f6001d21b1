"""A headless, scriptable PTT client (tests and automation): synthetic audio instead of a microphone.

  python -m client.headless --keystore K --passphrase-file P --uri sip:alice@example.org \
      --server-info server.json --script "join sip:fire@example.org; wait 1; talk 2; wait 2" --report out.json

Script steps (separated by ';'): ``join GROUP``, ``leave GROUP``, ``wait SECONDS``, ``wait-key GROUP N`` (until N
GMKs are held), ``wait-file PATH`` (until it exists, at most a minute), ``talk SECONDS`` (request the floor of the
joined group, wait for Granted, send 50 packets/s of synthetic audio, release), ``talk-loop SECONDS`` (short bursts
again and again, through failovers), ``send SECONDS`` (send media without asking for the floor), ``request``,
``release``, ``forge-floor`` (send an unprotected Floor Request), ``quit``; emergency alerts and broadcast
calls: ``emergency``, ``cancel-emergency``, ``broadcast-press``, ``broadcast-talk``, ``wait-alert``
(``client.headless_emergency``); private calls: ``call URI [manual]``, ``wait-call``, ``answer``, ``reject``,
``hangup``, ``wait-ended`` (``client.headless_calls``); recording: ``talk-wav PATH``, ``history GROUP DIR [N]``
(``client.headless_history``); voice messages: ``message-wav URI PATH``, ``call-or-message URI PATH``,
``wait-message``, ``play-messages DIR``, ``wait-message-status STATE`` … (``client.headless_messages``). The
report (JSON) lists what was received.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from client import headless_emergency, headless_history
from client.headless_calls import CALL_STEPS, CallSteps
from client.headless_messages import STEPS as MESSAGE_STEPS
from client.headless_messages import MessageSteps
from client.keystore import Keystore
from client.keystore_watch import watch_session
from client.session import PttSession, ServerInfo
from ptt.floor.events import FloorEvent
from ptt.floor.messages import FloorMessage, Subtype

PACKET_INTERVAL = 0.02
PAYLOAD_LENGTH = 160


def synthetic_payload(tag: bytes, seq: int) -> bytes:
    """Recognisable 'audio': the sender's tag and a sequence number, padded to a voice frame's size."""
    return (b"SYN" + tag[:8].ljust(8, b"\0") + struct.pack(">I", seq)).ljust(PAYLOAD_LENGTH, b"\x55")


WAIT_FILE_LIMIT = 60.0
MAX_VOICE_PACKETS = 50 * 600  # ten minutes of real voice kept for --record-wav


class Runner:
    def __init__(self, reactor: Any, session: PttSession, tag: bytes) -> None:
        self.reactor = reactor
        self.session = session
        self.tag = tag
        self.group: str | None = None
        self.sent = 0
        self.received: dict[str, list[int]] = {}
        self.arrivals: dict[str, list[float]] = {}  # sender -> wall-clock time of each packet (failover timing)
        self.floor: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.floor_latency_ms: list[float] = []
        self._awaiting: tuple[str, defer.Deferred[None]] | None = None
        self.alerts: list[dict[str, Any]] = []  # emergency alerts pushed by the server
        self.marks: list[dict[str, Any]] = []  # times of some steps (when an emergency was raised)
        session.alert_listener = lambda group, alert: headless_emergency.announce(self, group, alert)
        session.media_listener = self._media
        session.floor_listener = self._floor
        session.event_listener = self.events.append
        self.call_steps = CallSteps(self)  # private calls (issue 16): client.headless_calls
        self.voice: list[tuple[int, int, bytes]] = []  # (sequence, timestamp, Opus payload) of real voice heard
        self.history: list[dict[str, Any]] = []  # replayed bursts (issue 17): client.headless_history
        self.message_steps = MessageSteps(self)  # voice messages (issue 17): client.headless_messages

    def write_voice(self, path: Path) -> None:
        """The Opus voice heard, decoded and placed by its RTP timestamps (silence between bursts), as a 48 kHz
        16-bit mono WAV file (``--record-wav``): what a speaker would have played, for comparisons in tests."""
        import wave

        from client.codec import OpusDecoder

        decoder, pcm = OpusDecoder(), bytearray()
        if self.voice:
            first = self.voice[0][1]
            for _, timestamp, payload in sorted(self.voice, key=lambda v: (v[1] - first) & 0xFFFFFFFF):
                at = 2 * ((timestamp - first) & 0xFFFFFFFF)
                if at > len(pcm) + 2 * 48000 * 60:  # more than a minute ahead: not this stream
                    continue
                pcm.extend(bytes(max(0, at - len(pcm))))
                try:
                    pcm[at:] = decoder.decode(payload)
                except Exception:  # a corrupt packet: its 20 ms stay silent
                    pcm[at:] = bytes(1920)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(48000)
            out.writeframes(bytes(pcm))

    def _media(self, group: str, mki: bytes, rtp: bytes) -> None:
        payload = rtp[12:]
        if not payload.startswith(b"SYN") and len(self.voice) < MAX_VOICE_PACKETS:  # real Opus (a console talks)
            self.voice.append((int.from_bytes(rtp[2:4]), int.from_bytes(rtp[4:8]), payload))
        if payload.startswith(b"SYN"):
            sender = payload[3:11].rstrip(b"\0").decode("ascii", "replace")
            self.received.setdefault(sender, []).append(struct.unpack(">I", payload[11:15])[0])
            self.arrivals.setdefault(sender, []).append(round(time.time(), 3))

    def _floor(self, group: str, event: FloorEvent) -> None:
        # "subtype": the older name of "kind" in the report, kept for its readers (GRANTED and TAKEN are the same)
        kind = event.kind.name
        entry = {"group": group, "kind": kind, "subtype": kind, "party": event.talker, "t": round(time.time(), 3)}
        if event.cause is not None:
            entry["cause"] = event.cause
        self.floor.append(entry)
        if self._awaiting is not None and self._awaiting[0] == kind:
            waiting = self._awaiting[1]
            self._awaiting = None
            waiting.callback(None)

    def _expect(self, kind: str, timeout: float) -> defer.Deferred[None]:
        """Fires at the next floor event of ``kind`` (a ``FloorEventKind`` name: GRANTED, IDLE, …)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._awaiting = (kind, d)
        d.addTimeout(timeout, self.reactor)
        return d

    @defer.inlineCallbacks
    def run(self, script: str) -> Any:
        for step in [s.strip() for s in script.split(";") if s.strip()]:
            word, _, arg = step.partition(" ")
            arg = arg.strip()
            if word == "join":
                self.group = arg
                yield self.session.join_when_possible(arg)
            elif word == "leave":
                self.session.leave(arg)
            elif word == "wait":
                yield task.deferLater(self.reactor, float(arg), lambda: None)
            elif word == "wait-file":  # PATH: until it exists (a test starts several clients' next step at once)
                deadline = time.monotonic() + WAIT_FILE_LIMIT
                while not os.path.exists(arg) and time.monotonic() < deadline:
                    yield task.deferLater(self.reactor, 0.05, lambda: None)
            elif word == "wait-key":
                group, _, count = arg.partition(" ")
                for _ in range(200):
                    state = self.session.groups.get(group)
                    if state is not None and len(state.keys) >= int(count):
                        break
                    yield task.deferLater(self.reactor, 0.05, lambda: None)
            elif word == "request":
                assert self.group is not None
                self.session.request_floor(self.group)
            elif word == "release":
                assert self.group is not None
                self.session.release_floor(self.group)
            elif word == "talk":
                yield self._talk(float(arg), ask=True)
            elif word == "talk-loop":  # SECONDS: press, talk 0.6 s, release, pause 0.2 s, again, whatever happens
                yield self._talk_loop(float(arg))
            elif word == "send":
                yield self._talk(float(arg), ask=False)
            elif word == "forge-floor":
                assert self.group is not None
                state = self.session.groups[self.group]
                self.session._send(
                    self.group, bytes(FloorMessage(Subtype.REQUEST, state.ssrc, user_id=self.session.uri))
                )
            elif word == "floor-latency":  # ROUNDS [HOLD [PAUSE]], HOLD/PAUSE seconds or MIN-MAX ranges
                rounds, *pacing = arg.split()
                yield self._floor_latency(int(rounds), *pacing)
            elif word in headless_emergency.STEPS:
                yield headless_emergency.run_step(self, word, arg)
            elif word in headless_history.STEPS:
                yield headless_history.run_step(self, word, arg)
            elif word in CALL_STEPS:
                yield self.call_steps.run(word, arg)
            elif word in MESSAGE_STEPS:
                yield self.message_steps.run(word, arg)
            elif word == "quit":
                break
            else:
                raise ValueError(f"unknown script step {step!r}")

    def talk_with(self, seconds: float, press: Any) -> defer.Deferred[Any]:
        """``talk`` with another way to ask for the floor (``press()``: a broadcast request)."""
        return self._talk(seconds, ask=True, press=press)

    @defer.inlineCallbacks
    def _talk(self, seconds: float, *, ask: bool, press: Any = None) -> Any:
        assert self.group is not None
        state = self.session.groups[self.group]
        if ask:
            self.marks.append({"step": "request", "t": round(time.time(), 3)})
            (press or (lambda: self.session.request_floor(self.group)))()
            for _ in range(50):
                if state.participant is not None and state.participant.has_permission:
                    break
                yield task.deferLater(self.reactor, 0.02, lambda: None)
        first = True
        for _ in range(int(seconds / PACKET_INTERVAL)):
            self.sent += 1
            self.session.send_media(self.group, synthetic_payload(self.tag, self.sent), marker=first)
            first = False
            yield task.deferLater(self.reactor, PACKET_INTERVAL, lambda: None)
        if ask:
            self.session.release_floor(self.group)

    @defer.inlineCallbacks
    def _talk_loop(self, seconds: float) -> Any:
        """Talks in short bursts for ``seconds``, through failovers and rejoins (while not joined, it waits)."""
        assert self.group is not None
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            state = self.session.groups.get(self.group)
            if state is None or state.participant is None or state.sender is None:
                yield task.deferLater(self.reactor, 0.1, lambda: None)
                continue
            yield self._talk(0.6, ask=True)
            yield task.deferLater(self.reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def _floor_latency(self, rounds: int, hold: str = "0.2-0.4", pause: str = "0.1-0.3") -> Any:
        """Request → Granted time, ``rounds`` times, paced like a person: each Granted is held for ``hold``
        seconds (uniform in MIN-MAX) with synthetic audio at 50 packets/s, then Release → Idle, then ``pause``
        seconds before the next press. One line per round on stdout (``floor-latency N WALL MS``, WALL = the
        request's time.time(); ``lost`` instead of MS when no Granted came within 10 s), so a benchmark can match
        rounds to what else ran at that time."""
        import random

        assert self.group is not None
        hold_range = [float(x) for x in hold.split("-", 1)] * (2 if "-" not in hold else 1)
        pause_range = [float(x) for x in pause.split("-", 1)] * (2 if "-" not in pause else 1)
        pacing = random.Random(1)
        for index in range(rounds):
            granted = self._expect("GRANTED", 10.0)
            wall, start = time.time(), time.perf_counter()
            self.session.request_floor(self.group)
            try:
                yield granted
            except defer.TimeoutError:
                self._awaiting = None
                print(f"floor-latency {index} {wall:.6f} lost", flush=True)
            else:
                latency = (time.perf_counter() - start) * 1e3
                self.floor_latency_ms.append(latency)
                print(f"floor-latency {index} {wall:.6f} {latency:.3f}", flush=True)
                until = time.perf_counter() + pacing.uniform(*hold_range)
                first = True
                while time.perf_counter() < until:
                    self.sent += 1
                    self.session.send_media(self.group, synthetic_payload(self.tag, self.sent), marker=first)
                    first = False
                    yield task.deferLater(self.reactor, PACKET_INTERVAL, lambda: None)
            idle = self._expect("IDLE", 10.0)
            self.session.release_floor(self.group)
            try:
                yield idle
            except defer.TimeoutError:
                self._awaiting = None
            yield task.deferLater(self.reactor, pacing.uniform(*pause_range), lambda: None)

    def report(self) -> dict[str, Any]:
        return {
            "uri": self.session.uri,
            "sent": self.sent,
            "received": {sender: len(seqs) for sender, seqs in self.received.items()},
            "arrivals": self.arrivals,
            "floor": self.floor,
            "events": self.events,
            "stats": self.session.stats,
            "keys": {g: [k.gmk_id.hex() for k in s.keys] for g, s in self.session.groups.items()},
            "floor_latency_ms": self.floor_latency_ms,
            "alerts": self.alerts,
            "alert_state": {g: [a.to_json() for a in t.values()] for g, t in self.session.alerts.items()},
            "marks": self.marks,
            "history": self.history,
            **self.call_steps.report(),
            **self.message_steps.report(),
            **self.session.key_use.report(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ptt-headless", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keystore", required=True)
    parser.add_argument("--passphrase-file", help="keystore passphrase file (else PTT_KEYSTORE_PASSPHRASE)")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--server-info", help="the server's client-info file (not with --offnetwork)")
    parser.add_argument("--offnetwork", action="store_true", help="off-network private calls only: no server")
    parser.add_argument("--signal-port", type=int, default=0, help="--offnetwork: the call signalling UDP port")
    parser.add_argument("--peer", action="append", help="--offnetwork: URI=HOST:PORT, a peer's signalling address")
    parser.add_argument("--tag", help="sender tag in the synthetic audio (default: the URI's user part)")
    parser.add_argument("--script", default="")
    parser.add_argument("--report")
    parser.add_argument("--record-wav", help="write the real (Opus) voice heard to this WAV file at the end")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.passphrase_file:
        passphrase = Path(args.passphrase_file).read_bytes().rstrip(b"\r\n")
    elif os.environ.get("PTT_KEYSTORE_PASSPHRASE"):
        passphrase = os.environ["PTT_KEYSTORE_PASSPHRASE"].encode()
    else:
        print("ptt-headless: give --passphrase-file or PTT_KEYSTORE_PASSPHRASE", file=sys.stderr)
        return 2
    keystore = Keystore.open(Path(args.keystore), passphrase)
    tag = (args.tag or args.uri.partition(":")[2].partition("@")[0]).encode()
    if args.offnetwork:  # off-network private calls (issue 16): client.offnet_calls
        from client.offnet_calls import run_headless

        return run_headless(args, keystore, tag)
    if not args.server_info:
        parser.error("--server-info is required (or --offnetwork)")
    server = ServerInfo.from_json(Path(args.server_info).read_text())
    outcome: dict[str, Any] = {"code": 0}

    def run(reactor: Any) -> Any:
        session = PttSession(reactor, keystore, args.uri, server)
        runner = Runner(reactor, session, tag)

        @defer.inlineCallbacks
        def go() -> Any:
            watch = None
            try:
                yield session.start()
                watch = watch_session(session)  # renewed keys are picked up (issue 18)
                print("ready", flush=True)
                yield runner.run(args.script)
            except Exception as exc:
                print(f"ptt-headless: {exc}", file=sys.stderr, flush=True)
                outcome["code"] = 2
            finally:
                report = runner.report()
                if args.report:
                    Path(args.report).write_text(json.dumps(report, indent=1))
                if args.record_wav:
                    runner.write_voice(Path(args.record_wav))
                if watch is not None:
                    watch.stop()
                session.stop()

        return go()

    import contextlib

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])


if __name__ == "__main__":
    sys.exit(main())
