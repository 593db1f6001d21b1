"""``ptt-server``: the group server process — group manager, dispatcher API, control channel, relay, floor control.

  ptt-server --data DIR init --kms-enrolment E.json --kms-user NAME [--kms-password-file F]
             --server-uri sip:ptt-server@example.org [--domain example.org] [--host 127.0.0.1]
             [--dispatch-port 8444] [--control-port 8445] [--relay-port 8446]
  ptt-server --data DIR dispatcher add NAME [--role admin] [--password-file F]
  ptt-server --data DIR client-info [--out FILE]      what clients need: address, server URI, TLS certificate
  ptt-server --data DIR serve

The server is a KMS client: its account is keyed for the server's own URI (clients encrypt their CSK to it) and
for every group URI it manages (it signs each GMK as the group). One process; the database and key
distribution run on one worker thread, media and floor control on the reactor.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptt.control import b64
from ptt.floor.arbiter import ArbiterConfig, FloorArbiter, Participant, Send
from ptt.floor.events import FloorEventKind
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from ptt.relaycore import Address, Binding, RelayCore
from ptt.srtcp import CskKeys, SrtcpChannel, SrtcpError
from ptt.ts33180 import KeyPurpose

log = logging.getLogger("ptt.server")

CSK_WINDOW = 300.0
KEY_PERIOD_CHECK = 60.0


class CliError(Exception):
    pass


@dataclass(frozen=True)
class ServerConfig:
    server_uri: str
    domain: str
    host: str
    dispatch_port: int
    control_port: int
    relay_port: int
    kms_user: str

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        data = json.loads(path.read_text())
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1) + "\n")


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "server.json"
        self.db = root / "server.sqlite3"
        self.data_key = root / "data.key"
        self.tls_key = root / "tls-key.pem"
        self.tls_cert = root / "tls-cert.pem"
        self.keystore = root / "keystore"
        self.keystore_pass = root / "keystore.pass"
        self.kms_password = root / "kms-password"


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


class PttServer:
    """The running server: implements the control backend and the group key source, wires relay and floor."""

    def __init__(self, reactor: Any, data: DataDir, config: ServerConfig) -> None:
        from client.keystore import Keystore
        from client.provisioning import ProvisioningAgent
        from server.groups.manager import GroupManager
        from server.groups.store import GroupStore, read_data_key
        from server.keydistribution import GroupKeyDistributor

        self.reactor = reactor
        self.data = data
        self.config = config
        self.server_uri = config.server_uri
        self.keystore = Keystore.open(data.keystore, data.keystore_pass.read_bytes())
        if self.keystore.enrolment is None:
            raise CliError("the server's keystore is not enrolled with a KMS (run init)")
        self._domain = self.keystore.enrolment.certificate.domain()
        self.store = GroupStore(data.db, read_data_key(data.data_key))
        identities = [config.server_uri, *[g.uri for g in self.store.groups()]]
        self.agent = ProvisioningAgent(
            reactor, self.keystore, config.kms_user, data.kms_password.read_text().strip(), identities
        )
        self.manager = GroupManager(
            self.store, self, distributor=GroupKeyDistributor(workers=1), on_imessage=self._imessage_from_thread
        )
        loss = float(os.environ.get("PTT_RELAY_TEST_LOSS", "0") or 0)
        self.relay_core = LossyRelayCore(loss) if loss > 0 else RelayCore()
        if loss > 0:
            log.warning("relay drops %.1f %% of media on purpose (PTT_RELAY_TEST_LOSS)", loss * 100)
        self.relay: Any = None
        self.control: Any = None
        self.arbiters: dict[str, FloorArbiter] = {}
        self.channels: dict[str, SrtcpChannel] = {}  # member URI -> floor control SRTCP (its CSK)
        self.csk_replay = ReplayCache()
        self.expected: dict[tuple[str, str], Participant] = {}  # (group, member) -> who will bind
        self._timers: dict[str, Any] = {}

    # --- GroupKeySource ----------------------------------------------------------------------------------------

    def domain(self) -> KmsDomain:
        return self._domain

    def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
        from twisted.internet.threads import blockingCallFromThread
        from twisted.python.threadable import isInIOThread

        keys = self.keystore.current_keys(group_uri, now)
        if keys is not None and self.keystore.identity_keys(group_uri, keys.period_no + 1) is not None:
            return keys
        if keys is not None and isInIOThread():
            return keys
        if not isInIOThread():  # a dispatcher request on the worker thread: fetch the group's keys now
            try:
                blockingCallFromThread(self.reactor, self._provision, group_uri)
            except Exception as exc:
                log.warning("keys for %s not provisioned: %s", group_uri, exc)
        return self.keystore.current_keys(group_uri, now)

    def _provision(self, identity: str) -> Any:
        if identity not in self.agent.identities:
            self.agent.identities.append(identity)
        return self.agent.provision_identity(identity)

    # --- ControlBackend ------------------------------------------------------------------------------------------

    def welcome(self, uri: str) -> dict[str, Any]:
        return {"groups": self._groups_of(uri), "relay": {"host": self.config.host, "port": self.config.relay_port}}

    def _groups_of(self, uri: str) -> list[dict[str, Any]]:
        groups = []
        for record in self.store.groups_of(uri):
            member = next((m for m in self.store.members(record.uri) if m.uri == uri), None)
            groups.append(
                {
                    "uri": record.uri,
                    "name": record.name,
                    "role": member.role if member else "member",
                    "priority": member.priority if member else 0,
                }
            )
        return groups

    def stored_imessages(self, uri: str) -> list[dict[str, Any]]:
        return [
            {"type": "imessage", "group": m.group, "gmk_id": m.gmk_id.hex(), "data": b64(m.data)}
            for m in self.manager.imessages_for(uri)
        ]

    def on_csk(self, uri: str, data: bytes, now: float) -> str:
        from server.control import RequestRefused

        try:
            received = receive_i_message(
                data,
                responder=self.keystore.held_keys(self.server_uri),
                expected_initiators=uri,
                trusted_kms={self._domain.kms_uri: self._domain},
                now=now,
                replay_cache=self.csk_replay,
                window=CSK_WINDOW,
            )
        except MikeyError as exc:
            log.warning("CSK from %s refused: %s", uri, exc)
            raise RequestRefused(403, f"CSK refused: {exc}") from None
        if received.purpose != KeyPurpose.CSK:
            raise RequestRefused(400, f"expected a CSK, got a {received.purpose.name}")
        self.channels[uri] = SrtcpChannel(CskKeys(received.key, received.key_id, received.rand))
        log.info("CSK %s from %s: floor control keyed", received.key_id.hex(), uri)
        return received.key_id.hex()

    def on_join(self, uri: str, group: str, ssrc: int, now: float) -> dict[str, Any]:
        from server.control import RequestRefused

        record = self.store.group(group)
        member = next((m for m in self.store.members(group) if m.uri == uri), None) if record else None
        if member is None:
            raise RequestRefused(403, f"{uri} is not a member of {group}")
        if uri not in self.channels:
            raise RequestRefused(409, "send a CSK before joining (floor control needs it)")
        token = os.urandom(16)
        self.relay_core.expect(token, Binding(group, uri, ssrc), now)
        self.expected[(group, uri)] = Participant(
            ssrc=ssrc, uri=uri, priority=member.priority, pre_emptive=member.role == "dispatcher"
        )
        if group not in self.arbiters:
            self.arbiters[group] = FloorArbiter(group, ArbiterConfig(max_burst=record.max_burst if record else 30.0))
        return {
            "type": "joined",
            "group": group,
            "token": b64(token),
            "relay": {"host": self.config.host, "port": self.config.relay_port},
        }

    def on_leave(self, uri: str, group: str, now: float) -> None:
        self._leave(group, uri, now)

    def on_disconnected(self, uri: str, now: float) -> None:
        if self.control is not None and self.control.online(uri):
            return  # another session of the same identity is still connected
        for group in list(self.arbiters):
            self._leave(group, uri, now)
        self.channels.pop(uri, None)

    def _leave(self, group: str, uri: str, now: float) -> None:
        participant = self.expected.pop((group, uri), None)
        self.relay_core.unbind(group, uri)
        arbiter = self.arbiters.get(group)
        if arbiter is not None and participant is not None:
            self._deliver(group, arbiter.leave(participant.ssrc, now))

    # --- relay callbacks -----------------------------------------------------------------------------------------

    def relay_joined(self, binding: Binding, addr: Address) -> None:
        participant = self.expected.get((binding.group, binding.member))
        arbiter = self.arbiters.get(binding.group)
        if participant is None or arbiter is None or participant.ssrc != binding.ssrc:
            return
        log.info("%s joined %s from %s:%d", binding.member, binding.group, *addr)
        self._deliver(binding.group, arbiter.join(participant, self.reactor.seconds()))
        self._event(binding.group, "joined", binding.member)

    def relay_floor(self, binding: Binding, data: bytes, addr: Address) -> None:
        channel = self.channels.get(binding.member)
        arbiter = self.arbiters.get(binding.group)
        if channel is None or arbiter is None:
            return
        try:
            messages = parse_rtcp(channel.unprotect(data))
        except (SrtcpError, FloorMessageError) as exc:
            log.warning("floor message from %s (%s:%d) dropped: %s", binding.member, addr[0], addr[1], exc)
            return
        now = self.reactor.seconds()
        for message in messages:
            if message.ssrc != binding.ssrc:
                log.warning("floor message from %s with a foreign SSRC dropped", binding.member)
                continue
            self._deliver(binding.group, arbiter.receive(binding.ssrc, message, now))

    def relay_dead(self, bindings: list[Binding]) -> None:
        now = self.reactor.seconds()
        for binding in bindings:
            log.warning("%s in %s stopped sending keepalives: dropped", binding.member, binding.group)
            participant = self.expected.pop((binding.group, binding.member), None)
            arbiter = self.arbiters.get(binding.group)
            if arbiter is not None and participant is not None:
                self._deliver(binding.group, arbiter.leave(participant.ssrc, now))
            self._event(binding.group, "dead", binding.member)

    # --- floor plumbing ------------------------------------------------------------------------------------------

    def _deliver(self, group: str, sends: list[Send]) -> None:
        arbiter = self.arbiters[group]
        addresses = {binding.ssrc: (binding.member, address) for binding, address, _ in self.relay_core.members(group)}
        for send in sends:
            targets = [send.to] if send.to is not None else [p.ssrc for p in arbiter.participants]
            for ssrc in targets:
                if ssrc == send.exclude or ssrc not in addresses:
                    continue
                member, address = addresses[ssrc]
                channel = self.channels.get(member)
                if channel is None or self.relay is None:
                    continue
                try:
                    self.relay.send(channel.protect(bytes(send.message)), address)
                except SrtcpError as exc:
                    log.warning("floor message to %s not sent: %s", member, exc)
        for event in arbiter.events():
            if event.kind is FloorEventKind.GRANTED:
                self.relay_core.set_talker(group, event.member_ssrc)
                self._event(group, "talking", event.member)
            elif event.kind in (FloorEventKind.IDLE, FloorEventKind.REVOKED):
                holder = arbiter.holder
                self.relay_core.set_talker(group, holder.ssrc if holder else None)
                if holder is None:
                    self._event(group, "idle", None)
        self._arm(group)

    def _arm(self, group: str) -> None:
        timer = self._timers.pop(group, None)
        if timer is not None and timer.active():
            timer.cancel()
        deadline = self.arbiters[group].next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            self._timers[group] = self.reactor.callLater(delay, self._fire, group)

    def _fire(self, group: str) -> None:
        self._timers.pop(group, None)
        arbiter = self.arbiters.get(group)
        if arbiter is not None:
            self._deliver(group, arbiter.on_timer(self.reactor.seconds()))

    def _event(self, group: str, kind: str, uri: str | None) -> None:
        if self.control is None:
            return
        message: dict[str, Any] = {"type": "event", "group": group, "kind": kind}
        if uri is not None:
            message["uri"] = uri
        for member in self.store.members(group):
            self.control.push(member.uri, message)

    # --- group manager pushes (worker thread) --------------------------------------------------------------------

    def _imessage_from_thread(self, group: str, member: str, gmk_id: bytes, data: bytes) -> None:
        self.reactor.callFromThread(self._push_imessage, group, member, gmk_id, data)

    def _push_imessage(self, group: str, member: str, gmk_id: bytes, data: bytes) -> None:
        if self.control is None:
            return
        self.control.push(member, {"type": "imessage", "group": group, "gmk_id": gmk_id.hex(), "data": b64(data)})
        self.control.push(member, {"type": "groups", "groups": self._groups_of(member)})
        self._prune_removed(group)

    def _prune_removed(self, group: str) -> None:
        """After a membership change: unbind members no longer in the group and tell them."""
        members = {m.uri for m in self.store.members(group)}
        for binding, _, _ in self.relay_core.members(group):
            if binding.member not in members:
                self._leave(group, binding.member, self.reactor.seconds())
                if self.control is not None:
                    self.control.push(binding.member, {"type": "groups", "groups": self._groups_of(binding.member)})

    def status(self, group: str) -> dict[str, Any]:
        """For the dispatcher API (worker thread): read on the reactor."""
        from twisted.internet.threads import blockingCallFromThread

        return dict(blockingCallFromThread(self.reactor, self._status, group))

    def _status(self, group: str) -> dict[str, Any]:
        members = [m.uri for m in self.store.members(group)]
        arbiter = self.arbiters.get(group)
        return {
            "present": [m for m in members if self.control is not None and self.control.online(m)],
            "joined": sorted(b.member for b, _, _ in self.relay_core.members(group)),
            "talker": arbiter.holder.uri if arbiter and arbiter.holder else None,
            "queue": [p.uri for p in arbiter.queue] if arbiter else [],
        }

    # --- start ---------------------------------------------------------------------------------------------------

    def start(self) -> Any:
        from twisted.internet import defer, endpoints, task
        from twisted.python.threadpool import ThreadPool

        from server.control import ControlServerFactory
        from server.dispatch.api import DispatchApplication, dispatch_tls_context, make_dispatch_site
        from server.kms.service import tls_context
        from server.relay import listen_relay

        reactor = self.reactor
        self.relay, _ = listen_relay(
            reactor,
            self.relay_core,
            self.config.relay_port,
            self.config.host,
            on_floor=self.relay_floor,
            on_dead=self.relay_dead,
            on_joined=self.relay_joined,
        )
        self.control = ControlServerFactory(self, reactor)
        control_endpoint = endpoints.SSL4ServerEndpoint(
            reactor, self.config.control_port, tls_context(self.data.root), interface=self.config.host
        )
        pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-server-worker")
        pool.start()
        reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
        app = DispatchApplication(self.manager, status=self.status, domain=self.config.domain)
        dispatch_endpoint = endpoints.SSL4ServerEndpoint(
            reactor,
            self.config.dispatch_port,
            dispatch_tls_context(self.data.tls_key, self.data.tls_cert),
            interface=self.config.host,
        )
        checker = task.LoopingCall(self._check_key_period, pool)
        checker.clock = reactor

        @defer.inlineCallbacks
        def go() -> Any:
            yield self.agent.provision()  # fresh keys for the server identity and every group at start
            self.agent.start()
            yield control_endpoint.listen(self.control)
            yield dispatch_endpoint.listen(make_dispatch_site(app, pool, reactor.seconds))
            checker.start(KEY_PERIOD_CHECK, now=False)
            print(
                f"ptt-server {self.server_uri} listening: dispatch https://{self.config.host}:{self.config.dispatch_port}"
                f", control {self.config.host}:{self.config.control_port}, relay udp {self.config.host}:"
                f"{self.config.relay_port}",
                flush=True,
            )

        return go()

    def _check_key_period(self, pool: Any) -> Any:
        from twisted.internet.threads import deferToThreadPool

        d = deferToThreadPool(self.reactor, pool, self.manager.check_key_period, self.reactor.seconds())
        d.addErrback(lambda failure: log.error("key period check failed: %s", failure.getErrorMessage()))
        return d


# --- command line --------------------------------------------------------------------------------------------------


def _secret(file: str | None, env: str, prompt: str) -> str:
    if file:
        return Path(file).read_text().rstrip("\r\n")
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt.lower()} given (use a file option or {env})")
    return getpass.getpass(f"{prompt}: ")


def _write_private(path: Path, data: bytes) -> None:
    from server.kms.secrets import write_private_file

    write_private_file(path, data)


def cmd_init(args: argparse.Namespace) -> int:
    from client.keystore import Keystore
    from ptt.kmsformat.enrolment import Enrolment
    from server.groups.store import GroupStore, make_data_key
    from server.kms.material import make_self_signed, write_key_and_certificate

    data = DataDir(Path(args.data))
    if data.config.exists() and not args.force:
        raise CliError(f"{data.root} already holds a server (use --force to start over)")
    enrolment = Enrolment.from_json(Path(args.kms_enrolment).read_bytes())
    password = _secret(args.kms_password_file, "PTT_KMS_PASSWORD", f"KMS password for {args.kms_user}")
    data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data.root, 0o700)
    _write_private(data.kms_password, password.encode() + b"\n")
    _write_private(data.keystore_pass, b64(os.urandom(32)).encode())
    keystore = Keystore(data.keystore, data.keystore_pass.read_bytes())
    keystore.enrolment = enrolment
    keystore.save()
    if not data.data_key.exists():
        make_data_key(data.data_key)
    key, cert = make_self_signed(args.host, san_dns=["localhost"], san_ips=["127.0.0.1"])
    write_key_and_certificate(key, cert, data.tls_key, data.tls_cert)
    domain = args.domain or args.server_uri.partition("@")[2] or "example.org"
    config = ServerConfig(
        server_uri=args.server_uri,
        domain=domain,
        host=args.host,
        dispatch_port=args.dispatch_port,
        control_port=args.control_port,
        relay_port=args.relay_port,
        kms_user=args.kms_user,
    )
    config.save(data.config)
    from server.groups.store import read_data_key

    GroupStore(data.db, read_data_key(data.data_key)).close()
    print(f"ptt-server {args.server_uri} initialised in {data.root} (KMS {enrolment.kms_uri}, account {args.kms_user})")
    print(f"  the KMS account must be keyed for {args.server_uri} and for every group URI it manages:")
    print(f"  ptt-kms grant {args.kms_user} sip:GROUP@{domain}")
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    import time

    from server.groups.store import GroupError, GroupStore, read_data_key

    data = DataDir(Path(args.data))
    if not data.config.exists():
        raise CliError(f"{data.root} holds no server (run init)")
    store = GroupStore(data.db, read_data_key(data.data_key))
    try:
        password = _secret(args.password_file, "PTT_DISPATCH_PASSWORD", f"Password for {args.name}")
        store.add_dispatcher(args.name, password, args.role, now=time.time())
    except GroupError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    print(f"dispatcher {args.name} added ({args.role})")
    return 0


def cmd_client_info(args: argparse.Namespace) -> int:
    data = DataDir(Path(args.data))
    config = ServerConfig.load(data.config)
    info = {
        "host": config.host,
        "control_port": config.control_port,
        "dispatch_port": config.dispatch_port,
        "server_uri": config.server_uri,
        "cert_pem": data.tls_cert.read_text(),
    }
    text = json.dumps(info, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"client info written to {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.python import log as twisted_log

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    twisted_log.PythonLoggingObserver("twisted").start()
    data = DataDir(Path(args.data))
    if not data.config.exists():
        raise CliError(f"{data.root} holds no server (run init)")
    server = PttServer(reactor, data, ServerConfig.load(data.config))
    react: Any = reactor

    def failed(failure: Any) -> None:
        print(f"ptt-server: cannot start: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        react.stop()

    react.callWhenRunning(lambda: server.start().addErrback(failed))
    react.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptt-server", description="PTT group server")
    parser.add_argument("--data", default="var/server", help="data directory (default var/server)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a server data directory")
    init.add_argument("--kms-enrolment", required=True)
    init.add_argument("--kms-user", required=True)
    init.add_argument("--kms-password-file")
    init.add_argument("--server-uri", required=True)
    init.add_argument("--domain")
    init.add_argument("--host", default="127.0.0.1")
    init.add_argument("--dispatch-port", type=int, default=8444)
    init.add_argument("--control-port", type=int, default=8445)
    init.add_argument("--relay-port", type=int, default=8446)
    init.add_argument("--force", action="store_true")
    init.set_defaults(func=cmd_init)
    dispatcher = sub.add_parser("dispatcher", help="dispatcher accounts")
    dsub = dispatcher.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", choices=["dispatcher", "admin"], default="admin")
    add.add_argument("--password-file")
    add.set_defaults(func=cmd_dispatcher)
    info = sub.add_parser("client-info", help="what clients need to connect")
    info.add_argument("--out")
    info.set_defaults(func=cmd_client_info)
    serve = sub.add_parser("serve", help="run the server")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"ptt-server: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ptt-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
