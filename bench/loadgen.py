"""Control-channel load for ``bench.floorload``: many clients logging in at once with their CSKs, and a CSK flood.

One process, one reactor, many ``client.control.ControlClient`` connections (TLS, ECCSI challenge login) instead of
hundreds of client processes. Identities need no KMS round trip: their ECCSI keys (SSK, PVT) are issued here from
the KMS's master secrets in the bench's data directory (``ptt.crypto.kms.issue_signing_key`` for each identity's
UID, what the KMS itself does; no RSK: these clients never open the I_MESSAGEs they are sent). Every CSK
I_MESSAGE (SAKKE to the server's identity, ECCSI-signed) is built before any load starts, so the load is the
server's work, not ours; only the login signatures (over the server's fresh nonce) are made during the load.

  python -m bench.loadgen --root DIR --logins 200 --flood-unique 300

Commands on stdin, one a line, each answered by one line on stdout:

  login            -> ``login-done SECONDS ok=N failed=M``: all clients connect at once, log in and send their CSK
                      (a login storm; the clients of the previous storm, if any, disconnect first)
  flood SECONDS    -> ``flood-done SECONDS sent=N ok=N refused=N fresh=N``: the first logged-in client sends CSK
                      messages for SECONDS, WINDOW (64) of them outstanding at a time, about 40 KiB of frames in
                      flight (as fast as the server reads them): first the distinct prebuilt ones, then the same
                      ones again (replays); a closed connection is reopened (logged in again) and the flood goes on
  quit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver

from client.control import ControlClient, ControlError, connect_control
from client.tls import trust_from_info
from ptt.crypto.kms import issue_signing_key
from ptt.kmsformat.enrolment import Enrolment
from ptt.mikey.imessage import IdentityKeys, KmsDomain, build_i_message
from ptt.ts33180 import KeyPurpose, new_key_id
from server.kms.secrets import read_master_secrets

DOMAIN = "example.org"


def member_uri(index: int) -> str:
    """The bench's synthetic members: sip:m0000@example.org … (provisioned nowhere; the KMS keys any URI)."""
    return f"sip:m{index:04d}@{DOMAIN}"


def issue_identities(root: Path, uris: list[str], now: float) -> tuple[KmsDomain, list[IdentityKeys]]:
    """ECCSI keys for ``uris`` in the current key period, straight from the bench KMS's master secrets."""
    domain = Enrolment.from_json((root / "enrol.json").read_bytes()).certificate.domain()
    master = read_master_secrets(root / "kms" / "master-secrets.json")
    period = domain.period_number(now)
    identities = []
    for uri in uris:
        ssk, pvt = issue_signing_key(domain.uid(uri, period), master)
        identities.append(IdentityKeys(uri, domain, period, ssk, pvt))
    return domain, identities


def csk_message(keys: IdentityKeys, server_uri: str, now: float) -> bytes:
    return build_i_message(
        initiator=keys,
        responder_uri=server_uri,
        key=os.urandom(16),
        key_id=new_key_id(KeyPurpose.CSK),
        now=now,
        rand=os.urandom(16),
    )


class _Quiet:
    """A ControlHandler that ignores what the server pushes (stored I_MESSAGEs, groups, events)."""

    def __init__(self) -> None:
        self.lost = False

    def on_imessage(self, group: str, gmk_id: bytes, data: bytes) -> object:
        return None

    def on_groups(self, groups: list[dict[str, Any]]) -> None:
        pass

    def on_event(self, message: dict[str, Any]) -> None:
        pass

    def on_disconnected(self, reason: str) -> None:
        self.lost = True


