"""Several KMS stores on one database (several processes' worth of connections: the service, its workers, the
CLI), written from several threads at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from server.kms.store import AccountError, KmsStore

URI = "sip:{}@example.org"
THREADS = 4
ROUNDS = 30


@pytest.fixture
def two_stores(database_url: str) -> Iterator[tuple[KmsStore, KmsStore]]:
    first, second = KmsStore(database_url), KmsStore(database_url)
    yield first, second
    first.close()
    second.close()


def _run_together(work: Callable[[int], None], threads: int = THREADS) -> list[BaseException]:
    """``work(n)`` in ``threads`` threads started together; what they raised."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not any(t.is_alive() for t in workers), "a writer hangs"
    return errors


def test_two_stores_see_each_others_accounts_grants_and_records(two_stores: tuple[KmsStore, KmsStore]) -> None:
    service, cli = two_stores  # e.g. the running KMS and ptt-kms in another process
    cli.add_account("alice", "correct horse battery", uri=URI.format("alice"), now=1.0)
    token = cli.add_service_account("ptt-server", uri=URI.format("ptt-server"), now=2.0)
    cli.grant("ptt-server", "sip:*@groups.example.org", now=3.0)
    assert service.account("alice") is not None
    assert service.may_key("ptt-server", "sip:fire@groups.example.org")
    assert service.authenticate("ptt-server", token, now=4.0).username == "ptt-server"
    service.record_issue("ptt-server", "sip:fire@groups.example.org", 7, b"\x01" * 32, now=5.0)
    assert [r.identity_uri for r in cli.issued()] == ["sip:fire@groups.example.org"]
    cli.set_disabled("ptt-server", True, now=6.0)
    assert not service.may_key("ptt-server", "sip:fire@groups.example.org")  # at once, no cache
    cli.revoke("alice", URI.format("alice"), now=7.0)
    assert not service.may_key("alice", URI.format("alice"))
    assert [r.event for r in service.audit_log()] == [
        "account-added",
        "account-added",
        "grant",
        "login",
        "account-disabled",
        "revoke",
    ]


def test_concurrent_writers_keep_consistent_data(two_stores: tuple[KmsStore, KmsStore]) -> None:
    """Four threads on two stores race, round after round, to create the same account, then record an issuance
    and an audit event each. Writers are serialised, so the existence check and the insert of one are never
    interleaved with another's: each account is created once, every loser is told it exists (not a database
    error), and every record written is there exactly once."""
    barrier = threading.Barrier(THREADS)
    created: list[str] = []
    refused: list[str] = []

    def race(n: int) -> None:
        try:
            race_rounds(n)
        except BaseException:
            barrier.abort()  # the others stop at the next round instead of waiting for this thread
            raise

    def race_rounds(n: int) -> None:
        store = two_stores[n % 2]
        for i in range(ROUNDS):
            name = f"racer-{i}"
            barrier.wait(30)
            try:
                store.add_service_account(name, uri=URI.format(name), now=float(i))
                created.append(name)
            except AccountError as exc:
                assert "already exists" in str(exc)
                refused.append(name)
            store.record_issue(name, URI.format(name), i, bytes([n, i]) * 16, now=float(i))
            store.audit("test", username=name, detail=f"thread {n} round {i}", now=float(i))

    errors = _run_together(race)
    assert [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] == []  # the cause first
    assert errors == []
    assert sorted(created) == sorted(f"racer-{i}" for i in range(ROUNDS))  # each account once ...
    assert Counter(refused) == {f"racer-{i}": THREADS - 1 for i in range(ROUNDS)}  # ... the others refused
    first, second = two_stores
    assert [a.username for a in second.accounts()] == sorted(f"racer-{i}" for i in range(ROUNDS))
    assert all(first.grants(f"racer-{i}") == {URI.format(f"racer-{i}"): "self"} for i in range(ROUNDS))
    issued = first.issued()
    assert len(issued) == THREADS * ROUNDS and len({r.uid for r in issued}) == THREADS * ROUNDS
    log = second.audit_log(10 * THREADS * ROUNDS)
    assert Counter(r.event for r in log) == {"account-added": ROUNDS, "test": THREADS * ROUNDS}
    assert len({r.detail for r in log if r.event == "test"}) == THREADS * ROUNDS
