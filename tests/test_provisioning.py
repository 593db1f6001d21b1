"""Client provisioning: the trust decisions (``accept_init``, ``accept_key_prov``), the renewing ``ProvisioningAgent``
and the sealed keystore, against responses of an in-process ``KmsApplication``.

The agent runs on a ``twisted.internet.task.Clock`` with a fake HTTP client that hands each request to
``KmsApplication.handle`` at the clock's time, so key periods roll over in microseconds. Password hashing and
keystore sealing are made cheap (their cost parameters) where their strength is not what is tested.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer
from twisted.internet.task import Clock

import client.keystore as keystore_module
from client.idms import TokenLogin
from client.keystore import KEEP_PAST_PERIODS, Keystore, KeystoreError, StoredKeySet
from client.provisioning import (
    CERTCACHE,
    INIT,
    KEYPROV,
    RETRY_MAX,
    RETRY_MIN,
    HttpResult,
    KmsHttpClient,
    ProvisioningAgent,
    ProvisioningError,
    accept_cert_cache,
    accept_init,
    accept_key_prov,
)
from ptt import ts33180
from ptt.crypto import kms
from ptt.groupkeys import build_gmk_messages, make_group_key
from ptt.kmsformat.enrolment import TOKEN_PATH, Enrolment
from ptt.kmsformat.model import (
    DomainMismatch,
    InvalidKeys,
    KmsCertificate,
    KmsError,
    KmsErrorResponse,
    KmsKeyProv,
    KmsKeySet,
    KmsRequest,
    KmsResponse,
    SignatureInvalid,
    StaleResponse,
    UnexpectedMessage,
    WrongAddressee,
)
from ptt.kmsformat.signing import sign_response, verify_signed_response
from ptt.kmsformat.xml import certificate_to_xml, request_to_xml
from ptt.mikey.errors import WrongRecipient
from ptt.mikey.imessage import IdentityKeys, ReplayCache, receive_i_message
from ptt.sealed import seal
from ptt.ts33180 import KeyPurpose
from server.accounts import passwords
from server.kms import service
from server.kms.cli import domain_certificate
from server.kms.material import certificate_pem, make_self_signed
from server.kms.service import DomainConfig, KmsApplication
from server.kms.store import KmsStore

KMS_URI = "kms.example.org"
BASE_URL = "https://127.0.0.1:8443"
KEY_PERIOD = 2592000
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
GM = "sip:gm@example.org"
GROUP = "sip:fire-ops@example.org"
PASSWORDS = {"alice": "alice's long password", "bob": "bob-password-1234", "gm": "group manager secret"}
URIS = {"alice": ALICE, "bob": BOB, "gm": GM}
PASSPHRASE = b"keystore passphrase"

PERIOD_N = ts33180.period_number(1_790_000_000, KEY_PERIOD, 0)
START, END = ts33180.period_bounds(PERIOD_N, KEY_PERIOD, 0)
NOW = float(START + 86400)  # a day into period N
SPREAD = 0.25
SPREAD_SECONDS = KEY_PERIOD * (0.1 + 0.8 * SPREAD)  # renewal: this far into each period (RENEWAL_WINDOW)


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


def _signer(name: str) -> Signer:
    key, cert = make_self_signed(name, san_dns=[], san_ips=[], tls_server=False)
    return Signer(key, cert)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return _signer("ptt KMS response signing")


@pytest.fixture(scope="module")
def tls_pem() -> bytes:
    _, cert = make_self_signed("127.0.0.1", san_dns=["localhost"], san_ips=["127.0.0.1"])
    return certificate_pem(cert)


@pytest.fixture(autouse=True)
def cheap_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)
    monkeypatch.setattr(keystore_module, "seal", functools.partial(seal, cost=2**10))


@pytest.fixture
def kms_store(tmp_path: Path, cheap_secrets: None) -> Iterator[KmsStore]:
    s = KmsStore(tmp_path / "kms.sqlite3")
    for name, password in PASSWORDS.items():
        s.add_account(name, password, uri=URIS[name], now=NOW - 1000)
    s.grant("gm", GROUP, now=NOW - 1000)
    yield s
    s.close()


@pytest.fixture
def app(kms_store: KmsStore, master: kms.MasterSecrets, signer: Signer) -> KmsApplication:
    config = DomainConfig(kms_uri=KMS_URI, key_period=KEY_PERIOD, key_period_offset=0, base_url=BASE_URL)
    return KmsApplication(kms_store, master, config, signer.key, signer.cert)


@pytest.fixture
def enrolment(app: KmsApplication, signer: Signer, tls_pem: bytes) -> Enrolment:
    return Enrolment(KMS_URI, BASE_URL, tls_pem, certificate_pem(signer.cert), certificate=app.certificate)


def _auth(app: KmsApplication, name: str, now: float = NOW) -> str:
    """A Bearer access token of ``name`` from the application's IdMS."""
    body = urlencode({"grant_type": "password", "username": name, "password": PASSWORDS[name]}).encode()
    reply = app.handle(method="POST", path=TOKEN_PATH, authorization=None, body=body, peer="127.0.0.1", now=now)
    assert reply.status == 200, reply.body
    token: str = json.loads(reply.body)["access_token"]
    return "Bearer " + token


def kms_reply(app: KmsApplication, path: str, name: str, *, now: float = NOW, identity: str | None = None) -> bytes:
    body = b""
    if identity is not None:
        body = request_to_xml(KmsRequest(identity, KMS_URI, datetime.fromtimestamp(now, UTC), BASE_URL + path))
    reply = app.handle(
        method="POST", path=path, authorization=_auth(app, name, now), body=body, peer="127.0.0.1", now=now
    )
    assert reply.status == 200, reply.body
    return reply.body


