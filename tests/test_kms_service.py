"""The KMS web service: ``KmsApplication.handle`` driven directly (time injected), and its twisted.web adapter.

A KMS is built in-process in a temporary directory (SQLite store, fresh master secrets, a self-signed XML-signing
certificate). Every reply the helper ``call`` sees is checked to be a signed document that verifies with the pinned
signing certificate and to carry no password. Password hashing is made cheap (``passwords.SCRYPT_N``) so that the many
logins cost little.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ptt import ts33180
from ptt.crypto import kms
from ptt.kmsformat.model import (
    KmsCertCache,
    KmsCertificate,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsRequest,
    KmsResponse,
    SignatureInvalid,
)
from ptt.kmsformat.signing import verify_signed_response
from ptt.kmsformat.validation import check_init, check_key_prov
from ptt.kmsformat.xml import certificate_to_xml, request_to_xml
from server.accounts import passwords
from server.kms import service, store
from server.kms.cli import domain_certificate
from server.kms.material import make_self_signed
from server.kms.service import (
    IP_FAILURE_LIMIT,
    IP_FAILURE_WINDOW,
    PREFIX,
    DomainConfig,
    KmsApplication,
)
from server.kms.site import make_site
from server.kms.store import KmsStore
from server.web import MAX_BODY, HttpReply, LimitedRequest

KMS_URI = "kms.example.org"
OTHER_KMS_URI = "kms.other.example.net"
BASE_URL = "https://127.0.0.1:8443"
KEY_PERIOD = 2592000
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
GROUP = "sip:fire-ops@example.org"
PASSWORDS = {"alice": "alice's long password", "bob": "bob-password-1234", "gm": "group manager secret"}
URIS = {"alice": ALICE, "bob": BOB, "gm": "sip:gm@example.org"}
PEER = "192.0.2.10"

PERIOD_N = ts33180.period_number(1_790_000_000, KEY_PERIOD, 0)
START, END = ts33180.period_bounds(PERIOD_N, KEY_PERIOD, 0)
NOW = float(START + 86400 + 0.25)  # a day into period N

INIT = PREFIX + "init"
KEYPROV = PREFIX + "keyprov"
CERTCACHE = PREFIX + "certcache"


@dataclass(frozen=True)
class Signer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@pytest.fixture(scope="module")
def master() -> kms.MasterSecrets:
    return kms.generate_master_secrets()


@pytest.fixture(scope="module")
def other_master() -> kms.MasterSecrets:
    return kms.generate_master_secrets()


@pytest.fixture(scope="module")
def signer() -> Signer:
    key, cert = make_self_signed("ptt KMS response signing", san_dns=[], san_ips=[], tls_server=False)
    return Signer(key, cert)


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture
def kms_store(database_url: str, cheap_passwords: None) -> Iterator[KmsStore]:
    """The store on each backend (SQLite, PostgreSQL): every test of the service runs on both."""
    s = KmsStore(database_url)
    for name, password in PASSWORDS.items():
        s.add_account(name, password, uri=URIS[name], now=NOW - 1000)
    yield s
    s.close()


@pytest.fixture
def app(kms_store: KmsStore, master: kms.MasterSecrets, signer: Signer) -> KmsApplication:
    # HTTP Basic (the login of clients from before issue 14) is on here: these tests are about its rules, which the
    # IdMS's password grant shares (tests/test_kms_token.py)
    config = DomainConfig(
        kms_uri=KMS_URI, key_period=KEY_PERIOD, key_period_offset=0, base_url=BASE_URL, allow_basic_login=True
    )
    return KmsApplication(kms_store, master, config, signer.key, signer.cert)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def login(name: str) -> str:
    return basic(name, PASSWORDS[name])


def call(
    app: KmsApplication,
    path: str,
    authorization: str | None,
    body: bytes = b"",
    *,
    method: str = "POST",
    peer: str = PEER,
    now: float = NOW,
) -> HttpReply:
    """``app.handle``; every reply must be signed by the KMS, verify, and carry no password."""
    reply = app.handle(method=method, path=path, authorization=authorization, body=body, peer=peer, now=now)
    for name, password in PASSWORDS.items():
        assert password.encode() not in reply.body
        assert basic(name, password)[6:].encode() not in reply.body
    verify_signed_response(reply.body, app.signing_cert)
    assert reply.headers["Content-Type"].startswith("application/xml")
    return reply


def response(reply: HttpReply, app: KmsApplication) -> KmsResponse:
    return verify_signed_response(reply.body, app.signing_cert)


def error_of(reply: HttpReply, app: KmsApplication) -> tuple[int, str, str]:
    """(code, message, UserUri) of a signed KmsError reply."""
    r = response(reply, app)
    assert r.error is not None and r.message is None
    assert r.kms_uri == KMS_URI
    return r.error.code, r.error.message, r.user_uri


def request_body(user_uri: str, *, kms_uri: str = KMS_URI, path: str = KEYPROV) -> bytes:
    return request_to_xml(KmsRequest(user_uri, kms_uri, datetime.fromtimestamp(NOW, UTC), BASE_URL + path))


def key_sets(reply: HttpReply, app: KmsApplication) -> tuple[KmsKeySet, ...]:
    message = response(reply, app).message
    assert isinstance(message, KmsKeyProv)
    return message.key_sets


# --- happy paths ---------------------------------------------------------------------------------------------


def test_init_returns_the_domain_certificate(app: KmsApplication, master: kms.MasterSecrets) -> None:
    reply = call(app, INIT, login("alice"))
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "no-store"
    r = response(reply, app)
    assert (r.user_uri, r.kms_uri, r.client_req_url) == (ALICE, KMS_URI, BASE_URL + INIT)
    assert r.time == datetime.fromtimestamp(NOW, UTC)  # sub-second precision (see test_provisioning)
    assert isinstance(r.message, KmsInit)
    assert r.message.certificate == app.certificate
    # the same certificate the CLI exports for enrolment, with this master's public keys
    assert app.certificate == domain_certificate(KMS_URI, KEY_PERIOD, 0, master.kpak, master.z_public)
    assert app.certificate.pub_auth_key == master.kpak and app.certificate.pub_enc_key == master.z_public
    now = datetime.fromtimestamp(NOW, UTC)
    assert check_init(r, expected_kms_uri=KMS_URI, expected_user_uri=ALICE, now=now) == app.certificate


def test_keyprov_issues_current_and_next_period(app: KmsApplication, kms_store: KmsStore) -> None:
    reply = call(app, KEYPROV, login("alice"))
    assert reply.status == 200
    r = response(reply, app)
    assert r.user_uri == ALICE and r.client_req_url == BASE_URL + KEYPROV
    sets = key_sets(reply, app)
    assert [(k.user_uri, k.key_period_no) for k in sets] == [(ALICE, PERIOD_N), (ALICE, PERIOD_N + 1)]
    for k in sets:
        assert k.kms_uri == KMS_URI
        assert k.user_id == ts33180.uid(ALICE, KMS_URI, KEY_PERIOD, 0, k.key_period_no)
        start, end = ts33180.period_bounds(k.key_period_no, KEY_PERIOD, 0)
        assert k.valid_from == datetime.fromtimestamp(start, UTC)
        assert k.valid_to == datetime.fromtimestamp(end, UTC)
        assert not k.revoked
    checked = check_key_prov(
        r, certificate=app.certificate, expected_user_uri=ALICE, now=datetime.fromtimestamp(NOW, UTC)
    )
    assert [k.key_period_no for k in checked] == [PERIOD_N, PERIOD_N + 1]
    # the issuance is recorded (never the keys), and so is the request
    issued = kms_store.issued(ALICE)
    assert [(i.username, i.identity_uri, i.period_no, i.kind, i.at) for i in issued] == [
        ("alice", ALICE, PERIOD_N, "keyprov", NOW),
        ("alice", ALICE, PERIOD_N + 1, "keyprov", NOW),
    ]
    assert [i.uid for i in issued] == [k.user_id for k in sets]
    assert kms_store.issued(BOB) == []
    events = [(a.event, a.username, a.detail) for a in kms_store.audit_log() if a.at == NOW]
    assert events == [("login", "alice", ""), ("keyprov", "alice", ALICE)]


def test_certcache_lists_trusted_domains(
    app: KmsApplication, kms_store: KmsStore, other_master: kms.MasterSecrets
) -> None:
    reply = call(app, CERTCACHE, login("bob"))
    assert reply.status == 200
    message = response(reply, app).message
    assert message == KmsCertCache(())
    other = domain_certificate(OTHER_KMS_URI, 86400, 3600, other_master.kpak, other_master.z_public)
    kms_store.add_trusted_certificate(OTHER_KMS_URI, certificate_to_xml(other), now=NOW)
    reply = call(app, CERTCACHE, login("bob"))
    assert reply.status == 200
    r = response(reply, app)
    assert r.user_uri == BOB
    assert isinstance(r.message, KmsCertCache)
    assert r.message.certificates == (other,)
    assert isinstance(r.message.certificates[0], KmsCertificate)
    assert ("certcache", "bob", BOB) in [(a.event, a.username, a.detail) for a in kms_store.audit_log()]


def test_keys_are_deterministic_and_differ_per_identity(app: KmsApplication) -> None:
    first = key_sets(call(app, KEYPROV, login("alice")), app)
    again = key_sets(call(app, KEYPROV, login("alice"), now=NOW + 3600), app)
    assert first == again
    bob = key_sets(call(app, KEYPROV, login("bob")), app)
    assert {k.rsk for k in first}.isdisjoint({k.rsk for k in bob})
    assert {k.ssk for k in first}.isdisjoint({k.ssk for k in bob})
    assert first[0].rsk != first[1].rsk  # another period, another UID, another key


# --- the identity asked for --------------------------------------------------------------------------------------


def test_request_for_own_identity(app: KmsApplication) -> None:
    reply = call(app, KEYPROV, login("alice"), request_body(ALICE))
    assert reply.status == 200
    assert {k.user_uri for k in key_sets(reply, app)} == {ALICE}
    # whitespace is no request: the account's own identity
    reply = call(app, KEYPROV, login("alice"), b" \r\n\t ")
    assert reply.status == 200
    assert {k.user_uri for k in key_sets(reply, app)} == {ALICE}


@pytest.mark.parametrize("path", [INIT, KEYPROV, CERTCACHE])
def test_another_users_identity_is_forbidden(app: KmsApplication, kms_store: KmsStore, path: str) -> None:
    reply = call(app, path, login("alice"), request_body(BOB, path=path))
    assert reply.status == 403
    code, message, user_uri = error_of(reply, app)
    assert code == 403 and BOB in message and user_uri == BOB
    assert b"UserDecryptKey" not in reply.body
    assert kms_store.issued(BOB) == []
    endpoint = path.rsplit("/", 1)[1]
    assert ("refused", "alice", f"{endpoint} for {BOB}") in [
        (a.event, a.username, a.detail) for a in kms_store.audit_log()
    ]


def test_group_identity_needs_a_grant(app: KmsApplication, kms_store: KmsStore) -> None:
    body = request_body(GROUP)
    reply = call(app, KEYPROV, login("gm"), body)
    assert reply.status == 403
    assert error_of(reply, app)[0] == 403
    kms_store.grant("gm", GROUP, now=NOW)
    reply = call(app, KEYPROV, login("gm"), body)
    assert reply.status == 200
    r = response(reply, app)
    assert r.user_uri == GROUP
    sets = check_key_prov(r, certificate=app.certificate, expected_user_uri=GROUP, now=datetime.fromtimestamp(NOW, UTC))
    assert [(k.user_uri, k.key_period_no) for k in sets] == [(GROUP, PERIOD_N), (GROUP, PERIOD_N + 1)]
    assert [(i.username, i.period_no) for i in kms_store.issued(GROUP)] == [("gm", PERIOD_N), ("gm", PERIOD_N + 1)]
    # the grant is the gm's alone, and its own identity still works without a body
    assert call(app, KEYPROV, login("alice"), body).status == 403
    assert {k.user_uri for k in key_sets(call(app, KEYPROV, login("gm")), app)} == {URIS["gm"]}
    kms_store.revoke("gm", GROUP, now=NOW)
    assert call(app, KEYPROV, login("gm"), body).status == 403


def test_revoked_own_identity_is_no_longer_keyed(app: KmsApplication, kms_store: KmsStore) -> None:
    """``ptt-kms revoke alice sip:alice@…`` says alice may no longer fetch those keys: the service must agree."""
    assert call(app, KEYPROV, login("alice")).status == 200
    kms_store.revoke("alice", ALICE, now=NOW)
    reply = call(app, KEYPROV, login("alice"))
    assert reply.status == 403
    assert error_of(reply, app)[0] == 403
    assert call(app, KEYPROV, login("alice"), request_body(ALICE)).status == 403
    kms_store.grant("alice", ALICE, "self", now=NOW)
    assert call(app, KEYPROV, login("alice")).status == 200


def test_request_naming_another_kms(app: KmsApplication, kms_store: KmsStore) -> None:
    reply = call(app, KEYPROV, login("alice"), request_body(ALICE, kms_uri=OTHER_KMS_URI))
    assert reply.status == 400
    code, message, _ = error_of(reply, app)
    assert code == 400 and KMS_URI in message
    assert kms_store.issued() == []


@pytest.mark.parametrize(
    "body",
    [
        b"<KmsRequest",
        b"not XML at all",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        b"<KmsRequest xmlns='urn:3gpp:ns:mcsecKMSInterface:1.0'><UserUri>sip:alice@example.org</UserUri></KmsRequest>",
        b"<Other xmlns='urn:example'/>",
        b"\xff\xfe<\x00",
    ],
)
def test_malformed_request_body(app: KmsApplication, kms_store: KmsStore, body: bytes) -> None:
    reply = call(app, KEYPROV, login("alice"), body)
    assert reply.status == 400
    code, message, user_uri = error_of(reply, app)
    assert code == 400 and message.startswith("bad KmsRequest")
    assert user_uri == ALICE
    assert kms_store.issued() == []


# --- authentication ----------------------------------------------------------------------------------------------


def _assert_unauthorised(reply: HttpReply, app: KmsApplication) -> None:
    assert reply.status == 401
    challenge = reply.headers["WWW-Authenticate"]  # Bearer first (the IdMS's tokens), Basic as it is allowed here
    assert challenge.startswith('Bearer realm="ptt-kms"') and 'Basic realm="ptt-kms"' in challenge
    code, _, user_uri = error_of(reply, app)
    assert code == 401 and user_uri == service.ANONYMOUS
    assert b"UserDecryptKey" not in reply.body and b"KmsCertificate" not in reply.body


def test_no_credentials(app: KmsApplication) -> None:
    for path in (INIT, KEYPROV, CERTCACHE):
        _assert_unauthorised(call(app, path, None), app)
        _assert_unauthorised(call(app, path, ""), app)


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not base64!!!",
        "Basic " + base64.b64encode(b"alice").decode(),  # no colon
        "Basic " + base64.b64encode(b":alice's long password").decode(),  # no username
        "Basic " + base64.b64encode(b"\xffalice:x").decode(),  # not UTF-8
        "Basic",
        "Bearer " + base64.b64encode(b"alice:alice's long password").decode(),
        "Digest username=alice",
    ],
)
def test_malformed_authorization(app: KmsApplication, kms_store: KmsStore, header: str) -> None:
    _assert_unauthorised(call(app, KEYPROV, header), app)
    assert kms_store.issued() == []


def test_basic_scheme_is_case_insensitive(app: KmsApplication) -> None:
    header = "bAsIc " + base64.b64encode(b"alice:alice's long password").decode()
    assert call(app, KEYPROV, header).status == 200


def test_wrong_password_and_unknown_user(app: KmsApplication, kms_store: KmsStore) -> None:
    _assert_unauthorised(call(app, KEYPROV, basic("alice", "not the password")), app)
    _assert_unauthorised(call(app, KEYPROV, basic("mallory", PASSWORDS["alice"])), app)
    _assert_unauthorised(call(app, KEYPROV, basic("alice", PASSWORDS["bob"])), app)
    assert kms_store.issued() == []
    failed = [a for a in kms_store.audit_log() if a.event == "login-failed"]
    assert len(failed) == 3
    for record in kms_store.audit_log(1000):
        assert all(p not in record.detail for p in PASSWORDS.values())
        assert "not the password" not in record.detail


def test_disabled_account(app: KmsApplication, kms_store: KmsStore) -> None:
    kms_store.set_disabled("alice", True, now=NOW)
    _assert_unauthorised(call(app, KEYPROV, login("alice")), app)
    kms_store.set_disabled("alice", False, now=NOW)
    assert call(app, KEYPROV, login("alice")).status == 200


def _count_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each password check (scrypt evaluation) appends its cost N."""
    checks: list[int] = []
    real = passwords._scrypt

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        checks.append(n)
        return real(password, salt, n, r, p)

    monkeypatch.setattr(passwords, "_scrypt", counting)
    return checks


