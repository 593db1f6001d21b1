"""The group server as a Twisted service: ``makeService(config, reactor)`` composes the parts.

* the **store thread** (one thread: the group manager and the dispatcher API, one request at a time, in order);
* the **crypto pool** (``server.workers``: one process per core for logins, CSKs and GMK distribution);
* the **KMS client** (the server's own identity and every group identity: ``client.provisioning``);
* the **group call** (``ptt.groupcall`` in its shell ``server.callshell``) behind the relay's UDP port and the
  control channel (TLS);
* the **dispatcher API** (HTTPS) and the key-period check (every minute, on the store thread).

Start-up order: provision the keys (so the server can sign as its groups), then listen.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer, endpoints, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ptt.groupcall import GroupCall
from ptt.groupinfo import RelayAddress
from ptt.keyrollover import BOUNDARY_DELAY, next_boundary
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.relaycore import RelayCore
from server.callshell import CallShell, group_info
from server.gcwatch import GcWatch, freeze_start_up_objects
from server.sqldb import is_postgres_url

log = logging.getLogger("ptt.server")

KEY_PERIOD_CHECK = 60.0
PURGE_INTERVAL = 3600.0
"""Seconds between retention purges of recorded bursts."""
SWITCH_INTERVAL = 0.0005


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ServerConfig:
    """``server.json``. ``listen`` is the address the server binds (all three services); ``public_name`` the DNS
    name or address clients use (what ``client-info`` hands out, what the TLS certificate names); ``relay_public``
    the relay's ``HOST:PORT`` as clients must send to it, if not the public name and the relay port (a NAT or a
    separate address); ``tls_trust`` what clients trust: ``pinned`` (the generated self-signed certificate),
    ``ca`` (the operator's CA bundle, ``tls-ca.pem``) or ``system`` (the system's CAs)."""

    server_uri: str
    domain: str
    listen: str
    dispatch_port: int
    control_port: int
    relay_port: int
    kms_user: str
    public_name: str = ""
    relay_public: str = ""
    tls_trust: str = "pinned"
    database: str = ""
    """The group store: '' for the SQLite file in the data directory, else a URL (``postgresql://…``,
    ``sqlite:///path``; ``server.sqldb``)."""
    node: str = ""
    """This node's name among the nodes sharing a PostgreSQL store (default: public name and control port)."""

    def __post_init__(self) -> None:
        if not self.public_name:  # files written before issue 13: clients were told the listen address
            object.__setattr__(self, "public_name", self.listen)
        if not self.node:  # unique per host and port: several nodes may run on one host
            object.__setattr__(self, "node", re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.public_name}-{self.control_port}"))
        if self.tls_trust not in ("pinned", "ca", "system"):
            raise ConfigError(f"tls_trust must be pinned, ca or system, not {self.tls_trust!r}")
        self.relay_address()

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        """Read ``server.json``; an older file (``host``, no public name) loads with its old meaning."""
        data = json.loads(path.read_text())
        if "host" in data and "listen" not in data:
            data["listen"] = data.pop("host")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: Path) -> None:
        """0600: the database URL may hold a password."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(self.__dict__, indent=1) + "\n")

    def relay_address(self) -> RelayAddress:
        """Where clients send their datagrams: ``relay_public``, else the public name and the relay port."""
        if not self.relay_public:
            return RelayAddress(self.public_name, self.relay_port)
        return RelayAddress(*parse_host_port(self.relay_public, self.relay_port))


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` (a bare IPv6 address has no port); ``ConfigError``."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"not HOST[:PORT]: {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, text)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"not HOST[:PORT]: {text!r}")
    return host, port


def _port(number: str, text: str) -> int:
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ConfigError(f"bad port in {text!r}")
    return int(number)


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "server.json"
        self.db = root / "server.sqlite3"
        self.data_key = root / "data.key"
        self.tls_key = root / "tls-key.pem"
        self.tls_cert = root / "tls-cert.pem"
        self.tls_ca = root / "tls-ca.pem"
        self.keystore = root / "keystore"
        self.keystore_pass = root / "keystore.pass"
        self.kms_password = root / "kms-password"
        self.recordings = root / "recordings"  # recorded bursts, SRTP as forwarded (server.recorder)
        self.messages = root / "messages"  # voice messages kept for their addressees (server.voicemessages)

    def database(self) -> str | Path:
        """Where the group store is: server.json's ``database`` URL, or the SQLite file here."""
        url = json.loads(self.config.read_text()).get("database") if self.config.exists() else None
        return url or self.db


