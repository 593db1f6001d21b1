"""Bulk issuance: sealed precomputed key sets, the store's table, ``issue_period`` (resumable, several processes),
keyprov serving them, the progress report, the supervisor's restart limit."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest

from ptt import ts33180
from ptt.crypto import kms
from server.kms import service
from server.kms.bulk import issue_period
from server.kms.issuance import IssuanceDomain, KeySetSealer
from server.kms.material import make_self_signed
from server.kms.prefork import RestartLimit
from server.kms.progress import Progress, format_duration
from server.kms.service import PREFIX, DomainConfig, KmsApplication
from server.kms.store import KmsStore
from tests.postgres import database_url, postgres_server  # noqa: F401 (fixtures)

KMS_URI = "kms.example.org"
KEY_PERIOD = 2592000
DOMAIN = IssuanceDomain(KMS_URI, KEY_PERIOD, 0)
PERIOD = ts33180.period_number(1_790_000_000, KEY_PERIOD, 0)
NOW = float(ts33180.period_bounds(PERIOD, KEY_PERIOD, 0)[0] + 86400)
ALICE = "sip:alice@example.org"


@pytest.fixture(scope="module")
def master() -> kms.MasterSecrets:
    return kms.generate_master_secrets()


@pytest.fixture
def kms_store(database_url: str) -> Iterator[KmsStore]:  # noqa: F811
    s = KmsStore(database_url)
    s.add_service_accounts([(f"u{i}", f"sip:u{i}@example.org") for i in range(6)], now=NOW)
    s.add_service_account("gm", uri=None, now=NOW)
    s.grant("gm", "sip:fire@example.org", now=NOW)
    s.grant("gm", "sip:*@groups.example.org", now=NOW)  # a namespace names no identity: not precomputed
    s.set_disabled("u5", True, now=NOW)  # a disabled account's identity neither
    yield s
    s.close()


def test_sealed_key_sets_open_only_for_their_identity_period_and_uid(master: kms.MasterSecrets) -> None:
    sealer = KeySetSealer(master, DOMAIN)
    user_id, sealed = sealer.derive_sealed(ALICE, PERIOD)
    keys = sealer.open(ALICE, PERIOD, user_id, sealed)
    assert keys is not None
    derived = kms.derive_user_keys(DOMAIN.user_id(ALICE, PERIOD), master)
    assert (keys.ssk, keys.pvt, keys.rsk, keys.identifier) == (derived.ssk, derived.pvt, derived.rsk, user_id)
    assert sealer.open("sip:bob@example.org", PERIOD, user_id, sealed) is None
    assert sealer.open(ALICE, PERIOD + 1, DOMAIN.user_id(ALICE, PERIOD + 1), sealed) is None
    assert sealer.open(ALICE, PERIOD, bytes(32), sealed) is None
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert sealer.open(ALICE, PERIOD, user_id, flipped) is None
    assert KeySetSealer(kms.generate_master_secrets(), DOMAIN).open(ALICE, PERIOD, user_id, sealed) is None
    assert KeySetSealer(master, IssuanceDomain(KMS_URI, KEY_PERIOD, 60)).open(ALICE, PERIOD, user_id, sealed) is None
    assert "ksak" not in repr(sealer).lower() and master.ksak.hex() not in repr(sealer)


def test_keyable_identities_are_own_and_concrete_granted_uris(kms_store: KmsStore) -> None:
    expected = sorted([f"sip:u{i}@example.org" for i in range(5)] + ["sip:fire@example.org"])
    assert kms_store.identities_without_keys(PERIOD) == expected
    assert kms_store.keyable_count() == len(expected)


@pytest.mark.parametrize("workers", [1, 2])
def test_issue_period_is_resumable_and_idempotent(kms_store: KmsStore, master: kms.MasterSecrets, workers: int) -> None:
    # an earlier run that stopped after two identities
    sealer = KeySetSealer(master, DOMAIN)
    first = kms_store.identities_without_keys(PERIOD)[:2]
    kms_store.add_precomputed(PERIOD, [(i, *sealer.derive_sealed(i, PERIOD)) for i in first], now=NOW)
    out = io.StringIO()
    summary = issue_period(
        kms_store,
        master,
        DOMAIN,
        PERIOD,
        workers=workers,
        batch=2,
        progress=lambda total, done: Progress("p", total, out, done=done, tty=False, line_interval=0),
    )
    assert (summary.identities, summary.already, summary.added) == (6, 2, 4)
    assert kms_store.identities_without_keys(PERIOD) == []
    assert kms_store.precomputed_counts() == {PERIOD: 6}
    assert out.getvalue().splitlines()[-1].startswith("p 6/6 100.0%")
    again = issue_period(kms_store, master, DOMAIN, PERIOD, workers=workers)
    assert (again.already, again.added) == (6, 0)
    stored = kms_store.precomputed("sip:u3@example.org", [PERIOD, PERIOD + 1])
    assert list(stored) == [PERIOD]
    assert sealer.open("sip:u3@example.org", PERIOD, *stored[PERIOD]) is not None


def test_purge_deletes_past_periods_only(kms_store: KmsStore, master: kms.MasterSecrets) -> None:
    for period in (PERIOD - 1, PERIOD):
        issue_period(kms_store, master, DOMAIN, period, workers=1)
    assert kms_store.purge_precomputed(PERIOD, now=NOW) == 6
    assert kms_store.precomputed_counts() == {PERIOD: 6}
    assert kms_store.audit_log(1)[0].event == "precomputed-purged"


def _keyprov(app: KmsApplication, now: float = NOW) -> bytes:
    token = app.store.new_service_token("u1", now=now)
    authorization = "Basic " + base64.b64encode(f"u1:{token}".encode()).decode()
    reply = app.handle(method="POST", path=PREFIX + "keyprov", authorization=authorization, body=b"", peer="", now=now)
    assert reply.status == 200
    return reply.body


def test_keyprov_serves_precomputed_keys_equal_to_derived_ones(
    kms_store: KmsStore,
    master: kms.MasterSecrets,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, cert = make_self_signed("signing", san_dns=[], san_ips=[], tls_server=False)
    config = DomainConfig(
        kms_uri=KMS_URI, key_period=KEY_PERIOD, key_period_offset=0, base_url="https://k", allow_basic_login=True
    )
    app = KmsApplication(kms_store, master, config, key, cert)
    from ptt.kmsformat.signing import verify_signed_response

    def key_sets(body: bytes) -> list[tuple[int, bytes, bytes, bytes]]:
        message = verify_signed_response(body, cert).message
        return [(k.key_period_no, k.rsk, k.ssk, k.pvt) for k in message.key_sets]  # type: ignore[union-attr]

    derived = key_sets(_keyprov(app))
    issue_period(kms_store, master, DOMAIN, PERIOD + 1, workers=1)
    calls: list[bytes] = []
    real = kms.derive_user_keys

    def counting(identifier: bytes, m: kms.MasterSecrets) -> kms.UserKeyMaterial:
        calls.append(identifier)
        return real(identifier, m)

    monkeypatch.setattr(service, "derive_user_keys", counting)
    assert key_sets(_keyprov(app)) == derived
    assert calls == [DOMAIN.user_id("sip:u1@example.org", PERIOD)]  # the next period was precomputed
    # a row that does not open (altered) is derived instead, and logged
    with kms_store._tx() as db:
        db.execute("UPDATE precomputed_keys SET sealed = ? WHERE identity_uri = ?", (bytes(370), "sip:u1@example.org"))
    calls.clear()
    assert key_sets(_keyprov(app)) == derived
    assert len(calls) == 2 and "do not open" in caplog.text
    issued = kms_store.issued("sip:u1@example.org")
    assert len(issued) == 6 and {r.period_no for r in issued} == {PERIOD, PERIOD + 1}
    assert sum(1 for e in kms_store.audit_log(1000) if e.event == "keyprov") == 3


def test_progress_lines_and_bar() -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress("period 7", 1000, out, done=100, tty=False, clock=lambda: now[0], line_interval=5)
    now[0] = 10.0
    p.update(500)
    assert out.getvalue() == "period 7 600/1000  60.0%       50/s  ETA 0:00:08\n"
    bar = io.StringIO()
    t = Progress("x", 10, bar, tty=True, clock=lambda: now[0])
    now[0] = 11.0
    t.update(5)
    t.close()
    assert bar.getvalue().startswith("\r[###############...............] x 5/10  50.0%") and bar.getvalue().endswith(
        "\n"
    )
    assert format_duration(3725.4) == "1:02:05"


def test_restart_limit_spaces_restarts_beyond_the_window() -> None:
    limit = RestartLimit(restarts=2, window=60.0)
    for at in (0.0, 1.0):
        assert limit.next_allowed(at) == at
        limit.record(at)
    assert limit.next_allowed(2.0) == 60.0
    assert limit.next_allowed(61.5) == 61.5  # both restarts left the window