def test_account_lockout(app: KmsApplication) -> None:
    for i in range(store.LOCKOUT_AFTER):
        _assert_unauthorised(call(app, KEYPROV, basic("alice", f"guess number {i}"), now=NOW + i), app)
    locked_at = NOW + store.LOCKOUT_AFTER - 1
    reply = call(app, KEYPROV, login("alice"), now=locked_at + 1)
    assert reply.status == 429
    assert reply.headers["Retry-After"] == str(int(store.LOCKOUT_MIN) - 1)
    code, message, _ = error_of(reply, app)
    assert code == 429 and "locked for logins from there" in message and "try again in 29 s" in message
    # other accounts are not affected, and the lock ends
    assert call(app, KEYPROV, login("bob"), now=locked_at + 1).status == 200
    assert call(app, KEYPROV, login("alice"), now=locked_at + store.LOCKOUT_MIN - 0.5).status == 429
    assert call(app, KEYPROV, login("alice"), now=locked_at + store.LOCKOUT_MIN).status == 200


def test_an_attacker_elsewhere_cannot_lock_the_owner_out(app: KmsApplication) -> None:
    assert call(app, KEYPROV, login("alice"), peer=PEER, now=NOW).status == 200
    for i in range(3 * store.LOCKOUT_AFTER):  # one guess per lock period keeps (alice, attacker) locked ...
        call(app, KEYPROV, basic("alice", f"guess number {i}"), peer="203.0.113.66", now=NOW + 1 + 60 * i)
    later = NOW + 1 + 60 * 3 * store.LOCKOUT_AFTER
    assert call(app, KEYPROV, login("alice"), peer="203.0.113.66", now=later).status == 429
    assert call(app, KEYPROV, login("alice"), peer=PEER, now=later).status == 200  # ... but not Alice's own
    assert call(app, KEYPROV, login("alice"), peer="198.51.100.9", now=later).status == 200  # nor a new address


