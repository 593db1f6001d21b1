"""Builds GMK I_MESSAGEs for many members on every core (SAKKE encapsulation dominates: ~2 ms a member).

A process pool: each worker builds the fixed-base tables once (P, g, G, and each domain's Z and KPAK) and
then serves chunks of members. The pure work is ``ptt.groupkeys.build_gmk_messages``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from types import TracebackType

from ptt.crypto import eccsi, sakke
from ptt.groupkeys import GroupKey, build_gmk_messages
from ptt.mikey.imessage import IdentityKeys, KmsDomain


def warm_tables(domains: Iterable[KmsDomain] = ()) -> None:
    """Build the precomputed tables now rather than on the first message."""
    for domain in domains:
        sakke.encapsulate(bytes(16), b"\x01", domain.z)
        eccsi.verify(b"", bytes(129), b"\x01", domain.kpak)
    eccsi._g_table()
    sakke._p_table()


def _work(
    manager: IdentityKeys,
    group_key: GroupKey,
    members: Sequence[str],
    now: float,
    member_domains: Mapping[str, KmsDomain],
) -> dict[str, bytes]:
    return build_gmk_messages(manager, group_key, members, now=now, member_domains=member_domains)


class GroupKeyDistributor:
    """``with GroupKeyDistributor(workers=2) as d: d.distribute(manager, key, members, now=...)``."""

    def __init__(
        self, workers: int | None = None, domains: Sequence[KmsDomain] = (), executor: Executor | None = None
    ) -> None:
        """``executor``: a pool of worker processes owned by the caller (``server.workers.CryptoPool``), used
        for every distribution however small; otherwise a pool of ``workers`` processes of its own (none for 1)."""
        self.workers = workers or os.cpu_count() or 1
        self._executor: Executor | None = executor
        self._owns_executor = executor is None
        if executor is None and self.workers > 1:
            context = multiprocessing.get_context("forkserver")
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=warm_tables, initargs=(tuple(domains),)
            )
        else:
            warm_tables(domains)

    def distribute(
        self,
        manager: IdentityKeys,
        group_key: GroupKey,
        members: Sequence[str],
        *,
        now: float | None = None,
        member_domains: Mapping[str, KmsDomain] | None = None,
    ) -> dict[str, bytes]:
        when = time.time() if now is None else now
        domains = dict(member_domains or {})
        if self._executor is None or not members:
            return build_gmk_messages(manager, group_key, members, now=when, member_domains=domains)
        chunk = max(1, -(-len(members) // (self.workers * 4)))
        futures = [
            self._executor.submit(_work, manager, group_key, members[i : i + chunk], when, domains)
            for i in range(0, len(members), chunk)
        ]
        result: dict[str, bytes] = {}
        for future in futures:
            result.update(future.result())
        return result

    @property
    def parallel(self) -> bool:
        """True if messages are built in worker processes (never on the calling thread)."""
        return self._executor is not None

    def close(self) -> None:
        if self._executor is not None and self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> GroupKeyDistributor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
