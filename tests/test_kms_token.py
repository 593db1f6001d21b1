"""Token login (issue 14): the IdMS's token endpoint and the KMS's Bearer check, on ``KmsApplication.handle`` with
time passed in (both store backends), and the JWS codec's strictness. The provisioning client's side (refresh and
retry once, the keystore) is driven in-memory at the end."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from client.keystore import Keystore
from client.provisioning import ProvisioningAgent
from ptt.crypto import kms
from ptt.kmsformat.enrolment import TOKEN_PATH, Enrolment
from ptt.kmsformat.signing import verify_signed_response
from server.accounts import passwords
from server.kms import jws
from server.kms.idms import CLOCK_LEEWAY, KMS_SCOPE
from server.kms.material import certificate_pem, make_self_signed
from server.kms.service import PREFIX, DomainConfig, KmsApplication
from server.kms.store import KmsStore
from server.web import HttpReply
from tests.test_kms_service import NOW, request_body
from tests.test_provisioning import FakeKms, result_of

KMS_URI = "kms.example.org"
BASE_URL = "https://127.0.0.1:8443"
KEYPROV = PREFIX + "keyprov"
ALICE, BOB, GROUP = "sip:alice@example.org", "sip:bob@example.org", "sip:fire-ops@groups.example.org"
PASSWORDS = {"alice": "alice's long password", "bob": "bob-password-1234", "gm": "group manager secret"}
LIFETIME = 600


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture(scope="module")
def master() -> kms.MasterSecrets:
    return kms.generate_master_secrets()


@pytest.fixture(scope="module")
def signer() -> tuple[Any, Any]:
    return make_self_signed("ptt KMS response signing", san_dns=[], san_ips=[], tls_server=False)


@pytest.fixture
def kms_store(database_url: str, cheap_passwords: None) -> Iterator[KmsStore]:
    s = KmsStore(database_url)
    s.add_account("alice", PASSWORDS["alice"], uri=ALICE, now=NOW - 1000)
    s.add_account("bob", PASSWORDS["bob"], uri=BOB, now=NOW - 1000)
    s.add_account("gm", PASSWORDS["gm"], uri="sip:gm@example.org", now=NOW - 1000)
    s.grant("gm", "sip:*@groups.example.org", now=NOW - 1000)
    yield s
    s.close()


def make_app(store: KmsStore, master: kms.MasterSecrets, signer: tuple[Any, Any], **settings: Any) -> KmsApplication:
    config = DomainConfig(
        kms_uri=KMS_URI, key_period=2592000, key_period_offset=0, base_url=BASE_URL, access_token_lifetime=LIFETIME,
        **settings,
    )  # fmt: skip
    return KmsApplication(store, master, config, signer[0], signer[1], ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def app(kms_store: KmsStore, master: kms.MasterSecrets, signer: tuple[Any, Any]) -> KmsApplication:
    return make_app(kms_store, master, signer)


def token_request(app: KmsApplication, now: float = NOW, peer: str = "192.0.2.10", **fields: str) -> HttpReply:
    body = urlencode(fields).encode()
    return app.handle(method="POST", path=TOKEN_PATH, authorization=None, body=body, peer=peer, now=now)


def login(app: KmsApplication, name: str, now: float = NOW, **extra: str) -> dict[str, Any]:
    reply = token_request(app, now, grant_type="password", username=name, password=PASSWORDS[name], **extra)
    assert reply.status == 200, reply.body
    assert reply.headers["Cache-Control"] == "no-store"
    document: dict[str, Any] = json.loads(reply.body)
    return document


def keyprov(app: KmsApplication, token: str, now: float = NOW, identity: str | None = None) -> HttpReply:
    body = request_body(identity) if identity else b""
    reply = app.handle(method="POST", path=KEYPROV, authorization=f"Bearer {token}", body=body, peer="p", now=now)
    verify_signed_response(reply.body, app.signing_cert)  # every answer, errors too, is signed XML
    return reply


def challenge(reply: HttpReply) -> str:
    return reply.headers.get("WWW-Authenticate", "")


# --- the token endpoint ---------------------------------------------------------------------------------------


def test_password_grant_gives_a_short_lived_scoped_token(app: KmsApplication) -> None:
    document = login(app, "alice")
    assert document["token_type"] == "Bearer" and document["expires_in"] == LIFETIME
    assert document["scope"] == f"{KMS_SCOPE} {ALICE}"
    claims = jws.verify(document["access_token"], app.idms.keys)
    assert claims["sub"] == "alice" and claims["aud"] == KMS_URI and claims["iss"] == BASE_URL + "/idms"
    assert claims["exp"] - claims["iat"] == LIFETIME and claims["jti"]
    assert keyprov(app, document["access_token"]).status == 200


def test_wrong_password_unknown_user_and_lockout(app: KmsApplication) -> None:
    reply = token_request(app, grant_type="password", username="alice", password="wrong password")
    assert reply.status == 400 and json.loads(reply.body)["error"] == "invalid_grant"
    assert token_request(app, grant_type="password", username="nobody", password="x" * 9).status == 400
    for i in range(4):  # 5 in a row from one address lock the account for that address (the accounts' rules)
        token_request(app, NOW + i, grant_type="password", username="alice", password="wrong password")
    reply = token_request(app, NOW + 5, grant_type="password", username="alice", password=PASSWORDS["alice"])
    assert reply.status == 429 and int(reply.headers["Retry-After"]) > 0
    assert "locked" in json.loads(reply.body)["error_description"]
    login(app, "alice", NOW + 5, peer="198.51.100.1")  # the owner elsewhere is not locked out


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "invalid_request"),
        (b"grant_type=client_credentials", "unsupported_grant_type"),
        (b"grant_type=password&grant_type=password&username=alice&password=x", "invalid_request"),
        (b"grant_type=password&username=alice", "invalid_request"),
        (b"\xff\xfe", "invalid_request"),
        (b"grant_type=refresh_token", "invalid_request"),
        (b"grant_type=refresh_token&refresh_token=made-up", "invalid_grant"),
    ],
)
def test_malformed_token_requests(app: KmsApplication, body: bytes, error: str) -> None:
    reply = app.handle(method="POST", path=TOKEN_PATH, authorization=None, body=body, peer="p", now=NOW)
    assert reply.status == 400 and json.loads(reply.body)["error"] == error


def test_narrower_scope_and_a_scope_not_granted(app: KmsApplication) -> None:
    document = login(app, "gm", scope=f"{KMS_SCOPE} {GROUP}")
    assert document["scope"] == f"{KMS_SCOPE} {GROUP}"
    assert keyprov(app, document["access_token"], identity=GROUP).status == 200
    assert keyprov(app, document["access_token"], identity="sip:gm@example.org").status == 403
    reply = token_request(app, grant_type="password", username="alice", password=PASSWORDS["alice"], scope=BOB)
    assert reply.status == 400 and json.loads(reply.body)["error"] == "invalid_scope"


# --- the KMS's Bearer check -----------------------------------------------------------------------------------


def test_a_token_for_one_identity_is_refused_for_another(app: KmsApplication, kms_store: KmsStore) -> None:
    token = login(app, "alice")["access_token"]
    reply = keyprov(app, token, identity=BOB)
    assert reply.status == 403 and 'error="insufficient_scope"' in challenge(reply)
    kms_store.grant("alice", BOB, now=NOW)  # granted after the token was issued: not in its scope
    assert keyprov(app, token, identity=BOB).status == 403
    assert keyprov(app, login(app, "alice")["access_token"], identity=BOB).status == 200


def test_a_grant_revoked_after_issue_is_refused(app: KmsApplication, kms_store: KmsStore) -> None:
    token = login(app, "gm")["access_token"]
    assert keyprov(app, token, identity=GROUP).status == 200
    kms_store.revoke("gm", "sip:*@groups.example.org", now=NOW)
    assert keyprov(app, token, identity=GROUP).status == 403  # in the token's scope, but no longer granted


@pytest.mark.parametrize("revoke", ["disable", "remove"])
def test_a_revoked_users_token_is_refused_at_once(app: KmsApplication, kms_store: KmsStore, revoke: str) -> None:
    document = login(app, "alice")
    assert keyprov(app, document["access_token"]).status == 200
    if revoke == "disable":
        kms_store.set_disabled("alice", True, now=NOW + 1)
    else:
        kms_store.remove_account("alice", now=NOW + 1)
    reply = keyprov(app, document["access_token"], NOW + 2)
    assert reply.status == 401 and 'error="invalid_token"' in challenge(reply)
    assert ("disabled" if revoke == "disable" else "removed") in challenge(reply)
    refreshed = token_request(app, NOW + 3, grant_type="refresh_token", refresh_token=document["refresh_token"])
    assert refreshed.status == 400 and json.loads(refreshed.body)["error"] == "invalid_grant"
    if revoke == "disable":  # enabling again does not bring back the old refresh tokens
        kms_store.set_disabled("alice", False, now=NOW + 4)
        refreshed = token_request(app, NOW + 5, grant_type="refresh_token", refresh_token=document["refresh_token"])
        assert refreshed.status == 400


def test_a_new_password_ends_the_refresh_tokens(app: KmsApplication, kms_store: KmsStore) -> None:
    document = login(app, "alice")
    kms_store.set_password("alice", "a brand new password", now=NOW + 1)
    reply = token_request(app, NOW + 2, grant_type="refresh_token", refresh_token=document["refresh_token"])
    assert reply.status == 400 and "password changed" in json.loads(reply.body)["error_description"]


def test_expiry_says_so_and_refresh_rotates(app: KmsApplication, kms_store: KmsStore) -> None:
    document = login(app, "alice")
    assert keyprov(app, document["access_token"], NOW + LIFETIME + CLOCK_LEEWAY - 1).status == 200  # leeway
    later = NOW + LIFETIME + CLOCK_LEEWAY
    reply = keyprov(app, document["access_token"], later)
    assert reply.status == 401
    assert challenge(reply).startswith(
        'Bearer realm="ptt-kms", error="invalid_token", error_description="the access token expired"'
    )
    refreshed = token_request(app, later, grant_type="refresh_token", refresh_token=document["refresh_token"])
    assert refreshed.status == 200
    new = json.loads(refreshed.body)
    assert new["refresh_token"] != document["refresh_token"] and new["scope"] == document["scope"]
    assert keyprov(app, new["access_token"], later).status == 200
    # the old refresh token again: refused, and the whole login (the new one too) is revoked
    again = token_request(app, later + 1, grant_type="refresh_token", refresh_token=document["refresh_token"])
    assert again.status == 400 and "used before" in json.loads(again.body)["error_description"]
    newer = token_request(app, later + 2, grant_type="refresh_token", refresh_token=new["refresh_token"])
    assert newer.status == 400
    assert any(e.event == "refresh-token-reused" for e in kms_store.audit_log())


def test_refresh_token_expires(kms_store: KmsStore, master: kms.MasterSecrets, signer: tuple[Any, Any]) -> None:
    app = make_app(kms_store, master, signer, refresh_token_lifetime=3600)
    document = login(app, "alice")
    reply = token_request(app, NOW + 3600, grant_type="refresh_token", refresh_token=document["refresh_token"])
    assert reply.status == 400 and "expired" in json.loads(reply.body)["error_description"]


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"\x01" * 64) -> str:
    def part(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{part(signature)}"


def test_tampered_and_foreign_tokens_are_refused(app: KmsApplication) -> None:
    token = login(app, "alice")["access_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    bob_claims = dict(claims, sub="bob", scope=f"{KMS_SCOPE} {BOB}")
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = [
        f"{header}.{_forge({}, bob_claims).split('.')[1]}.{signature}",  # claims swapped under the signature
        _forge({"alg": "none", "kid": kid, "typ": "at+jwt"}, bob_claims, b""),
        _forge({"alg": "HS256", "kid": kid, "typ": "at+jwt"}, bob_claims, b"\x00" * 32),
        _forge({"alg": "ES256", "kid": kid, "typ": "at+jwt", "jku": "https://evil"}, bob_claims),
        jws.sign(bob_claims, other_key),  # well-formed, another key
        f"{header}.{payload}.{signature[:-2]}",
        f"{header}.{payload}",
        token + "." + signature,
        "x" * (jws.MAX_TOKEN_LENGTH + 1),
        "",
        "é.é.é",
    ]
    for bad in forged:
        reply = keyprov(app, bad, identity=BOB if "bob" in bad else None)
        assert reply.status == 401, bad[:80]
        assert 'error="invalid_token"' in challenge(reply)


def test_token_of_another_kms_or_issuer_is_refused(
    kms_store: KmsStore, master: kms.MasterSecrets, signer: tuple[Any, Any]
) -> None:
    app = make_app(kms_store, master, signer)
    token = login(app, "alice")["access_token"]
    other = KmsApplication(
        kms_store, master, DomainConfig("kms.other.org", 2592000, 0, BASE_URL), signer[0], signer[1], app.idms.key
    )
    reply = keyprov(other, token)
    assert reply.status == 401 and "another service" in challenge(reply)


def test_basic_login_is_off_by_default_and_on_when_allowed(
    app: KmsApplication, kms_store: KmsStore, master: kms.MasterSecrets, signer: tuple[Any, Any]
) -> None:
    basic = "Basic " + base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    reply = app.handle(method="POST", path=KEYPROV, authorization=basic, body=b"", peer="p", now=NOW)
    assert reply.status == 401 and "/idms/token" in challenge(reply) and "Basic realm" not in challenge(reply)
    allowed = make_app(kms_store, master, signer, allow_basic_login=True)
    reply = allowed.handle(method="POST", path=KEYPROV, authorization=basic, body=b"", peer="p", now=NOW)
    assert reply.status == 200


# --- the client: refresh, retry once, the keystore ------------------------------------------------------------


def _agent(app: KmsApplication, tmp_path: Path, name: str = "alice") -> tuple[Clock, FakeKms, ProvisioningAgent]:
    from tests.test_provisioning import PASSPHRASE, URIS

    clock = Clock()
    clock.advance(NOW)
    tls_pem = certificate_pem(make_self_signed("tls", san_dns=[], san_ips=["127.0.0.1"])[1])
    enrolment = Enrolment(KMS_URI, BASE_URL, tls_pem, certificate_pem(app.signing_cert), certificate=app.certificate)
    keystore = Keystore.open(tmp_path / "keystore", PASSPHRASE)
    keystore.enrolment = enrolment
    fake = FakeKms(app, clock, name, PASSWORDS[name])
    agent = ProvisioningAgent(clock, keystore, name, PASSWORDS[name], [URIS.get(name, ALICE)], http=fake)
    fake.login._refresh = keystore.refresh_tokens.get(name)
    fake.login._keep_refresh = agent._keep_refresh_token
    return clock, fake, agent


def test_client_logs_in_once_refreshes_and_retries_once(app: KmsApplication, tmp_path: Path) -> None:
    from tests.test_provisioning import PASSPHRASE

    clock, fake, agent = _agent(app, tmp_path)
    result_of(agent.provision())
    assert [grant for grant, _ in fake.token_calls] == ["password"]  # one login for the three requests
    assert all(a.startswith("Bearer ") for a in fake.authorizations)
    stored = Keystore.open(agent.keystore.path, PASSPHRASE).refresh_tokens["alice"]
    assert stored and stored.encode() not in agent.keystore.path.read_bytes()  # sealed
    assert stored not in repr(agent.keystore)
    clock.advance(LIFETIME - 30)  # nearly expired: refreshed before use
    result_of(agent.provision())
    assert [grant for grant, _ in fake.token_calls] == ["password", "refresh_token"]
    assert Keystore.open(agent.keystore.path, PASSPHRASE).refresh_tokens["alice"] != stored  # the rotated one
    # the KMS refuses a token the client still thinks good (e.g. its clock is late): refresh and retry once
    fake.login._expires = clock.seconds() + 10 * LIFETIME
    clock.advance(LIFETIME + CLOCK_LEEWAY + 1)
    calls = len(fake.calls)
    result_of(agent.provision())
    assert [grant for grant, _ in fake.token_calls][-1] == "refresh_token"
    # a renewal asks no init: keyprov refused, keyprov again with the refreshed token, certcache
    assert [path.rsplit("/", 1)[1] for path, _ in fake.calls[calls:]] == ["keyprov", "keyprov", "certcache"]


def test_client_logs_in_with_the_password_when_its_refresh_token_is_refused(
    app: KmsApplication, kms_store: KmsStore, tmp_path: Path
) -> None:
    clock, fake, agent = _agent(app, tmp_path)
    result_of(agent.provision())
    kms_store.revoke_refresh_tokens("alice")
    clock.advance(LIFETIME + CLOCK_LEEWAY)
    result_of(agent.provision())
    assert [grant for grant, _ in fake.token_calls] == ["password", "refresh_token", "password"]


def test_an_old_keystore_still_opens_and_provisions_with_tokens(app: KmsApplication, tmp_path: Path) -> None:
    """A keystore written before issue 14 (no refresh token, no renewal slot) opens and provisions again."""
    from ptt.sealed import seal, unseal
    from tests.test_provisioning import PASSPHRASE

    _, _, agent = _agent(app, tmp_path)
    result_of(agent.provision())
    path = agent.keystore.path
    document = json.loads(unseal(path.read_bytes(), PASSPHRASE, label="ptt-client-keystore"))
    del document["refresh_tokens"], document["renewal_slot"]
    path.write_bytes(seal(json.dumps(document).encode(), PASSPHRASE, label="ptt-client-keystore"))
    old = Keystore.open(path, PASSPHRASE)
    assert old.refresh_tokens == {} and old.renewal_slot is None and old.periods(ALICE)
    clock, fake, again = _agent(app, tmp_path)
    assert again.keystore.renewal_slot is not None
    clock.advance(1)  # a later response than the last one accepted
    result_of(again.provision())
    assert [grant for grant, _ in fake.token_calls] == ["password"]
    reopened = Keystore.open(path, PASSPHRASE)
    assert "alice" in reopened.refresh_tokens and reopened.renewal_slot == again.keystore.renewal_slot


def test_renewals_spread_over_the_period_and_survive_a_restart(app: KmsApplication, tmp_path: Path) -> None:
    from ptt import ts33180
    from tests.test_provisioning import PASSPHRASE

    clock, _, agent = _agent(app, tmp_path)
    result_of(agent.provision())
    period = ts33180.period_number(NOW, 2592000, 0)
    start, _ = ts33180.period_bounds(period + 1, 2592000, 0)
    due = NOW + agent.next_renewal(NOW)
    assert start + 0.1 * 2592000 <= due <= start + 0.9 * 2592000  # in the next period, never at its rollover
    slot = agent.keystore.renewal_slot
    assert Keystore.open(agent.keystore.path, PASSPHRASE).renewal_slot == slot
    _, _, restarted = _agent(app, tmp_path)
    assert restarted.next_renewal(NOW) == agent.next_renewal(NOW)
    # many keystores: their renewal times are spread, not one second
    times = set()
    for i in range(20):
        keystore = Keystore(tmp_path / f"k{i}", PASSPHRASE)
        keystore.enrolment = agent.keystore.enrolment
        other = ProvisioningAgent(clock, keystore, "alice", "x", [ALICE], http=agent.http)
        keystore.key_sets = dict(agent.keystore.key_sets)
        times.add(round(other.next_renewal(NOW)))
    assert len(times) > 15


# --- upgrading a domain from before issue 14 ------------------------------------------------------------------


def test_an_older_domain_keeps_basic_login_and_a_new_one_has_it_off(tmp_path: Path) -> None:
    from server.kms.database import _UPGRADES
    from server.sqldb import SqliteDatabase

    old = SqliteDatabase(tmp_path / "old.sqlite3")
    old.upgrade({0: _UPGRADES[0]}, program="KMS")  # the schema before issue 14, with a domain in it
    with old.transaction() as db:
        db.execute("INSERT INTO settings (key, value) VALUES ('kms_uri', ?)", (KMS_URI,))
    old.close()
    with KmsStore(tmp_path / "old.sqlite3") as upgraded:
        assert upgraded.get_setting("basic_login") == "on"
        assert upgraded.refresh_token_count() == 0
    with KmsStore(tmp_path / "new.sqlite3") as fresh:
        assert fresh.get_setting("basic_login") is None  # off


def test_a_data_directory_without_an_idms_key_gets_one(tmp_path: Path) -> None:
    import stat

    from server.kms.material import load_or_create_private_key

    path = tmp_path / "idms-key.pem"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_private_key(path).private_numbers() == key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["idms-key.pem"]