def resigned(
    data: bytes,
    app: KmsApplication,
    change: Callable[[KmsResponse], KmsResponse] | None = None,
    signer: Signer | None = None,
) -> bytes:
    """The genuine response, changed by ``change`` (KmsResponse -> KmsResponse), signed by ``signer`` (default: the
    KMS's own key)."""
    response = verify_signed_response(data, app.signing_cert)
    if change is not None:
        response = change(response)
    key, cert = (app.signing_key, app.signing_cert) if signer is None else (signer.key, signer.cert)
    return sign_response(response, key, cert)


def with_key_sets(response: KmsResponse, sets: list[KmsKeySet]) -> KmsResponse:
    return replace(response, message=KmsKeyProv(tuple(sets)))


def _sets(response: KmsResponse) -> list[KmsKeySet]:
    assert isinstance(response.message, KmsKeyProv)
    return list(response.message.key_sets)


# --- accept_init ---------------------------------------------------------------------------------------------


def test_accept_init(app: KmsApplication, enrolment: Enrolment) -> None:
    data = kms_reply(app, INIT, "alice")
    assert accept_init(data, enrolment, ALICE, NOW) == enrolment.certificate == app.certificate
    # the time is checked too: a KMS response from far in the past or future is refused
    with pytest.raises(StaleResponse):
        accept_init(data, enrolment, ALICE, NOW + 3600)
    with pytest.raises(WrongAddressee):
        accept_init(data, enrolment, BOB, NOW)


def test_accept_init_from_another_master(
    app: KmsApplication, enrolment: Enrolment, other_master: kms.MasterSecrets, signer: Signer, kms_store: KmsStore
) -> None:
    """The KMS at the enrolled address, with the pinned signing key, but other master secrets (say, a restore of
    the wrong backup): its certificate is not the enrolled one."""
    config = DomainConfig(kms_uri=KMS_URI, key_period=KEY_PERIOD, key_period_offset=0, base_url=BASE_URL)
    impostor = KmsApplication(kms_store, other_master, config, signer.key, signer.cert)
    data = kms_reply(impostor, INIT, "alice")
    with pytest.raises(DomainMismatch):
        accept_init(data, enrolment, ALICE, NOW)
    # and the same the other way round: a client enrolled with the other domain's certificate
    other = replace(
        enrolment, certificate=domain_certificate(KMS_URI, KEY_PERIOD, 0, other_master.kpak, other_master.z_public)
    )
    with pytest.raises(DomainMismatch):
        accept_init(kms_reply(app, INIT, "alice"), other, ALICE, NOW)
    # a changed key period is a changed domain too
    with pytest.raises(DomainMismatch):
        accept_init(
            kms_reply(app, INIT, "alice"),
            replace(enrolment, certificate=replace(app.certificate, user_key_period=86400)),
            ALICE,
            NOW,
        )


def test_accept_init_refuses_other_messages(app: KmsApplication, enrolment: Enrolment) -> None:
    with pytest.raises(UnexpectedMessage):
        accept_init(kms_reply(app, KEYPROV, "alice"), enrolment, ALICE, NOW)
    refused = app.handle(method="POST", path=INIT, authorization=None, body=b"", peer="127.0.0.1", now=NOW)
    with pytest.raises(KmsErrorResponse):
        accept_init(refused.body, enrolment, ALICE, NOW)


# --- accept_key_prov -----------------------------------------------------------------------------------------


def test_accept_key_prov(app: KmsApplication, enrolment: Enrolment) -> None:
    data = kms_reply(app, KEYPROV, "alice")
    sets, when = accept_key_prov(data, enrolment, ALICE, NOW, None)
    assert [(k.user_uri, k.key_period_no) for k in sets] == [(ALICE, PERIOD_N), (ALICE, PERIOD_N + 1)]
    assert when == datetime.fromtimestamp(int(NOW), UTC)


def _flip_key_character(data: bytes, element: bytes) -> bytes:
    match = re.search(rb"<" + element + rb"[^>]*>([0-9A-F]+)<", data)
    assert match is not None
    i = match.start(1) + 10
    flipped = b"0" if data[i : i + 1] != b"0" else b"1"
    return data[:i] + flipped + data[i + 1 :]


@pytest.mark.parametrize("element", [b"UserDecryptKey", b"UserSigningKeySSK", b"UserPubTokenPVT"])
def test_tampered_key_prov(app: KmsApplication, enrolment: Enrolment, element: bytes) -> None:
    data = kms_reply(app, KEYPROV, "alice")
    tampered = _flip_key_character(data, element)
    assert tampered != data and len(tampered) == len(data)
    with pytest.raises(SignatureInvalid):
        accept_key_prov(tampered, enrolment, ALICE, NOW, None)


def test_tampered_init(app: KmsApplication, enrolment: Enrolment) -> None:
    data = kms_reply(app, INIT, "alice")
    with pytest.raises(SignatureInvalid):
        accept_init(_flip_key_character(data, b"PubAuthKey"), enrolment, ALICE, NOW)


def test_another_signing_key(app: KmsApplication, enrolment: Enrolment) -> None:
    impostor = _signer("impostor")
    for path, accept in ((INIT, False), (KEYPROV, True)):
        data = resigned(kms_reply(app, path, "alice"), app, signer=impostor)
        with pytest.raises(SignatureInvalid):
            if accept:
                accept_key_prov(data, enrolment, ALICE, NOW, None)
            else:
                accept_init(data, enrolment, ALICE, NOW)
    # a client pinning another signing certificate refuses the genuine KMS
    pinned_elsewhere = replace(enrolment, signing_cert_pem=certificate_pem(impostor.cert))
    with pytest.raises(SignatureInvalid):
        accept_key_prov(kms_reply(app, KEYPROV, "alice"), pinned_elsewhere, ALICE, NOW, None)


