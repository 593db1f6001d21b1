"""Bulk issuance (``ptt-kms issue``): the key sets of one period for every keyable identity, computed ahead of the
period's rollover in several processes and kept sealed in the store (``server.kms.issuance``), so keyprov then
opens them instead of deriving.

The master secrets go to each worker process once (its initializer); the workers derive and seal chunks of
identities while this process commits each chunk in one transaction. A run asks the store which identities still
lack a key set of the period, so an interrupted run continues where it stopped and a repeated run adds only new
identities (one row per identity and period).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from ptt.crypto.kms import MasterSecrets
from server.kms.issuance import IssuanceDomain, KeySetSealer
from server.kms.progress import Progress
from server.kms.store import KmsStore

__all__ = ["BATCH", "IssueSummary", "issue_period"]

BATCH = 250
"""Identities per chunk of work and per committed transaction."""

Rows = list[tuple[str, bytes, bytes]]


@dataclass(frozen=True)
class IssueSummary:
    period: int
    identities: int  # keyable identities in all
    already: int  # those that had a key set of the period before this run
    added: int
    seconds: float
    workers: int

    @property
    def rate(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


_worker_sealer: KeySetSealer | None = None  # in each worker process, made once by _start_worker


def _start_worker(master: MasterSecrets, domain: IssuanceDomain) -> None:
    global _worker_sealer
    _worker_sealer = KeySetSealer(master, domain)


def _derive_chunk(identities: Sequence[str], period: int) -> Rows:
    sealer = _worker_sealer
    assert sealer is not None, "the worker was not started with _start_worker"
    return [(identity, *sealer.derive_sealed(identity, period)) for identity in identities]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def issue_period(
    store: KmsStore,
    master: MasterSecrets,
    domain: IssuanceDomain,
    period: int,
    *,
    workers: int,
    batch: int = BATCH,
    progress: Callable[[int, int], Progress] | None = None,
    clock: Callable[[], float] = time.time,
) -> IssueSummary:
    """Precompute and store the key sets of ``period`` for every keyable identity that lacks one, in ``workers``
    processes (1: in this process). ``progress(total, done)`` makes the progress report."""
    started = time.monotonic()
    total = store.keyable_count()
    pending = store.identities_without_keys(period)
    already = max(total - len(pending), 0)
    report = progress(total, already) if progress is not None else None
    added = 0

    def commit(rows: Rows) -> None:
        nonlocal added
        added += store.add_precomputed(period, rows, now=clock())
        if report is not None:
            report.update(len(rows))

    try:
        if workers <= 1:
            _start_worker(master, domain)
            for chunk in _chunks(pending, batch):
                commit(_derive_chunk(chunk, period))
        else:
            _issue_in_processes(pending, period, master, domain, workers, batch, commit)
    finally:
        if report is not None:
            report.close()
    return IssueSummary(period, total, already, added, time.monotonic() - started, max(workers, 1))


def _issue_in_processes(
    pending: Sequence[str],
    period: int,
    master: MasterSecrets,
    domain: IssuanceDomain,
    workers: int,
    batch: int,
    commit: Callable[[Rows], None],
) -> None:
    # forkserver: the workers do not inherit this process's threads (a PostgreSQL pool's) or its store
    context = multiprocessing.get_context("forkserver")
    chunks = _chunks(pending, batch)
    in_flight: set[Future[Rows]] = set()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(master, domain)) as pool:
        try:
            while True:
                while len(in_flight) < 2 * workers:  # keep every worker busy, and memory bounded
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    in_flight.add(pool.submit(_derive_chunk, chunk, period))
                if not in_flight:
                    return
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    commit(future.result())
        except BaseException:  # interrupted: what is committed stays, the next run goes on from there
            for future in in_flight:
                future.cancel()
            raise