def test_a_service_account_is_never_locked(app: KmsApplication, kms_store: KmsStore) -> None:
    token = kms_store.add_service_account("ptt-server", uri="sip:ptt-server@example.org", now=NOW)
    for i in range(100):
        reply = call(app, KEYPROV, basic("ptt-server", f"guess number {i}"), peer=f"203.0.113.{i}", now=NOW + i / 10)
        _assert_unauthorised(reply, app)
    assert call(app, KEYPROV, basic("ptt-server", token), peer="198.51.100.9", now=NOW + 10).status == 200


def test_spray_is_cut_by_the_global_budget(app: KmsApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    assert call(app, KEYPROV, login("bob"), now=NOW).status == 200  # bob's usual address
    checks = _count_scrypt(monkeypatch)
    statuses: list[int] = []
    for i in range(400):  # 400 addresses, each one guess at each of three accounts, in 10 s
        for name in ("alice", "bob", "gm"):
            peer = f"10.1.{i // 200}.{i % 200}"
            reply = call(app, KEYPROV, basic(name, "Summer2025!"), peer=peer, now=NOW + i / 40)
            statuses.append(reply.status)
            if reply.status == 429:
                code, message, _ = error_of(reply, app)
                assert code == 429 and ("on this server" in message or "elsewhere" in message)
                assert 1 <= int(reply.headers["Retry-After"]) <= 6
    assert statuses.count(401) == len(checks) <= 30 + 2 * 10 + 1  # the budget: 30, then 2 a second
    assert statuses.count(429) >= 1200 - 51
    # the owners' usual logins still work; a new address waits a few seconds (the budget, the account's limit)
    assert call(app, KEYPROV, login("bob"), now=NOW + 10).status == 200
    reply = call(app, KEYPROV, login("alice"), peer="198.51.100.9", now=NOW + 10)
    assert reply.status == 429
    later = NOW + 10 + int(reply.headers["Retry-After"])
    assert call(app, KEYPROV, login("alice"), peer="198.51.100.9", now=later).status == 200


def test_per_address_throttle(app: KmsApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    times = [NOW + 0.5 * i for i in range(IP_FAILURE_LIMIT)]
    for i, t in enumerate(times[:-1]):
        _assert_unauthorised(call(app, KEYPROV, basic(f"ghost{i}", "whatever password"), now=t), app)
    # 19 failures: the address may still log in
    assert call(app, KEYPROV, login("bob"), now=times[-1]).status == 200
    _assert_unauthorised(call(app, KEYPROV, basic("ghost-last", "whatever password"), now=times[-1]), app)

    # 20 failures within a minute: refused outright, whoever it is, without checking any password
    checks = _count_scrypt(monkeypatch)
    for who in ("bob", "alice", "gm"):
        reply = call(app, KEYPROV, login(who), now=times[-1] + 1)
        assert reply.status == 429
        assert reply.headers["Retry-After"] == str(int(times[0] + IP_FAILURE_WINDOW - times[-1] - 1 + 0.5))
        code, message, user_uri = error_of(reply, app)
        assert code == 429 and "from your address" in message and user_uri == service.ANONYMOUS
    assert checks == []
    # another address is not affected
    assert call(app, KEYPROV, login("bob"), peer="198.51.100.7", now=times[-1] + 1).status == 200
    assert len(checks) == 1
    # a sliding window: still refused while 20 failures are less than a minute old ...
    assert call(app, KEYPROV, login("bob"), now=times[0] + IP_FAILURE_WINDOW - 0.1).status == 429
    # ... and lifted once they have aged out
    assert call(app, KEYPROV, login("bob"), now=times[-1] + IP_FAILURE_WINDOW + 0.1).status == 200


def test_failures_of_many_addresses_are_forgotten(app: KmsApplication) -> None:
    """The per-address failure record must not grow without bound with the addresses that ever failed."""
    for i in range(50):
        call(app, KEYPROV, basic(f"ghost{i}", "whatever password"), peer=f"203.0.113.{i}", now=NOW + i)
    assert len(app.guard.addresses) == 50 and len(app.guard) == 50
    later = NOW + 50 + 2 * IP_FAILURE_WINDOW
    call(app, KEYPROV, basic("ghost", "whatever password"), peer="198.51.100.1", now=later)
    assert app.guard.addresses.addresses() == {"198.51.100.1"}


def test_refusals_are_logged_at_most_every_10_s(app: KmsApplication, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(store.LOCKOUT_AFTER):
        call(app, KEYPROV, basic("alice", f"guess number {i}"), now=NOW)
    caplog.clear()
    for i in range(50):
        assert call(app, KEYPROV, basic("alice", "guess"), now=NOW + 1 + i / 10).status == 429
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "alice" in lines[0] and PEER in lines[0] and "locked" in lines[0]


# --- HTTP-level errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", PREFIX, PREFIX + "nope", PREFIX + "init/", PREFIX + "init/extra", "/keymanagement/identity/v2/init", "init"],
)
def test_unknown_path(app: KmsApplication, path: str) -> None:
    reply = call(app, path, login("alice"))
    assert reply.status == 404
    code, _, user_uri = error_of(reply, app)
    assert code == 404 and user_uri == service.ANONYMOUS


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_only_post(app: KmsApplication, kms_store: KmsStore, method: str) -> None:
    reply = call(app, KEYPROV, login("alice"), method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert error_of(reply, app)[0] == 400
    assert kms_store.issued() == []


def test_body_size_limit(app: KmsApplication, kms_store: KmsStore) -> None:
    reply = call(app, KEYPROV, login("alice"), b" " * (MAX_BODY + 1))
    assert reply.status == 413
    assert error_of(reply, app)[0] == 400
    # exactly the limit is read (and here is no request at all, being only whitespace)
    assert call(app, KEYPROV, login("alice"), b" " * MAX_BODY).status == 200
    assert call(app, KEYPROV, login("alice"), b"x" * MAX_BODY).status == 400


def test_every_reply_is_signed_by_the_kms_only(app: KmsApplication, signer: Signer) -> None:
    _, other_cert = make_self_signed("impostor", san_dns=[], san_ips=[], tls_server=False)
    for reply in (
        call(app, KEYPROV, login("alice")),
        call(app, INIT, None),
        call(app, "/x", None),
        call(app, KEYPROV, None, method="GET"),
    ):
        verify_signed_response(reply.body, signer.cert)
        with pytest.raises(SignatureInvalid):
            verify_signed_response(reply.body, other_cert)


# --- key periods ---------------------------------------------------------------------------------------------


def test_key_rollover(app: KmsApplication) -> None:
    before = key_sets(call(app, KEYPROV, login("alice"), now=END - 1.0), app)
    after = key_sets(call(app, KEYPROV, login("alice"), now=float(END)), app)
    assert [k.key_period_no for k in before] == [PERIOD_N, PERIOD_N + 1]
    assert [k.key_period_no for k in after] == [PERIOD_N + 1, PERIOD_N + 2]
    assert before[1] == after[0]  # the N+1 keys are derived, not drawn: identical both times
    assert before[0].rsk != after[1].rsk
    for sets, now in ((before, END - 1.0), (after, float(END))):
        r_now = datetime.fromtimestamp(now, UTC)
        assert all(k.valid_from is not None and k.valid_to is not None for k in sets)
        assert sets[0].valid_from is not None and sets[0].valid_from <= r_now < cast(datetime, sets[0].valid_to)
        assert sets[0].valid_to == sets[1].valid_from


def test_key_period_offset(master: kms.MasterSecrets, signer: Signer, kms_store: KmsStore) -> None:
    offset = 7200
    config = DomainConfig(
        kms_uri=KMS_URI, key_period=86400, key_period_offset=offset, base_url=BASE_URL, allow_basic_login=True
    )
    app = KmsApplication(kms_store, master, config, signer.key, signer.cert)
    assert app.certificate.user_key_offset == offset and app.certificate.user_key_period == 86400
    reply = call(app, KEYPROV, login("alice"))
    current = ts33180.period_number(NOW, 86400, offset)
    r = response(reply, app)
    sets = check_key_prov(r, certificate=app.certificate, expected_user_uri=ALICE, now=datetime.fromtimestamp(NOW, UTC))
    assert [k.key_period_no for k in sets] == [current, current + 1]


# --- internal failures -------------------------------------------------------------------------------------------


def test_internal_failure_is_a_signed_500(
    app: KmsApplication, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(identifier: bytes, master: kms.MasterSecrets) -> kms.UserKeyMaterial:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service, "derive_user_keys", broken)
    reply = call(app, KEYPROV, login("alice"))
    assert reply.status == 500
    code, message, _ = error_of(reply, app)
    assert code == 500 and message == "internal error"
    assert b"secret internal detail" not in reply.body
    assert "secret internal detail" in caplog.text  # logged for the operator
    assert call(app, INIT, login("alice")).status == 200  # the service goes on


def test_store_failure_is_a_500(app: KmsApplication, kms_store: KmsStore) -> None:
    kms_store.close()
    reply = call(app, KEYPROV, login("alice"))
    assert reply.status == 500


def test_signing_failure_gives_a_plain_500(app: KmsApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise ValueError("cannot sign")

    monkeypatch.setattr(service, "sign_response", broken)
    for path, auth in ((KEYPROV, login("alice")), ("/nope", None), (KEYPROV, None)):
        reply = app.handle(method="POST", path=path, authorization=auth, body=b"", peer=PEER, now=NOW)
        assert reply.status == 500
        assert reply.body == b"internal error\n"
        assert reply.headers["Content-Type"] == "text/plain"


def test_unencodable_path_gets_a_signed_404(app: KmsApplication) -> None:
    reply = app.handle(method="POST", path="/\x01\x02<&", authorization=None, body=b"", peer=PEER, now=NOW)
    assert reply.status == 404
    response = verify_signed_response(reply.body, app.signing_cert)
    assert response.error is not None and response.client_req_url.endswith("/%01%02%3C%26")


# --- the twisted.web adapter ------------------------------------------------------------------------------------


@pytest.fixture
def synchronous_pool(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], Any]]:
    """``threads.deferToThreadPool`` runs the function at once; the functions run are recorded."""
    ran: list[Callable[[], Any]] = []

    def run_now(reactor: object, pool: object, f: Callable[[], Any]) -> defer.Deferred[Any]:
        ran.append(f)
        try:
            return defer.succeed(f())
        except Exception:
            return defer.fail(Failure())

    monkeypatch.setattr(threads, "deferToThreadPool", run_now)
    return ran


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes
    transport: StringTransport


def _http(app: KmsApplication, raw: bytes, *, chunks: list[bytes] | None = None, peer: str = "203.0.113.9") -> Exchange:
    site = make_site(app, cast(ThreadPool, object()), clock=lambda: NOW)
    site.reactor = cast(IReactorTime, Clock())  # connection timeouts on a clock nobody advances
    address = IPv4Address("TCP", peer, 40000)
    channel = site.buildProtocol(address)
    assert channel is not None
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    for chunk in chunks or []:
        channel.dataReceived(chunk)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Exchange(status, headers, body, transport)


def _request(path: str, authorization: str | None, body: bytes = b"", *, length: int | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.0",
        "Host: 127.0.0.1:8443",
        f"Content-Length: {len(body) if length is None else length}",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_site_answers_a_request(app: KmsApplication, synchronous_pool: list[Callable[[], Any]]) -> None:
    seen: list[dict[str, Any]] = []
    real_handle = app.handle

    def spy(**kwargs: Any) -> HttpReply:
        seen.append(kwargs)
        return real_handle(**kwargs)

    app.handle = spy  # type: ignore[method-assign]
    exchange = _http(app, _request(KEYPROV, login("alice"), request_body(ALICE)))
    assert exchange.status == 200
    assert exchange.headers["content-type"].startswith("application/xml")
    assert exchange.headers["cache-control"] == "no-store"
    r = verify_signed_response(exchange.body, app.signing_cert)
    assert isinstance(r.message, KmsKeyProv) and len(r.message.key_sets) == 2
    assert len(synchronous_pool) == 1  # the work went to the (stand-in) pool
    assert seen == [
        {
            "method": "POST",
            "path": KEYPROV,
            "authorization": login("alice"),
            "body": request_body(ALICE),
            "peer": "203.0.113.9",
            "now": NOW,
        }
    ]


def test_site_passes_errors_on(app: KmsApplication, synchronous_pool: list[Callable[[], Any]]) -> None:
    exchange = _http(app, _request(KEYPROV, None))
    assert exchange.status == 401
    assert exchange.headers["www-authenticate"].startswith("Bearer")
    verify_signed_response(exchange.body, app.signing_cert)
    exchange = _http(app, b"GET " + INIT.encode() + b" HTTP/1.0\r\n\r\n")
    assert exchange.status == 405
    assert exchange.headers["allow"] == "POST"


def test_site_refuses_a_large_body_without_buffering_it(
    app: KmsApplication, synchronous_pool: list[Callable[[], Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    buffered: list[int] = []
    real_chunk = LimitedRequest.handleContentChunk

    def watch(self: LimitedRequest, data: bytes) -> None:
        real_chunk(self, data)
        assert self.content is not None
        buffered.append(self.content.tell())

    monkeypatch.setattr(LimitedRequest, "handleContentChunk", watch)
    real_handle = app.handle

    def spy(**kwargs: Any) -> HttpReply:
        sizes.append(len(kwargs["body"]))
        return real_handle(**kwargs)

    app.handle = spy  # type: ignore[method-assign]
    total = MAX_BODY + 3 * 4096
    chunks = [b"<" * 4096] * (total // 4096)
    exchange = _http(app, _request(KEYPROV, login("alice"), length=total), chunks=chunks)
    assert exchange.status == 413
    verify_signed_response(exchange.body, app.signing_cert)
    assert sizes == [MAX_BODY + 1]
    assert max(buffered) <= MAX_BODY


def test_limited_request_stops_buffering(app: KmsApplication) -> None:
    from twisted.web.http import HTTPChannel

    channel = HTTPChannel()
    channel.site = make_site(app, cast(ThreadPool, object()))  # type: ignore[attr-defined]
    channel.makeConnection(StringTransport())
    request = LimitedRequest(channel)
    request.gotLength(None)
    request.handleContentChunk(b"a" * (MAX_BODY - 1))
    request.handleContentChunk(b"b")
    assert not request.body_too_large
    request.handleContentChunk(b"c")
    assert request.body_too_large
    request.handleContentChunk(b"")
    assert request.body_too_large  # once too large, always too large
    assert request.content is not None and request.content.tell() == MAX_BODY


def test_site_failure_is_a_plain_500(app: KmsApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(reactor: object, pool: object, f: Callable[[], Any]) -> defer.Deferred[Any]:
        return defer.fail(RuntimeError("worker died"))

    monkeypatch.setattr(threads, "deferToThreadPool", failing)
    exchange = _http(app, _request(INIT, login("alice")))
    assert exchange.status == 500
    assert exchange.body == b"internal error\n"


def test_site_does_not_answer_a_gone_client(
    app: KmsApplication, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pending: list[defer.Deferred[Any]] = []
    work: list[Callable[[], Any]] = []

    def later(reactor: object, pool: object, f: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        pending.append(d)
        work.append(f)
        return d

    monkeypatch.setattr(threads, "deferToThreadPool", later)
    site = make_site(app, cast(ThreadPool, object()), clock=lambda: NOW)
    site.reactor = cast(IReactorTime, Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "203.0.113.9", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(_request(INIT, login("alice")))
    assert transport.value() == b""
    from twisted.internet.error import ConnectionDone

    channel.connectionLost(Failure(ConnectionDone()))
    results: list[object] = []
    pending[0].addBoth(results.append)
    pending[0].callback(work[0]())  # the worker finishes after the client left
    assert transport.value() == b""
    assert results == [None]  # answered nobody, quietly
    assert "KMS response failed" not in caplog.text