class ServerKeys:
    """The group server's keys from its KMS keystore: its own (for CSKs) and its groups' (to sign GMKs)."""

    def __init__(self, reactor: Any, keystore: Any, agent: Any, domain: KmsDomain, server_uri: str) -> None:
        self.reactor, self.keystore, self.agent = reactor, keystore, agent
        self._domain, self.server_uri = domain, server_uri
        self._failures: dict[str, str] = {}  # group URI -> the KMS's answer when its keys could not be fetched

    def domain(self) -> KmsDomain:
        return self._domain

    def server_keys(self) -> list[IdentityKeys]:
        return list(self.keystore.held_keys(self.server_uri))

    def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
        """On the store thread: a group identity's keys, fetched from the KMS (through the reactor) if missing."""
        from twisted.internet.threads import blockingCallFromThread
        from twisted.python.threadable import isInIOThread

        keys: IdentityKeys | None = self.keystore.current_keys(group_uri, now)
        if keys is not None and (isInIOThread() or self.keystore.identity_keys(group_uri, keys.period_no + 1)):
            return keys
        if not isInIOThread():
            try:
                blockingCallFromThread(self.reactor, self._provision, group_uri)
                self._failures.pop(group_uri, None)
            except Exception as exc:
                log.warning("keys for %s not provisioned: %s", group_uri, exc)
                self._failures[group_uri] = str(exc)
        keys = self.keystore.current_keys(group_uri, now)
        return keys

    def missing_reason(self, group_uri: str) -> str | None:
        """Why the last attempt to fetch the group identity's keys from the KMS failed (its error), if it did."""
        return self._failures.get(group_uri)

    def _provision(self, identity: str) -> Any:
        if identity not in self.agent.identities:
            self.agent.identities.append(identity)
        return self.agent.provision_identity(identity)