def test_another_users_key_prov(app: KmsApplication, enrolment: Enrolment) -> None:
    bobs = kms_reply(app, KEYPROV, "bob")
    with pytest.raises(WrongAddressee):
        accept_key_prov(bobs, enrolment, ALICE, NOW, None)
    # Bob's key sets in a response addressed to Alice (signed by the KMS) are refused too
    forged = resigned(bobs, app, lambda r: replace(r, user_uri=ALICE))
    with pytest.raises(WrongAddressee):
        accept_key_prov(forged, enrolment, ALICE, NOW, None)


def test_swapped_rsk_is_refused(app: KmsApplication, enrolment: Enrolment) -> None:
    """Signed with the real key, so only the key checks can catch it: Bob's RSK in Alice's key set."""
    bob_sets = _sets(verify_signed_response(kms_reply(app, KEYPROV, "bob"), app.signing_cert))

    def swap(r: KmsResponse) -> KmsResponse:
        sets = _sets(r)
        sets[0] = replace(sets[0], rsk=bob_sets[0].rsk)
        return with_key_sets(r, sets)

    forged = resigned(kms_reply(app, KEYPROV, "alice"), app, swap)
    verify_signed_response(forged, app.signing_cert)  # the signature is fine
    with pytest.raises(InvalidKeys, match="RSK"):
        accept_key_prov(forged, enrolment, ALICE, NOW, None)


def test_invalid_signing_key_is_refused(app: KmsApplication, enrolment: Enrolment) -> None:
    def bad_ssk(r: KmsResponse) -> KmsResponse:
        sets = _sets(r)
        ssk = (int.from_bytes(sets[1].ssk, "big") + 1).to_bytes(32, "big")
        sets[1] = replace(sets[1], ssk=ssk)
        return with_key_sets(r, sets)

    with pytest.raises(InvalidKeys, match="SSK"):
        accept_key_prov(resigned(kms_reply(app, KEYPROV, "alice"), app, bad_ssk), enrolment, ALICE, NOW, None)

    def other_period_pvt(r: KmsResponse) -> KmsResponse:
        sets = _sets(r)
        sets[0] = replace(sets[0], ssk=sets[1].ssk, pvt=sets[1].pvt)
        return with_key_sets(r, sets)

    with pytest.raises(InvalidKeys):
        accept_key_prov(resigned(kms_reply(app, KEYPROV, "alice"), app, other_period_pvt), enrolment, ALICE, NOW, None)

    def wrong_uid(r: KmsResponse) -> KmsResponse:
        sets = _sets(r)
        sets[0] = replace(sets[0], key_period_no=PERIOD_N + 5)
        return with_key_sets(r, sets)

    with pytest.raises(InvalidKeys):
        accept_key_prov(resigned(kms_reply(app, KEYPROV, "alice"), app, wrong_uid), enrolment, ALICE, NOW, None)


def test_replayed_key_prov(app: KmsApplication, enrolment: Enrolment) -> None:
    data = kms_reply(app, KEYPROV, "alice")
    _, when = accept_key_prov(data, enrolment, ALICE, NOW, None)
    with pytest.raises(StaleResponse):
        accept_key_prov(data, enrolment, ALICE, NOW + 5, when)
    # an older response is refused as well, a newer one accepted
    newer = kms_reply(app, KEYPROV, "alice", now=NOW + 10)
    _, later = accept_key_prov(newer, enrolment, ALICE, NOW + 10, when)
    assert later > when
    with pytest.raises(StaleResponse):
        accept_key_prov(data, enrolment, ALICE, NOW + 10, later)
    # and one outside the allowed clock skew, even never seen before
    with pytest.raises(StaleResponse):
        accept_key_prov(data, enrolment, ALICE, NOW + 301, None)


# --- ProvisioningAgent ---------------------------------------------------------------------------------------


class FakeKms(KmsHttpClient):
    """The agent's real HTTP client (IdMS login, token refresh, the retry on 401) over an in-memory transport: each
    request goes to the KMS application (its IdMS too) at the clock's time."""

    def __init__(self, app: KmsApplication, clock: Clock, name: str, password: str | None = None) -> None:
        self.app = app
        self.clock = clock
        self.reactor = clock
        self.enrolment = cast(Enrolment, SimpleNamespace(base_url=BASE_URL))
        self.login = TokenLogin(clock, self.post_form, BASE_URL + TOKEN_PATH, name, password or PASSWORDS[name])
        self.calls: list[tuple[str, float]] = []  # KMS requests (path, time)
        self.token_calls: list[tuple[str, float]] = []  # IdMS requests (grant type, time)
        self.authorizations: list[str] = []  # the Authorization header of each KMS request
        self.unreachable = False
        self.hold: list[defer.Deferred[Any]] = []
        self.holding = False
        self.tamper = False
        self.rewrite: dict[str, Callable[[HttpResult], HttpResult]] = {}  # path -> what the client gets instead

    def _request(self, url: str, headers: dict[bytes, list[bytes]], body: bytes) -> defer.Deferred[HttpResult]:
        now = self.clock.seconds()
        path = url[len(BASE_URL) :]
        if self.unreachable:
            return defer.fail(ProvisioningError("cannot reach the KMS at https://127.0.0.1:8443: refused"))
        authorization = headers[b"Authorization"][0].decode() if b"Authorization" in headers else None
        if path == TOKEN_PATH:
            self.token_calls.append((dict(parse_qsl(body.decode()))["grant_type"], now))
        else:
            self.calls.append((path, now))
            self.authorizations.append(authorization or "")
        reply = self.app.handle(
            method="POST", path=path, authorization=authorization, body=body, peer="127.0.0.1", now=now
        )
        result = HttpResult(reply.status, reply.body, reply.headers.get("WWW-Authenticate", ""))
        if path == TOKEN_PATH:
            return defer.succeed(result)
        if self.tamper and path == KEYPROV:
            result = HttpResult(reply.status, _flip_key_character(reply.body, b"UserDecryptKey"))
        if path in self.rewrite:
            try:
                result = self.rewrite[path](result)
            except Exception as exc:
                return defer.fail(exc)
        if self.holding:
            d: defer.Deferred[Any] = defer.Deferred()
            self.hold.append(d)
            d.addCallback(lambda _: result)
            return d
        return defer.succeed(result)


