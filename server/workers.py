"""The group server's crypto off the reactor: a process pool, one worker per core, for every ECCSI and SAKKE job.

* verifying a control-channel login (one ECCSI verification),
* opening a CSK I_MESSAGE (ECCSI verification + SAKKE decapsulation, ~8 ms),
* building and signing GMK I_MESSAGEs (one SAKKE encapsulation per member; ``GroupKeyDistributor`` on this pool).

Workers are ``forkserver`` children (no fork of a running reactor), build their fixed-base tables once in the
initializer and run at a lower scheduling priority (``nice``), so that on a machine whose cores are all busy with
key distribution the reactor — relay, floor control — still gets the CPU when a packet arrives. Results come
back to the reactor thread as Deferreds.

Worker functions return plain values or raise plain ``ValueError``-derived errors with a message, which pickle
across the process boundary (exceptions with extra constructor arguments would not).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from twisted.internet import defer

from ptt.control import Authenticated, verify_auth
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import MAX_CLOCK_SKEW, IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from ptt.srtcp import CskKeys
from ptt.ts33180 import KeyPurpose
from server.keydistribution import GroupKeyDistributor, warm_tables

log = logging.getLogger("ptt.server.workers")

WORKER_NICE = 10
Result = TypeVar("Result")


class CskRefused(ValueError):
    """The CSK I_MESSAGE did not open (the message says why)."""


def _initialise(domains: tuple[KmsDomain, ...], nice: int) -> None:
    if nice:
        with contextlib.suppress(OSError):  # not allowed here: run at the normal priority
            os.nice(nice)
    warm_tables(domains)


def open_csk(
    data: bytes,
    member: str,
    responder: Sequence[IdentityKeys],
    domain: KmsDomain,
    now: float,
    max_age: float,
    max_skew: float = MAX_CLOCK_SKEW,
) -> CskKeys:
    """Open a member's CSK I_MESSAGE addressed to the server (runs in a worker): its time at most ``max_age``
    seconds old and ``max_skew`` ahead. The caller keeps the replay cache: it checks before (cheaply, on the
    parse) and remembers after."""
    try:
        received = receive_i_message(
            data,
            responder=list(responder),
            expected_initiators=member,
            trusted_kms={domain.kms_uri: domain},
            now=now,
            replay_cache=ReplayCache(capacity=1),
            max_age=max_age,
            max_skew=max_skew,
        )
    except MikeyError as exc:
        raise CskRefused(str(exc)) from None
    if received.purpose != KeyPurpose.CSK:
        raise CskRefused(f"expected a CSK, got a {received.purpose.name}")
    return CskKeys(received.key, received.key_id, received.rand)


def verify_login(
    message: dict[str, Any], nonce: bytes, server_uri: str, domain: KmsDomain, now: float
) -> Authenticated:
    """The login's ECCSI signature (runs in a worker); raises AuthError."""
    return verify_auth(message, nonce, server_uri, domain, now)


class CryptoPool:
    """``workers`` processes (default: one per core); :meth:`run` returns a Deferred fired on the reactor."""

    def __init__(
        self, reactor: Any, workers: int | None = None, domains: Sequence[KmsDomain] = (), nice: int = WORKER_NICE
    ) -> None:
        self.reactor = reactor
        self.workers = workers or os.cpu_count() or 1
        context = multiprocessing.get_context("forkserver")
        self.executor = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_initialise, initargs=(tuple(domains), nice)
        )
        self.pending = 0
        self.distributor = GroupKeyDistributor(executor=self.executor, workers=self.workers)

    def run(self, function: Callable[..., Result], *args: Any) -> defer.Deferred[Result]:
        d: defer.Deferred[Result] = defer.Deferred()
        self.pending += 1

        def done(future: Future[Result]) -> None:  # on a pool thread: hand the outcome to the reactor
            self.reactor.callFromThread(self._settle, d, future)

        self.executor.submit(function, *args).add_done_callback(done)
        return d

    def _settle(self, d: defer.Deferred[Result], future: Future[Result]) -> None:
        self.pending -= 1
        error = future.exception()
        if error is not None:
            d.errback(error)
        else:
            d.callback(future.result())

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