class RelayService(service.Service):
    def __init__(
        self, reactor: Any, shell: CallShell, core: RelayCore, config: ServerConfig, recorder: Any = None
    ) -> None:
        self.reactor, self.shell, self.core, self.config = reactor, shell, core, config
        self.recorder = recorder  # server.recorder.Recorder: recorded bursts are written there (issue 17)
        self._purger: Any = None
        self.port: Any = None

    def startService(self) -> None:
        from server.relay import listen_relay

        super().startService()
        relay, self.port = listen_relay(
            self.reactor,
            self.core,
            self.config.relay_port,
            self.config.listen,
            on_floor=self.shell.relay_floor,
            on_dead=self.shell.relay_dead,
            on_joined=self.shell.relay_joined,
        )
        self.shell.relay = relay
        if self.recorder is not None:
            relay.on_bursts = self.recorder.submit
            self._purger = task.LoopingCall(lambda: self.recorder.purge(self.reactor.seconds()))
            self._purger.clock = self.reactor
            self._purger.start(PURGE_INTERVAL, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        if self.recorder is not None and self.shell.relay is not None:
            self.core.tap.flush()  # the bursts under way are recorded too
            self.shell.relay.drain_bursts()
            self.recorder.stop()
        return self.port.stopListening() if self.port is not None else None


class GroupServer(service.MultiService):
    """Provisions, then starts its listeners; ``ready`` fires once they listen."""

    def __init__(self, reactor: Any, config: ServerConfig, parts: dict[str, Any]) -> None:
        super().__init__()
        self.reactor, self.config, self.parts = reactor, config, parts
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._checker = task.LoopingCall(self._check_key_period)
        self._checker.clock = reactor
        self._boundary: Any = None  # a timer just after the next key-period boundary: rekey then, not a minute late
        self.gc_watch = GcWatch()

    @property
    def shell(self) -> CallShell:
        shell: CallShell = self.parts["shell"]
        return shell

    def startService(self) -> None:
        service.Service.startService(self)  # the children start once the keys are there
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self.ready.errback)

    async def _start(self) -> None:
        parts = self.parts
        await parts["agent"].provision()  # fresh keys for the server identity and every group
        parts["agent"].start()
        for child in self:
            child.startService()
        if parts.get("cluster") is not None:
            await parts["cluster"].start()  # leases, heartbeat and notifications once the ports are open
        self._checker.start(KEY_PERIOD_CHECK, now=False)
        self._arm_boundary()
        frozen = freeze_start_up_objects()
        log.info("%d start-up objects moved out of the garbage collector's way", frozen)
        self.gc_watch.install()  # after the freeze's own full collection, which is part of start-up
        c = self.config
        relay = c.relay_address()
        print(
            f"ptt-server {c.server_uri} listening: {c.listen} dispatch {c.dispatch_port}, control {c.control_port}, "
            f"relay udp {c.relay_port}; clients use {c.public_name} (relay {relay.host}:{relay.port}) "
            f"({parts['pool'].workers} crypto workers)",
            flush=True,
        )

    def stopService(self) -> Any:
        if self._checker.running:
            self._checker.stop()
        if self._boundary is not None and self._boundary.active():
            self._boundary.cancel()
        self.gc_watch.uninstall()
        if self.parts.get("cluster") is not None:
            self.parts["cluster"].stop()  # the leases expire now: the other nodes take the groups at once
        d = super().stopService() if self.running else defer.succeed(None)

        def close(result: object) -> object:
            self.parts["store_pool"].stop()
            self.parts["keys_pool"].stop()
            self.parts["pool"].close()
            self.parts["store"].close()
            return result

        return defer.maybeDeferred(lambda: d).addBoth(close)

    def _arm_boundary(self) -> None:
        now = self.reactor.seconds()
        at = next_boundary(self.parts["manager"].keys.domain(), now) + BOUNDARY_DELAY
        self._boundary = self.reactor.callLater(at - now, self._at_boundary)

    def _at_boundary(self) -> None:
        self._check_key_period()
        self._arm_boundary()

    def _check_key_period(self) -> Any:
        manager, pool, cluster = self.parts["manager"], self.parts["store_pool"], self.parts.get("cluster")
        # With several nodes, each rekeys the groups it serves (else every node would make a new GMK for each).
        serves = (lambda group: group in cluster.ownership.held) if cluster is not None else None
        d = deferToThreadPool(self.reactor, pool, manager.check_key_period, self.reactor.seconds(), serves)
        d.addErrback(lambda failure: log.error("key period check failed: %s", failure.getErrorMessage()))
        return d


