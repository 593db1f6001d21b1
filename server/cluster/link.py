"""A node's connections to PostgreSQL for the cluster, each on its own thread so none waits on another and the
reactor waits on none:

* **rounds** (one thread): heartbeat, lease renewal and claims, the leases read back (``database.run_round``);
* **out** (one thread): NOTIFY to one node or to all, presence updates;
* **queries** (one thread): dispatchers' presence queries;
* **in** (a daemon thread): LISTEN on the broadcast channel and this node's own, handing each payload to the
  reactor; it reconnects on its own and says so (``on_listening``), because notifications sent while it was
  away are lost and the node must re-read what they would have told it.

A failure is logged at most every few seconds and never raised into the reactor: a round that fails is a round
that did not renew (``RoundResult.renewed`` False), and the node fences itself when its deadline passes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ptt.cluster import LEASE_TIME, NodeInfo, RoundResult
from server.cluster import database

log = logging.getLogger("ptt.server.cluster")

LOG_EVERY = 5.0


class _Connection:
    """One lazily (re)opened connection, used by one thread at a time."""

    def __init__(self, url: str, application: str) -> None:
        self.url, self.application = url, application
        self.conn: Any = None
        self.lock = threading.Lock()

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            if self.conn is None or self.conn.closed:
                self.conn = database.connect(self.url, application=self.application)
            try:
                return function(self.conn, *args)
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


class ClusterLink:
    def __init__(
        self,
        reactor: Any,
        url: str,
        me: NodeInfo,
        *,
        on_message: Callable[[bytes], None],
        on_listening: Callable[[], None],
        lease_time: float = LEASE_TIME,
    ) -> None:
        self.reactor, self.url, self.me, self.lease_time = reactor, url, me, lease_time
        self.on_message, self.on_listening = on_message, on_listening
        self._rounds = _Connection(url, f"ptt-server {me.name} rounds")
        self._out = _Connection(url, f"ptt-server {me.name} out")
        self._query = _Connection(url, f"ptt-server {me.name} queries")
        self._round_pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-cluster-rounds")
        self._out_pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-cluster-out")
        self._query_pool = ThreadPool(minthreads=1, maxthreads=1, name="ptt-cluster-queries")
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self._last_log: dict[str, float] = {}
        self.last_renewal = float("-inf")
        """Monotonic time at which the last committed renewal was sent, set by the round thread as soon as it
        commits (a float: read by the reactor without a lock)."""

    # -- life ------------------------------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Create the tables if needed and clear this node's stale presence (on the round thread), then listen."""
        for pool in (self._round_pool, self._out_pool, self._query_pool):
            pool.start()

        def prepare() -> None:
            self._rounds.run(database.create_schema)
            self._rounds.run(database.reset_presence, self.me.name)

        d = deferToThreadPool(self.reactor, self._round_pool, prepare)
        d.addCallback(lambda _: self._start_listener())
        return d

    def _start_listener(self) -> None:
        self._listener = threading.Thread(target=self._listen, name="ptt-cluster-in", daemon=True)
        self._listener.start()

    def stop(self) -> None:
        """Leave the cluster (leases expire at once for the others to take), then close everything. Blocking:
        called when the process stops."""
        self._stopping.set()
        try:
            self._out.run(database.leave_cluster, self.me.name)
        except Exception as exc:
            log.warning("could not leave the cluster cleanly (%s): the others take over when the leases expire", exc)
        for pool in (self._round_pool, self._out_pool, self._query_pool):
            pool.stop()
        for connection in (self._rounds, self._out, self._query):
            connection.close()

    # -- rounds ------------------------------------------------------------------------------------------------------

    def run_round(self, claims: Sequence[str], reclaims: Sequence[str] = ()) -> defer.Deferred[RoundResult]:
        return deferToThreadPool(self.reactor, self._round_pool, self._round, list(claims), list(reclaims))

    def _round(self, claims: list[str], reclaims: list[str]) -> RoundResult:
        # Before the statement: the local deadline must come before the database's. Monotonic: a step of the wall
        # clock must not move the deadline (ClusterNode keeps the ownership on the same clock).
        started = time.monotonic()
        try:
            nodes, leases = self._rounds.run(
                database.run_round, self.me, claims, self.lease_time, reclaims, lambda: self._renewed(started)
            )
        except Exception as exc:
            self._log("round", "cluster round failed (%s): this node's groups stop when its leases run out", exc)
            return RoundResult(started, False)
        return RoundResult(started, True, nodes, leases)

    def _renewed(self, started: float) -> None:
        self.last_renewal = started

    # -- out ----------------------------------------------------------------------------------------------------------

    def send(self, channel: str, payload: bytes) -> None:
        d = deferToThreadPool(self.reactor, self._out_pool, self._out.run, database.notify, channel, payload)
        d.addErrback(lambda failure: self._log("send", "cluster message not sent: %s", failure.getErrorMessage()))

    def presence(self, online: Sequence[str], offline: Sequence[str]) -> None:
        d = deferToThreadPool(
            self.reactor, self._out_pool, self._out.run, database.set_presence, self.me.name, online, offline
        )
        d.addErrback(lambda failure: self._log("presence", "presence not recorded: %s", failure.getErrorMessage()))

    def forget_group(self, group: str) -> None:
        d = deferToThreadPool(self.reactor, self._out_pool, self._out.run, database.forget_group, group)
        d.addErrback(lambda failure: self._log("forget", "lease not removed: %s", failure.getErrorMessage()))

    def present(self, members: Sequence[str]) -> defer.Deferred[set[str]]:
        """Which members are online at any live node (empty if the database cannot say)."""

        def read() -> set[str]:
            try:
                return set(self._query.run(database.present, list(members)))
            except Exception as exc:
                self._log("present", "presence not read: %s", exc)
                return set()

        return deferToThreadPool(self.reactor, self._query_pool, read)

    # -- in ------------------------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        channels = (database.BROADCAST_CHANNEL, database.node_channel(self.me.name))
        while not self._stopping.is_set():
            conn = None
            try:
                conn = database.connect(self.url, application=f"ptt-server {self.me.name} listen")
                for channel in channels:
                    conn.execute(f"LISTEN {channel}")
                self.reactor.callFromThread(self.on_listening)
                while not self._stopping.is_set():
                    for note in conn.notifies(timeout=0.5):
                        self.reactor.callFromThread(self.on_message, note.payload.encode())
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._log("listen", "cluster notifications lost (%s): reconnecting", exc)
                time.sleep(0.5)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _log(self, key: str, text: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[key] = now
            log.warning(text, *args)