@dataclass
class Client:
    clock: Clock
    kms: FakeKms
    keystore: Keystore
    agent: ProvisioningAgent


def _client(app: KmsApplication, enrolment: Enrolment, path: Path, name: str = "alice", **kw: Any) -> Client:
    clock = Clock()
    clock.advance(NOW)
    fake = FakeKms(app, clock, name, **kw)
    keystore = Keystore.open(path, PASSPHRASE)
    keystore.enrolment = enrolment
    agent = ProvisioningAgent(clock, keystore, name, "unused", [URIS[name]], http=fake)
    fake.login._refresh = keystore.refresh_tokens.get(name)  # as the agent wires its own client
    fake.login._keep_refresh = agent._keep_refresh_token
    agent._spread = SPREAD
    return Client(clock, fake, keystore, agent)


@pytest.fixture
def alice(app: KmsApplication, enrolment: Enrolment, tmp_path: Path) -> Client:
    return _client(app, enrolment, tmp_path / "alice" / "keystore")


def result_of(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def _delays(clock: Clock) -> list[float]:
    return [call.getTime() - clock.seconds() for call in cast(list[Any], clock.getDelayedCalls())]


def test_agent_needs_an_enrolment(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError):
        ProvisioningAgent(Clock(), Keystore(tmp_path / "k", PASSPHRASE), "alice", "pw", [ALICE])


def test_agent_provisions_and_saves(alice: Client, enrolment: Enrolment) -> None:
    assert alice.agent.needs_renewal(NOW)
    provisioned = result_of(alice.agent.provision())
    assert [k.key_period_no for k in provisioned[ALICE]] == [PERIOD_N, PERIOD_N + 1]
    assert [path for path, _ in alice.kms.calls] == [INIT, KEYPROV, CERTCACHE]
    assert alice.keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1]
    assert not alice.agent.needs_renewal(NOW)
    assert not alice.agent.needs_renewal(END - 1)
    assert alice.agent.needs_renewal(END)
    saved = Keystore.open(alice.keystore.path, PASSPHRASE)
    assert saved.enrolment == enrolment
    assert saved.key_sets == alice.keystore.key_sets
    assert saved.last_response_time(ALICE) == datetime.fromtimestamp(int(NOW), UTC)
    assert alice.agent.clock.getDelayedCalls() == []  # provisioning alone starts no timer


def test_agent_renews_at_each_period_end(alice: Client) -> None:
    result_of(alice.agent.provision())
    alice.agent.start()
    assert _delays(alice.clock) == [END - NOW + SPREAD_SECONDS]
    alice.clock.advance(END - NOW + SPREAD_SECONDS - 1)
    assert len(alice.kms.calls) == 3  # not yet (init, keyprov, certcache)
    alice.clock.advance(1)
    assert [path for path, _ in alice.kms.calls[3:]] == [KEYPROV, CERTCACHE]  # a renewal needs no init
    assert alice.agent.last_error is None
    # N is kept as the one past period
    assert alice.keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1, PERIOD_N + 2]
    assert Keystore.open(alice.keystore.path, PASSPHRASE).periods(ALICE) == [PERIOD_N, PERIOD_N + 1, PERIOD_N + 2]
    now = alice.clock.seconds()
    assert _delays(alice.clock) == [END + KEY_PERIOD - now + SPREAD_SECONDS]
    alice.clock.advance(KEY_PERIOD)
    assert len(alice.kms.calls) == 7
    assert alice.keystore.periods(ALICE) == [PERIOD_N + 1, PERIOD_N + 2, PERIOD_N + 3]  # older dropped
    assert len(alice.clock.getDelayedCalls()) == 1
    alice.agent.stop()
    assert alice.clock.getDelayedCalls() == []
    alice.clock.advance(10 * KEY_PERIOD)
    assert len(alice.kms.calls) == 7


def test_agent_starts_at_once_when_keys_are_missing(alice: Client) -> None:
    alice.agent.start()
    assert _delays(alice.clock) == [0.0]
    alice.clock.advance(0)
    assert alice.keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1]
    assert _delays(alice.clock) == [END - NOW + SPREAD_SECONDS]


def test_agent_backs_off_and_recovers(alice: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    alice.kms.unreachable = True
    alice.agent.start()
    alice.clock.advance(0)
    delays = []
    for _ in range(9):
        assert alice.agent.last_error is not None and "cannot reach the KMS" in alice.agent.last_error
        [delay] = _delays(alice.clock)
        delays.append(delay)
        alice.clock.advance(delay)
    assert delays == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    assert delays[0] == RETRY_MIN and max(delays) == RETRY_MAX
    assert alice.keystore.periods(ALICE) == []
    assert not alice.keystore.path.exists()

    # the KMS answers now, but with an internal error (a signed 500)
    alice.kms.unreachable = False

    def broken(identifier: bytes, master: kms.MasterSecrets) -> kms.UserKeyMaterial:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service, "derive_user_keys", broken)
    [delay] = _delays(alice.clock)
    alice.clock.advance(delay)
    assert alice.agent.last_error is not None and "500" in alice.agent.last_error
    assert "internal error" in alice.agent.last_error
    assert _delays(alice.clock) == [RETRY_MAX]

    # recovered: keys stored, error cleared, the back-off starts from the beginning next time
    monkeypatch.undo()
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)
    alice.clock.advance(RETRY_MAX)
    assert alice.agent.last_error is None
    assert alice.keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1]
    now = alice.clock.seconds()
    assert _delays(alice.clock) == [END - now + SPREAD_SECONDS]
    alice.kms.unreachable = True
    alice.clock.advance(END - now + SPREAD_SECONDS)
    assert _delays(alice.clock) == [RETRY_MIN]