def makeService(config: ServerConfig, reactor: Any, data: DataDir, *, workers: int | None = None) -> GroupServer:
    """The whole group server for ``data`` (its ``server.json`` is ``config``), on ``reactor``."""
    from client.keystore import Keystore
    from client.provisioning import ProvisioningAgent
    from server.control import ControlServerFactory
    from server.dispatch.api import DispatchApplication, make_dispatch_site
    from server.dispatch.stream import EventStream, with_events
    from server.groups.manager import GroupManager
    from server.groups.store import GroupStore, read_data_key
    from server.history import HistoryRequests
    from server.recorder import Recorder
    from server.relay import relay_core_from_environment
    from server.tls import server_tls_options
    from server.voicemessages import VoiceMessages
    from server.workers import CryptoPool

    # The store thread and the pool's result thread share the GIL with the reactor: a thread busy in Python keeps
    # it for up to the switch interval (5 ms by default) each time the reactor gives it up for a system call, so a
    # floor message would wait several such turns. 0.5 ms bounds that wait; the store thread barely notices.
    sys.setswitchinterval(SWITCH_INTERVAL)
    keystore = Keystore.open(data.keystore, data.keystore_pass.read_bytes())
    if keystore.enrolment is None:
        raise ConfigError("the server's keystore is not enrolled with a KMS (run init)")
    domain = keystore.enrolment.certificate.domain()
    store = GroupStore(data.database(), read_data_key(data.data_key))
    records = store.groups()
    identities = [config.server_uri, *[g.uri for g in records]]
    keys_pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-server-keys")  # KMS responses' checks, sealing
    keys_pool.start()
    agent = ProvisioningAgent(
        reactor,
        keystore,
        config.kms_user,
        data.kms_password.read_text().strip(),
        identities,
        offload=lambda function, *args: deferToThreadPool(reactor, keys_pool, function, *args),
    )
    keys = ServerKeys(reactor, keystore, agent, domain, config.server_uri)
    pool = CryptoPool(reactor, workers, domains=[domain])
    store_pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-server-store")
    store_pool.start()
    relay_core = relay_core_from_environment(os.environ)
    call = GroupCall(relay_core, config.relay_address())
    call.load(group_info(record, store.members(record.uri), store.alerts(record.uri)) for record in records)
    manager = GroupManager(store, keys, distributor=pool.distributor)
    shell = CallShell(
        reactor,
        call,
        server_uri=config.server_uri,
        domain=domain,
        server_keys=keys.server_keys,
        manager=manager,
        pool=pool,
        store_pool=store_pool,
    )
    manager.on_change = shell.change_from_thread
    shell.control = ControlServerFactory(shell, reactor)
    cluster = None
    if is_postgres_url(str(data.database())):
        from server.cluster.setup import make_cluster_node

        cluster = make_cluster_node(reactor, config, data, shell, store)
        shell.cluster = cluster
    tls = server_tls_options(data.tls_key, data.tls_cert)
    parts = {
        "agent": agent,
        "pool": pool,
        "store_pool": store_pool,
        "keys_pool": keys_pool,
        "store": store,
        "manager": manager,
        "shell": shell,
        "cluster": cluster,
    }
    top = GroupServer(reactor, config, parts)
    recorder = Recorder(store, data.recordings)
    shell.history = HistoryRequests(reactor, store, recorder, store_pool)
    shell.voice_messages = VoiceMessages(
        reactor,
        store,
        data.messages,
        store_pool,
        domain=domain,
        verify=pool.run,
        online=shell.control.online,
        push=shell.control.push,
    )
    if cluster is not None:
        shell.voice_messages.elsewhere = cluster.push_elsewhere
    message_purge = TimerService(
        PURGE_INTERVAL,
        lambda: deferToThreadPool(reactor, store_pool, shell.voice_messages.purge, reactor.seconds()).addErrback(
            lambda failure: log.error("voice message purge failed: %s", failure.getErrorMessage())
        ),
    )
    message_purge.clock = reactor
    message_purge.setServiceParent(top)
    RelayService(reactor, shell, relay_core, config, recorder).setServiceParent(top)
    control = endpoints.SSL4ServerEndpoint(reactor, config.control_port, tls, interface=config.listen)
    _endpoint_service(control, shell.control).setServiceParent(top)
    reserved = (config.server_uri, keystore.enrolment.kms_uri)  # wildcards are refused whatever this says
    app = DispatchApplication(
        manager, status=shell.status, domain=config.domain, reserved=reserved, node_stats=shell.node_stats
    )
    shell.dispatch_stream = EventStream(reactor, app, shell, store_pool)
    site = with_events(make_dispatch_site(app, store_pool, reactor.seconds), shell.dispatch_stream, reactor.seconds)
    dispatch = endpoints.SSL4ServerEndpoint(reactor, config.dispatch_port, tls, interface=config.listen)
    _endpoint_service(dispatch, site).setServiceParent(top)
    return top


def _endpoint_service(endpoint: Any, factory: Any) -> service.Service:
    from twisted.application.internet import StreamServerEndpointService

    listening = StreamServerEndpointService(endpoint, factory)
    listening._raiseSynchronously = True  # a port in use stops the start-up instead of being logged only
    return listening