class LoadGenerator:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        root = Path(args.root)
        info = json.loads((root / "server.json").read_text())
        self.host = str(info["host"])
        self.port = int(info["control_port"])
        self.cert = trust_from_info(str(info["cert_pem"]).encode(), info.get("tls_ca"))
        self.server_uri = str(info["server_uri"])
        now = time.time()
        started = time.perf_counter()
        _, self.identities = issue_identities(root, [member_uri(i) for i in range(args.logins)], now)
        # one fresh CSK per client and storm: the server's replay cache refuses a CSK it has seen
        self.csks = [[csk_message(keys, self.server_uri, now) for keys in self.identities] for _ in range(args.storms)]
        self.storm = 0
        self.flood_messages = [csk_message(self.identities[0], self.server_uri, now) for _ in range(args.flood_unique)]
        self.prepared = time.perf_counter() - started
        self.clients: list[ControlClient] = []

    @defer.inlineCallbacks
    def _login_one(self, keys: IdentityKeys, csk: bytes) -> Any:
        client = yield connect_control(self.reactor, self.host, self.port, self.cert, lambda now: keys, _Quiet())
        self.clients.append(client)
        yield client.send_csk(csk)

    @defer.inlineCallbacks
    def login(self) -> Any:
        """Every client connects at once (the ones still connected from the last storm disconnect first)."""
        if self.storm >= len(self.csks):
            return f"login-done 0 ok=0 failed=0 errors=['only {len(self.csks)} storms prebuilt']"
        csks = self.csks[self.storm]
        self.storm += 1
        started = time.perf_counter()
        yield self.disconnect()
        results = yield defer.DeferredList(
            [self._login_one(k, c) for k, c in zip(self.identities, csks, strict=True)], consumeErrors=True
        )
        ok = sum(1 for success, _ in results if success)
        errors = sorted({str(r.value)[:80] for success, r in results if not success})
        tail = f" errors={errors[:3]}" if errors else ""
        return f"login-done {time.perf_counter() - started:.3f} ok={ok} failed={len(results) - ok}{tail}"

    @defer.inlineCallbacks
    def flood(self, seconds: float) -> Any:
        counts = {"sent": 0, "ok": 0, "refused": 0, "fresh": 0, "reconnects": 0}
        started = time.perf_counter()
        deadline = started + seconds
        # the session of the identity that signed the flood's messages (a CSK must come from its initiator)
        uri = self.identities[0].uri
        client = next((c for c in self.clients if c.uri == uri and c.connected), None)

        @defer.inlineCallbacks
        def lane() -> Any:
            nonlocal client
            while time.perf_counter() < deadline:
                if client is None or not client.connected:
                    counts["reconnects"] += 1
                    try:
                        client = yield connect_control(
                            self.reactor, self.host, self.port, self.cert, lambda now: self.identities[0], _Quiet()
                        )
                    except Exception:
                        client = None
                        yield task.deferLater(self.reactor, 0.1, lambda: None)
                        continue
                index = counts["sent"]
                counts["sent"] += 1
                if index < len(self.flood_messages):
                    counts["fresh"] += 1
                try:
                    yield client.send_csk(self.flood_messages[index % len(self.flood_messages)])
                    counts["ok"] += 1
                except (ControlError, defer.TimeoutError, defer.CancelledError):
                    counts["refused"] += 1

        yield defer.DeferredList([lane() for _ in range(self.args.window)], consumeErrors=True)
        elapsed = time.perf_counter() - started
        return f"flood-done {elapsed:.3f} " + " ".join(f"{k}={v}" for k, v in counts.items())

    def disconnect(self) -> defer.Deferred[Any]:
        waiting = []
        for client in self.clients:
            if client.connected:
                lost: defer.Deferred[None] = defer.Deferred()
                previous = client.handler.on_disconnected

                def fire(reason: str, lost: defer.Deferred[None] = lost, previous: Any = previous) -> None:
                    previous(reason)
                    lost.callback(None)

                client.handler.on_disconnected = fire  # type: ignore[method-assign]
                waiting.append(lost)
                client.link.loseConnection()
        self.clients = []
        return defer.DeferredList(waiting)

    def quit(self) -> None:
        self.disconnect()


class _Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, generator: LoadGenerator, done: defer.Deferred[None]) -> None:
        self.generator = generator
        self.done = done
        self.busy = False

    def connectionMade(self) -> None:
        self.answer(f"ready {self.generator.prepared:.2f}")

    def answer(self, line: Any) -> None:
        self.sendLine(str(line).encode())  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        word, _, arg = line.decode().strip().partition(" ")
        if word == "login":
            self.generator.login().addBoth(self.answer)
        elif word == "flood":
            self.generator.flood(float(arg)).addBoth(self.answer)
        elif word == "quit":
            self.generator.quit()
            if not self.done.called:
                self.reactor_stop()
        elif word:
            self.answer(f"error unknown command {word!r}")

    def reactor_stop(self) -> None:
        self.done.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.generator.quit()
            self.done.callback(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the bench's data directory (bench.harness.start_system)")
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--storms", type=int, default=3, help="login storms prebuilt (one CSK per client each)")
    parser.add_argument("--flood-unique", type=int, default=300, help="distinct CSK messages built for the flood")
    parser.add_argument("--window", type=int, default=64, help="flood requests outstanding at a time")
    args = parser.parse_args(argv)

    def run(reactor: Any) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        stdio.StandardIO(_Commands(LoadGenerator(reactor, args), done), reactor=reactor)  # type: ignore[no-untyped-call]
        done.addCallback(lambda _: task.deferLater(reactor, 0.2, lambda: None))
        return done

    task.react(run, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