def test_agent_keeps_keys_of_a_bad_response_out(alice: Client) -> None:
    result_of(alice.agent.provision())
    before = dict(alice.keystore.key_sets)
    saved = alice.keystore.path.read_bytes()
    alice.kms.tamper = True  # a period later: the access token expired, the refresh token gets another
    alice.agent.start()
    alice.clock.advance(END - NOW + SPREAD_SECONDS)
    assert alice.agent.last_error is not None
    assert [path for path, _ in alice.kms.calls[3:]] == [KEYPROV, INIT]  # init asked only to explain the failure
    assert alice.keystore.key_sets == before
    # the file changed only by the IdMS's rotated refresh token (the renewal logged in again), never its keys
    assert Keystore.open(alice.keystore.path, PASSPHRASE).key_sets == before
    assert alice.keystore.path.read_bytes() != saved
    assert _delays(alice.clock) == [RETRY_MIN]


def test_agent_explains_refusals(app: KmsApplication, enrolment: Enrolment, tmp_path: Path) -> None:
    wrong = _client(app, enrolment, tmp_path / "k1", password="not alice's password")
    with pytest.raises(ProvisioningError, match=r"KMS login: IdMS answered 400 \(login failed, invalid_grant\)"):
        result_of(wrong.agent.provision())
    nosy = _client(app, enrolment, tmp_path / "k2")
    nosy.agent.identities = [BOB]
    with pytest.raises(ProvisioningError, match=f"403 \\(not allowed to get keys for {BOB}\\)"):
        result_of(nosy.agent.provision())
    assert not (tmp_path / "k1").exists() and not (tmp_path / "k2").exists()


def test_agent_provisions_a_group_it_manages(app: KmsApplication, enrolment: Enrolment, tmp_path: Path) -> None:
    gm = _client(app, enrolment, tmp_path / "gm", "gm")
    gm.agent.identities = [GM, GROUP]
    provisioned = result_of(gm.agent.provision())
    assert sorted(provisioned) == sorted([GM, GROUP])
    assert gm.keystore.identities() == sorted([GM, GROUP])
    assert [path for path, _ in gm.kms.calls] == [INIT, KEYPROV, CERTCACHE, INIT, KEYPROV]  # one cache per run
    assert gm.keystore.periods(GROUP) == [PERIOD_N, PERIOD_N + 1]


def test_stop_during_a_renewal_stays_stopped(alice: Client) -> None:
    result_of(alice.agent.provision())
    alice.agent.start()
    alice.kms.holding = True
    alice.clock.advance(END - NOW + SPREAD_SECONDS)
    assert alice.clock.getDelayedCalls() == []  # renewal in flight
    assert len(alice.kms.hold) == 1
    alice.agent.stop()
    alice.kms.holding = False
    alice.kms.hold[0].callback(None)  # the init answer arrives after stop(); keyprov and certcache follow at once
    assert alice.keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1, PERIOD_N + 2]
    assert alice.clock.getDelayedCalls() == []
    # start() works again
    alice.agent.start()
    assert len(alice.clock.getDelayedCalls()) == 1
    alice.agent.stop()
    assert alice.clock.getDelayedCalls() == []


# --- the certificate cache: External KMSs ---------------------------------------------------------------------

PARTNER_KMS = "kms.partner.org"
THIRD_KMS = "kms.third.net"


def _external(kms_uri: str, master: kms.MasterSecrets, *domains: str) -> KmsCertificate:
    return replace(
        domain_certificate(kms_uri, 86400, 0, master.kpak, master.z_public), role="External", kms_domains=domains
    )


@pytest.fixture
def partner(other_master: kms.MasterSecrets) -> KmsCertificate:
    return _external(PARTNER_KMS, other_master)  # no KmsDomainList: bound to partner.org, from its URI


@pytest.fixture
def third(other_master: kms.MasterSecrets) -> KmsCertificate:
    return _external(THIRD_KMS, other_master, "third.net", "ops.third.com")


def _trust_at_kms(kms_store: KmsStore, *certificates: KmsCertificate) -> None:
    for certificate in certificates:
        kms_store.add_trusted_certificate(certificate.kms_uri, certificate_to_xml(certificate), now=NOW - 100)


def test_accept_cert_cache(
    app: KmsApplication, kms_store: KmsStore, enrolment: Enrolment, partner: KmsCertificate
) -> None:
    _trust_at_kms(kms_store, partner)
    data = kms_reply(app, CERTCACHE, "alice")
    certificates, when = accept_cert_cache(data, enrolment, ALICE, NOW, None)
    assert certificates == [partner] and when == datetime.fromtimestamp(NOW, UTC)
    with pytest.raises(StaleResponse):
        accept_cert_cache(data, enrolment, ALICE, NOW + 1, when)
    with pytest.raises(WrongAddressee):
        accept_cert_cache(data, enrolment, BOB, NOW, None)
    with pytest.raises(SignatureInvalid):
        accept_cert_cache(resigned(data, app, signer=_signer("not the KMS")), enrolment, ALICE, NOW, None)
    with pytest.raises(UnexpectedMessage):
        accept_cert_cache(kms_reply(app, INIT, "alice"), enrolment, ALICE, NOW, None)


