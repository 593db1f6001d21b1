"""A running client picks up renewed keys (issue 18): the shell around ``ptt.keyrollover``.

``provision --watch`` (another process) stores the next key period's keys in the keystore file during the current
period; a client left running for months must use them from the boundary on without a restart. ``KeystoreWatch``
looks at the file's stamp every ``POLL_INTERVAL`` seconds on the reactor (a stat), reads and unseals a changed file
off the reactor thread (scrypt), and puts its key sets into the session's *live* ``Keystore`` object: everything
that asks it for keys (signing, the responder keys tried on an I_MESSAGE, the ad-hoc engine) sees the new ones at
once. Just after each boundary it says whether the new period's keys are held.

What a session does with that: ``watch_session`` (on-network) logs in again when the current period's keys came
late (the group server's rekey at the boundary could not be opened; it delivers the stored GMK again at login);
``watch_adhoc`` runs the ad-hoc engine at once after a reload and after each boundary, so a manager rekeys its
groups under the new period's keys right away. ``KeyUse`` records, for the report, which GMK carried the media heard
and where each GMK came from (``ptt.keyrollover.KeyOrigin``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task, threads
from twisted.python.failure import Failure

from client.keystore import Keystore, KeystoreError
from ptt.keyrollover import POLL_INTERVAL, FileStamp, KeyOrigin, KeystoreTracker, Reloaded, signing_period

if TYPE_CHECKING:
    from client.adhoc import AdhocSession
    from client.session import PttSession

__all__ = ["KeyUse", "KeystoreWatch", "watch_adhoc", "watch_session"]

log = logging.getLogger("ptt.client.keys")

Loader = Callable[..., "defer.Deferred[Any]"]


def _stamp(path: os.PathLike[str] | str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_ino, st.st_mtime_ns, st.st_size)


class KeystoreWatch:
    """Re-reads one identity's keystore when it changes and acts just after each key-period boundary."""

    def __init__(
        self,
        reactor: Any,
        keystore: Keystore,
        uri: str,
        *,
        load: Loader = threads.deferToThread,
        poll: float = POLL_INTERVAL,
    ) -> None:
        if keystore.enrolment is None:
            raise ValueError("the keystore is not enrolled with a KMS")
        self.reactor = reactor
        self.keystore = keystore
        self.uri = uri
        self.domain = keystore.enrolment.certificate.domain()
        # No stamp yet: the file is read once in the background at start (it may have changed since it was opened).
        self.tracker = KeystoreTracker(self.domain, frozenset(keystore.periods(uri)))
        self.reloads = 0
        self._load = load
        self._poll_every = poll
        self._poller: task.LoopingCall | None = None
        self._boundary_timer: Any = None
        # "keys reloaded": called on the reactor with what changed, after the live keystore holds the new key sets.
        # Work that a new key set calls for goes here (e.g. precomputing an RSK's pairing lines).
        self.reloaded_listeners: list[Callable[[Reloaded], None]] = []
        self.boundary_listeners: list[Callable[[int], None]] = []  # just after a boundary: the new period

    def start(self) -> KeystoreWatch:
        self.tracker.boundary(self.reactor.seconds())  # the period we start in is not a boundary
        self._poller = task.LoopingCall(self.poll)
        self._poller.clock = self.reactor
        self._poller.start(self._poll_every, now=True)
        self._arm_boundary()
        return self

    def stop(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._boundary_timer is not None and self._boundary_timer.active():
            self._boundary_timer.cancel()
        self._boundary_timer = None

    # --- the file ------------------------------------------------------------------------------------------------

    def poll(self) -> None:
        stamp = _stamp(self.keystore.path)
        if not self.tracker.should_load(stamp):
            return
        assert stamp is not None
        self.tracker.loading = True
        d = self._load(Keystore.open, self.keystore.path, self.keystore.passphrase)
        d.addCallbacks(self._loaded, self._failed, callbackArgs=(stamp,), errbackArgs=(stamp,))

    def _loaded(self, fresh: Keystore, stamp: FileStamp) -> None:
        live = self.keystore
        if fresh.enrolment is None or fresh.enrolment.certificate.domain() != self.domain:
            # enrolled anew (another KMS, or new domain parameters): the session's domain is fixed at start
            self.tracker.loaded(stamp, self.tracker.held, self.reactor.seconds())
            log.warning("%s: the keystore is now enrolled with another KMS domain: restart to use it", self.uri)
            return
        live.key_sets = fresh.key_sets
        live.last_response = fresh.last_response
        live.external, live.external_time = fresh.external, fresh.external_time
        live.refresh_tokens, live.renewal_slot = fresh.refresh_tokens, fresh.renewal_slot
        result = self.tracker.loaded(stamp, live.periods(self.uri), self.reactor.seconds())
        self.reloads += 1
        if result.changed:
            log.info("%s: keys reloaded: periods %s (added %s, dropped %s)", self.uri,
                     sorted(self.tracker.held), list(result.added), list(result.dropped))  # fmt: skip
        for listener in self.reloaded_listeners:
            listener(result)

    def _failed(self, failure: Failure, stamp: FileStamp) -> None:
        # Keep the keys we hold; the same file is not read again, a rewritten one is.
        self.tracker.loaded(stamp, self.tracker.held, self.reactor.seconds())
        if failure.check(KeystoreError):
            log.warning("%s: keystore not reloaded: %s", self.uri, failure.getErrorMessage())
        else:
            log.error("%s: keystore reload failed: %s", self.uri, failure.getTraceback())

    # --- boundaries ----------------------------------------------------------------------------------------------

    def _arm_boundary(self) -> None:
        now = self.reactor.seconds()
        self._boundary_timer = self.reactor.callLater(max(0.0, self.tracker.next_wakeup(now) - now), self._boundary)

    def _boundary(self) -> None:
        now = self.reactor.seconds()
        period = self.tracker.boundary(now)
        if period is not None:
            if signing_period(self.domain, self.tracker.held, now) is None:
                log.warning("%s: key period %d began without its keys: nothing can be signed or opened for it "
                            "until they are provisioned (ptt-client provision --watch)", self.uri, period)  # fmt: skip
            else:
                log.info("%s: key period %d: signing with its keys", self.uri, period)
            for listener in self.boundary_listeners:
                listener(period)
        self._arm_boundary()


class KeyUse:
    """For the report: where each GMK came from, and which GMK the media heard was under (packets, first, last)."""

    def __init__(self) -> None:
        self.origins: dict[str, dict[str, Any]] = {}  # GMK-ID hex -> KeyOrigin.to_json()
        self.media: dict[str, dict[str, Any]] = {}  # GMK-ID hex -> {"packets", "first", "last"} (wall clock)

    def origin(self, gmk_id: bytes, origin: KeyOrigin) -> None:
        self.origins[gmk_id.hex()] = origin.to_json()

    def heard(self, mki: bytes) -> None:
        now = round(time.time(), 3)
        entry = self.media.setdefault(mki[:4].hex(), {"packets": 0, "first": now, "last": now})
        entry["packets"] += 1
        entry["last"] = now

    def wrap(self, session: Any) -> KeyUse:
        """Count the media ``session`` delivers to its (already set) media listener."""
        inner = session.media_listener

        def listener(group: str, mki: bytes, rtp: bytes) -> None:
            self.heard(mki)
            inner(group, mki, rtp)

        session.media_listener = listener
        return self

    def report(self) -> dict[str, Any]:
        return {"key_origins": self.origins, "media_keys": self.media}


def watch_session(session: PttSession, **options: Any) -> KeystoreWatch:
    """Keep an on-network session's keys current (started; stop it with the session)."""
    watch = KeystoreWatch(session.reactor, session.keystore, session.uri, **options)
    session.key_use.wrap(session)

    def reloaded(result: Reloaded) -> None:
        session.warm_rsk_lines()  # the next period's RSK: its pairing lines ready before its first GMK
        if result.late and session.control is not None:
            # The group server rekeyed every group at the boundary, to keys we did not hold then: log in again and
            # it hands us the stored GMKs, which open now.
            log.warning("%s: keys for period %d came after it began: logging in again for the group keys",
                        session.uri, result.current)  # fmt: skip
            session.control.link.loseConnection()

    watch.reloaded_listeners.append(reloaded)
    return watch.start()


def watch_adhoc(session: AdhocSession, **options: Any) -> KeystoreWatch:
    """Keep an ad-hoc session's keys current: the engine runs at once after a reload and after each boundary (a
    manager rekeys its groups under the new period's keys; ``ptt.keyrollover.rekey_due``)."""
    watch = KeystoreWatch(session.reactor, session.keystore, session.uri, **options)
    session.key_use.wrap(session)
    watch.reloaded_listeners.append(lambda result: session.poke())
    watch.boundary_listeners.append(lambda period: session.poke())
    return watch.start()