def test_agent_fetches_the_cert_cache(
    alice: Client, kms_store: KmsStore, partner: KmsCertificate, third: KmsCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    _trust_at_kms(kms_store, partner, third)
    caplog.set_level(logging.INFO, logger="ptt.client.provisioning")
    result_of(alice.agent.provision())
    assert alice.keystore.external == {PARTNER_KMS: partner, THIRD_KMS: third}
    trust = Keystore.open(alice.keystore.path, PASSPHRASE).trust()  # saved
    assert trust.kms_for("sip:x@partner.org").kms_uri == PARTNER_KMS
    assert trust.kms_for("sip:y@ops.third.com").kms_uri == THIRD_KMS
    assert trust.kms_for("sip:z@third.com").kms_uri == KMS_URI  # not a domain the third KMS speaks for
    assert trust.kms_for(ALICE).kms_uri == KMS_URI
    assert trust.domains[PARTNER_KMS] == partner.domain()
    assert f"trusting external KMS {PARTNER_KMS} for users in partner.org" in caplog.text
    assert f"trusting external KMS {THIRD_KMS} for users in third.net, ops.third.com" in caplog.text


def _keys_are_fresh(client: Client) -> None:
    period = ts33180.period_number(client.clock.seconds(), KEY_PERIOD, 0)
    assert client.keystore.periods(ALICE)[-2:] == [period, period + 1]
    assert Keystore.open(client.keystore.path, PASSPHRASE).periods(ALICE)[-2:] == [period, period + 1]


def test_a_failing_cert_cache_keeps_the_previous_one(
    app: KmsApplication,
    alice: Client,
    kms_store: KmsStore,
    partner: KmsCertificate,
    third: KmsCertificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keys are provisioned whatever the cache does; a cache that fails any check leaves the last good one."""
    _trust_at_kms(kms_store, partner)
    result_of(alice.agent.provision())
    old_cache = kms_reply(app, CERTCACHE, "alice", now=alice.clock.seconds())  # a genuine one, for a replay later
    # the KMS now serves another cache: any response that got through would change what the client holds
    kms_store.remove_trusted_certificate(PARTNER_KMS)
    _trust_at_kms(kms_store, third)

    def internal_error(result: HttpResult) -> HttpResult:
        return HttpResult(
            500, resigned(result.body, app, lambda r: replace(r, message=None, error=KmsError(500, "internal error")))
        )

    def unreachable(result: HttpResult) -> HttpResult:
        raise ProvisioningError("cannot reach the KMS at https://127.0.0.1:8443: refused")

    def cut_off(result: HttpResult) -> HttpResult:
        raise RuntimeError("body cut off")  # what a twisted.web read error looks like to the agent: not ours

    failures: dict[str, tuple[Callable[[HttpResult], HttpResult], str]] = {
        "HTTP 500": (internal_error, "500 (error): internal error"),
        "network": (unreachable, "cannot reach the KMS"),
        "read error": (cut_off, "RuntimeError: body cut off"),
        "tampered": (lambda r: HttpResult(200, r.body.replace(b"third.net", b"third.org")), "ignature"),
        "another signer": (lambda r: HttpResult(200, resigned(r.body, app, signer=_signer("mallory"))), "pinned"),
        "malformed": (lambda r: HttpResult(200, b"<KmsResponse"), "XML"),
        "for bob": (lambda r: HttpResult(200, resigned(r.body, app, lambda x: replace(x, user_uri=BOB))), BOB),
        "not a cache": (lambda r: HttpResult(200, kms_reply(app, INIT, "alice", now=NOW + 1)), "no KmsCertCache"),
        "replayed": (lambda r: HttpResult(200, old_cache), "replayed"),
    }
    for name, (rewrite, reason) in failures.items():
        alice.clock.advance(10)
        caplog.clear()
        caplog.set_level(logging.WARNING, logger="ptt.client.provisioning")
        alice.kms.rewrite[CERTCACHE] = rewrite
        provisioned = result_of(alice.agent.provision())
        assert sorted(provisioned) == [ALICE], name
        _keys_are_fresh(alice)
        assert alice.keystore.external == {PARTNER_KMS: partner}, name
        assert Keystore.open(alice.keystore.path, PASSPHRASE).external == {PARTNER_KMS: partner}, name
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "certificate cache not refreshed, keeping the previous one (external KMSs: kms.partner.org)" in warning
        assert reason in warning, (name, warning)
    # the KMS answers properly again: the new cache replaces the old one
    del alice.kms.rewrite[CERTCACHE]
    alice.clock.advance(10)
    result_of(alice.agent.provision())
    assert alice.keystore.external == {THIRD_KMS: third}
    # and a replay of the older cache, genuine and signed, is refused
    alice.kms.rewrite[CERTCACHE] = lambda r: HttpResult(200, old_cache)
    alice.clock.advance(10)
    caplog.clear()
    result_of(alice.agent.provision())
    assert alice.keystore.external == {THIRD_KMS: third}
    assert "replayed" in caplog.text


def test_a_failing_cert_cache_on_the_first_run_leaves_none(
    alice: Client, kms_store: KmsStore, partner: KmsCertificate
) -> None:
    _trust_at_kms(kms_store, partner)
    alice.kms.rewrite[CERTCACHE] = lambda r: HttpResult(200, b"not xml")
    result_of(alice.agent.provision())
    _keys_are_fresh(alice)
    assert alice.keystore.external == {} and alice.keystore.external_time is None
    assert alice.keystore.trust().kms_for("sip:x@partner.org").kms_uri == KMS_URI


def test_untrusting_at_the_kms_reaches_the_client(alice: Client, kms_store: KmsStore, partner: KmsCertificate) -> None:
    _trust_at_kms(kms_store, partner)
    alice.agent.start()
    alice.clock.advance(0)
    assert alice.keystore.external == {PARTNER_KMS: partner}
    kms_store.remove_trusted_certificate(PARTNER_KMS)
    alice.clock.advance(END - NOW + SPREAD_SECONDS)  # the next renewal fetches the cache again
    assert alice.keystore.external == {}
    reopened = Keystore.open(alice.keystore.path, PASSPHRASE)
    assert reopened.external == {}
    assert reopened.trust().kms_for("sip:x@partner.org").kms_uri == KMS_URI
    alice.agent.stop()


# --- Keystore ------------------------------------------------------------------------------------------------


def _provisioned_keystore(app: KmsApplication, enrolment: Enrolment, path: Path) -> Keystore:
    keystore = Keystore.open(path, PASSPHRASE)
    keystore.enrolment = enrolment
    sets, when = accept_key_prov(kms_reply(app, KEYPROV, "alice"), enrolment, ALICE, NOW, None)
    keystore.add(sets, when, ALICE)
    keystore.save()
    return keystore


def test_keystore_file_is_private_and_sealed(app: KmsApplication, enrolment: Enrolment, tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        keystore = _provisioned_keystore(app, enrolment, tmp_path / "sub" / "keystore")
    finally:
        os.umask(old_umask)
    path = keystore.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keystore"]  # no temporary file left
    data = path.read_bytes()
    assert len(keystore.key_sets) == 2
    for stored in keystore.key_sets.values():
        for secret in (stored.rsk, stored.ssk):
            for form in (secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)):
                assert form not in data
        assert stored.rsk.hex() not in repr(stored) and stored.ssk.hex() not in repr(stored)
    assert ALICE.encode() not in data and KMS_URI.encode() not in data
    # saving again replaces the file and keeps it private
    path.chmod(0o644)
    keystore.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keystore_reopens(app: KmsApplication, enrolment: Enrolment, tmp_path: Path) -> None:
    keystore = _provisioned_keystore(app, enrolment, tmp_path / "keystore")
    again = Keystore.open(keystore.path, PASSPHRASE)
    assert again.enrolment == enrolment
    assert again.key_sets == keystore.key_sets
    assert again.last_response == keystore.last_response
    assert again.last_response_time(ALICE) == datetime.fromtimestamp(int(NOW), UTC)
    assert again.last_response_time(BOB) is None
    assert again.identities() == [ALICE]
    assert again.periods(ALICE) == [PERIOD_N, PERIOD_N + 1]
    current = again.current_keys(ALICE, NOW)
    assert current is not None and current.period_no == PERIOD_N
    assert current.uid == ts33180.uid(ALICE, KMS_URI, KEY_PERIOD, 0, PERIOD_N)
    assert again.current_keys(ALICE, END + KEY_PERIOD) is None
    assert again.current_keys(BOB, NOW) is None
    # the reopened keystore refuses the response it was provisioned with
    with pytest.raises(StaleResponse):
        accept_key_prov(kms_reply(app, KEYPROV, "alice"), enrolment, ALICE, NOW, again.last_response_time(ALICE))


def test_keystore_keeps_external_certificates(
    app: KmsApplication, enrolment: Enrolment, tmp_path: Path, partner: KmsCertificate, third: KmsCertificate
) -> None:
    keystore = _provisioned_keystore(app, enrolment, tmp_path / "keystore")
    when = datetime.fromtimestamp(NOW + 0.5, UTC)
    keystore.set_external([third, partner], when)
    keystore.save()
    again = Keystore.open(keystore.path, PASSPHRASE)
    assert again.external == {PARTNER_KMS: partner, THIRD_KMS: third}
    assert again.external_response_time() == when
    assert again.key_sets == keystore.key_sets
    trust = again.trust()
    assert trust.own == enrolment.certificate.domain()
    assert trust.kms_for("sip:x@partner.org").kms_uri == PARTNER_KMS
    assert trust.kms_for("sip:x@third.net").kms_uri == THIRD_KMS
    # replaced, not merged
    again.set_external([], when)
    again.save()
    assert Keystore.open(keystore.path, PASSPHRASE).external == {}
    with pytest.raises(KeystoreError, match="not enrolled"):
        Keystore(tmp_path / "other", PASSPHRASE).trust()


def test_keystore_written_before_the_cert_cache_opens(enrolment: Enrolment, tmp_path: Path) -> None:
    """A keystore from before External certificates were kept: the same document without "external"."""
    document = {"enrolment": enrolment.to_json().decode(), "key_sets": [_stored(ALICE, PERIOD_N).to_json()],
                "last_response": {ALICE: NOW}}  # fmt: skip
    path = tmp_path / "keystore"
    path.write_bytes(seal(json.dumps(document).encode(), PASSPHRASE, label=keystore_module.LABEL, cost=2**10))
    keystore = Keystore.open(path, PASSPHRASE)
    assert keystore.external == {} and keystore.external_response_time() is None
    assert keystore.periods(ALICE) == [PERIOD_N]
    assert keystore.trust().external == {}
    # a damaged certificate in the list is a malformed keystore, like any other damage
    document["external"] = ["<KmsCertificate>"]
    path.write_bytes(seal(json.dumps(document).encode(), PASSPHRASE, label=keystore_module.LABEL, cost=2**10))
    with pytest.raises(KeystoreError, match="malformed"):
        Keystore.open(path, PASSPHRASE)


def test_absent_keystore_is_empty(tmp_path: Path) -> None:
    keystore = Keystore.open(tmp_path / "none", PASSPHRASE)
    assert keystore.enrolment is None and keystore.key_sets == {} and keystore.identities() == []
    assert keystore.current_keys(ALICE, NOW) is None and keystore.held_keys(ALICE) == []
    assert keystore.prune(NOW) == []


def test_keystore_refuses_wrong_passphrase_and_alterations(
    app: KmsApplication, enrolment: Enrolment, tmp_path: Path
) -> None:
    keystore = _provisioned_keystore(app, enrolment, tmp_path / "keystore")
    path = keystore.path
    with pytest.raises(KeystoreError):
        Keystore.open(path, b"not the passphrase")
    data = path.read_bytes()
    match = re.search(rb'"ciphertext": "([0-9a-f]+)"', data)
    assert match is not None
    i = match.start(1) + 100
    altered = data[:i] + (b"0" if data[i : i + 1] != b"0" else b"1") + data[i + 1 :]
    for bad in (altered, data[: len(data) // 2], b"", b"not json", b"[]", seal(b"{}", PASSPHRASE, label="other")):
        path.write_bytes(bad)
        with pytest.raises(KeystoreError):
            Keystore.open(path, PASSPHRASE)
    # sealed with the right passphrase and label but not a keystore inside
    for content in (b"not json", b'{"key_sets": [{"uri": "x"}]}', b'{"enrolment": "{}"}', b"[1]"):
        path.write_bytes(seal(content, PASSPHRASE, label=keystore_module.LABEL, cost=2**10))
        with pytest.raises(KeystoreError):
            Keystore.open(path, PASSPHRASE)


def test_keystore_io_errors_are_keystore_errors(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(KeystoreError):
        Keystore.open(tmp_path / "dir", PASSPHRASE)
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(KeystoreError):
        Keystore(blocker / "keystore", PASSPHRASE).save()  # its directory cannot be made
    with pytest.raises(KeystoreError):
        Keystore(tmp_path / "k", b"").save()  # nothing can be sealed with an empty passphrase
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def _stored(uri: str, period: int) -> StoredKeySet:
    return StoredKeySet(uri, period, bytes(32), bytes(32), bytes(65), bytes(257), None, None)


def test_prune_keeps_one_past_period(enrolment: Enrolment, tmp_path: Path) -> None:
    keystore = Keystore(tmp_path / "k", PASSPHRASE)
    keystore.enrolment = enrolment
    for uri in (ALICE, GROUP):
        for period in range(PERIOD_N - 3, PERIOD_N + 2):
            keystore.key_sets[(uri, period)] = _stored(uri, period)
    assert KEEP_PAST_PERIODS == 1
    assert keystore.prune(END - 1) == [(u, p) for u in (ALICE, GROUP) for p in (PERIOD_N - 3, PERIOD_N - 2)]
    assert keystore.periods(ALICE) == keystore.periods(GROUP) == [PERIOD_N - 1, PERIOD_N, PERIOD_N + 1]
    assert keystore.prune(END - 1) == []
    assert sorted(keystore.prune(END)) == [(ALICE, PERIOD_N - 1), (GROUP, PERIOD_N - 1)]
    assert keystore.periods(ALICE) == [PERIOD_N, PERIOD_N + 1]


def test_held_keys_receive_a_group_key(
    app: KmsApplication, enrolment: Enrolment, tmp_path: Path, kms_store: KmsStore
) -> None:
    """End to end: the KMS issues keys to Alice and to the group's manager; the manager keys the group with a GMK
    I_MESSAGE; Alice, with only what her reopened keystore holds, receives it, in this period and the next."""
    _provisioned_keystore(app, enrolment, tmp_path / "alice")
    held = Keystore.open(tmp_path / "alice", PASSPHRASE).held_keys(ALICE)
    assert [k.period_no for k in held] == [PERIOD_N, PERIOD_N + 1]
    assert all(isinstance(k, IdentityKeys) and k.domain == enrolment.certificate.domain() for k in held)

    group_data = kms_reply(app, KEYPROV, "gm", identity=GROUP)
    group_sets, _ = accept_key_prov(group_data, enrolment, GROUP, NOW, None)
    domain = enrolment.certificate.domain()
    trusted = {KMS_URI: domain}
    replay_cache = ReplayCache()
    for group_set, sent in zip(group_sets, (NOW, END + 60.0), strict=True):
        manager = IdentityKeys(GROUP, domain, group_set.key_period_no, group_set.ssk, group_set.pvt, group_set.rsk)
        group_key = make_group_key()
        message = build_gmk_messages(manager, group_key, [ALICE], now=sent)[ALICE]
        received = receive_i_message(
            message,
            responder=held,
            expected_initiators=GROUP,
            trusted_kms=trusted,
            now=sent + 1,
            replay_cache=replay_cache,
        )
        assert received.key == group_key.gmk and received.purpose == KeyPurpose.GMK
    # Bob's keys cannot take Alice's message
    bob_sets, _ = accept_key_prov(kms_reply(app, KEYPROV, "bob"), enrolment, BOB, NOW, None)
    bob_keys = [IdentityKeys(BOB, domain, k.key_period_no, k.ssk, k.pvt, k.rsk) for k in bob_sets]
    manager = IdentityKeys(GROUP, domain, PERIOD_N, group_sets[0].ssk, group_sets[0].pvt, group_sets[0].rsk)
    message = build_gmk_messages(manager, make_group_key(), [ALICE], now=NOW)[ALICE]
    with pytest.raises(WrongRecipient):
        receive_i_message(
            message,
            responder=bob_keys,
            expected_initiators=GROUP,
            trusted_kms=trusted,
            now=NOW + 1,
            replay_cache=ReplayCache(),
        )


def test_two_genuine_responses_within_one_second_are_both_accepted(app: KmsApplication, enrolment: Enrolment) -> None:
    """Response Time carries sub-second precision, so provisioning twice quickly is not mistaken for a replay."""
    first = kms_reply(app, KEYPROV, "alice", now=NOW + 0.1)
    second = kms_reply(app, KEYPROV, "alice", now=NOW + 0.6)
    _, when = accept_key_prov(first, enrolment, ALICE, NOW + 0.6, None)
    _, later = accept_key_prov(second, enrolment, ALICE, NOW + 0.7, when)
    assert later > when
