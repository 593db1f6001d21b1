"""The KMS web service: TS 33.180 Annex D endpoints over HTTPS (TLS 1.2+), access tokens from the IdMS, signed XML.

``KmsApplication.handle`` is the whole request logic (plain values in, an ``HttpReply`` out, time passed in);
``KmsResource`` adapts it to twisted.web and runs it on one worker thread (scrypt and SQLite must not stall the
reactor); ``build_application`` loads a data directory made by ``ptt-kms init``; ``server.kms.serving`` listens,
in one process or in N worker processes on the one port (each its own reactor, thread and store connection).

What each worker keeps to itself: the login rules' counters (``server.accounts.LoginGuard``, in memory), so with
N workers an address gets up to N times the failures before a lockout or throttle (the kernel spreads its
connections over the workers). Everything else a request reads or writes is in the shared store: accounts,
grants, issuance records, the audit log, precomputed key sets.

Endpoints (POST, optional <KmsRequest> body naming the identity wanted, default the account's own URI):
  /keymanagement/identity/v1/init       the domain certificate (KmsInit)
  /keymanagement/identity/v1/keyprov    the identity's key sets for the current and the next key period
  /keymanagement/identity/v1/certcache  certificates of other domains this KMS vouches for
  /idms/token                           the IdMS's OAuth 2.0 token endpoint (``server.kms.idms``)

Each Annex D request carries ``Authorization: Bearer ACCESS-TOKEN`` (RFC 6750); HTTP Basic with the password on
every request is refused unless the domain allows it (``ptt-kms basic-login on``, for clients from before issue 14).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ptt.crypto.kms import MasterSecrets, derive_user_keys
from ptt.kmsformat.model import (
    KmsCertCache,
    KmsCertificate,
    KmsError,
    KmsFormatError,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsResponse,
)
from ptt.kmsformat.signing import sign_response
from ptt.kmsformat.xml import parse_certificate, parse_request
from ptt.ts33180 import period_bounds, period_number
from server.accounts import IP_FAILURE_LIMIT as IP_FAILURE_LIMIT  # re-exported: the per-address throttle's limit
from server.accounts import IP_FAILURE_WINDOW as IP_FAILURE_WINDOW
from server.accounts import LockedOut, LoginFailed, retry_after_header
from server.kms.domain import domain_certificate
from server.kms.idms import (
    DEFAULT_ACCESS_TOKEN_LIFETIME,
    DEFAULT_REFRESH_TOKEN_LIFETIME,
    REALM,
    TOKEN_PATH,
    AccessToken,
    IdentityManagement,
    TokenRefused,
    bearer_challenge,
)
from server.kms.issuance import IssuanceDomain, KeySetSealer
from server.kms.store import KmsStore
from server.web import (
    MAX_BODY,
    HttpReply,
    basic_credentials,
)

log = logging.getLogger("ptt.kms")

PREFIX = "/keymanagement/identity/v1/"
ENDPOINTS = ("init", "keyprov", "certcache")

# KmsError codes we send (TS 33.180 leaves the values to the KMS)
ERR_BAD_REQUEST = 400
ERR_UNAUTHORISED = 401
ERR_FORBIDDEN = 403
ERR_NOT_FOUND = 404
ERR_LOCKED = 429
ERR_INTERNAL = 500
ANONYMOUS = "anonymous"  # UserUri of error responses to requests nobody has logged in for
STALL_ENV = "PTT_KMS_TEST_STALL_KEYPROV"  # tests only: a file path; see KmsApplication._stall_hook
STALL_SECONDS = 120.0


@dataclass(frozen=True)
class DomainConfig:
    kms_uri: str
    key_period: int
    key_period_offset: int
    base_url: str
    valid_from: float | None = None  # the domain certificate's validity (recorded by ptt-kms init)
    valid_to: float | None = None
    allow_basic_login: bool = False  # HTTP Basic on every request (before issue 14); off: IdMS access tokens only
    access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME
    refresh_token_lifetime: int = DEFAULT_REFRESH_TOKEN_LIFETIME

    @property
    def token_url(self) -> str:
        return self.base_url.rstrip("/") + TOKEN_PATH


class KmsApplication:
    """Authenticates, authorises and answers one request; every answer (errors included) is signed XML."""

    def __init__(
        self,
        store: KmsStore,
        master: MasterSecrets,
        config: DomainConfig,
        signing_key: ec.EllipticCurvePrivateKey,
        signing_cert: x509.Certificate,
        idms_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        """``idms_key`` signs the access tokens (``load_application`` reads it from the data directory; without
        one, a key of this object's own, so its tokens are good for it alone)."""
        self.store = store
        self.master = master
        self.config = config
        self.signing_key = signing_key
        self.signing_cert = signing_cert
        self.guard = store.login_guard  # the rules that refuse logins (server.accounts.LoginGuard)
        self.sealer = KeySetSealer(master, IssuanceDomain(config.kms_uri, config.key_period, config.key_period_offset))
        self.idms = IdentityManagement(
            store,
            idms_key or ec.generate_private_key(ec.SECP256R1()),
            issuer=config.base_url.rstrip("/") + "/idms",
            audience=config.kms_uri,
            access_token_lifetime=config.access_token_lifetime,
            refresh_token_lifetime=config.refresh_token_lifetime,
        )

    @property
    def certificate(self) -> KmsCertificate:
        cfg = self.config
        return domain_certificate(
            cfg.kms_uri,
            cfg.key_period,
            cfg.key_period_offset,
            self.master.kpak,
            self.master.z_public,
            cfg.valid_from,
            cfg.valid_to,
        )

    def handle(
        self, *, method: str, path: str, authorization: str | None, body: bytes, peer: str, now: float
    ) -> HttpReply:
        try:
            return self._handle(method, path, authorization, body, peer, now)
        except Exception:  # a bug must not take the service down or leak details
            log.exception("KMS request failed: %s %s from %s", method, path, peer)
            return self._error(ERR_INTERNAL, "internal error", "", path, now, status=500)

    def _handle(
        self, method: str, path: str, authorization: str | None, body: bytes, peer: str, now: float
    ) -> HttpReply:
        if path == TOKEN_PATH:
            return self.idms.token_endpoint(method, body, peer, now)
        endpoint = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if endpoint not in ENDPOINTS:
            return self._error(ERR_NOT_FOUND, f"no such endpoint: {self._url(path)}", "", path, now, status=404)
        if method != "POST":
            reply = self._error(ERR_BAD_REQUEST, "use POST", "", path, now, status=405)
            reply.headers["Allow"] = "POST"
            return reply
        if len(body) > MAX_BODY:
            return self._error(ERR_BAD_REQUEST, "request body too large", "", path, now, status=413)
        login = self._login(authorization, path, peer, now)
        if isinstance(login, HttpReply):
            return login
        username, own_uri, token = login

        identity = own_uri or ""
        if body.strip():
            try:
                request = parse_request(body)
            except KmsFormatError as exc:
                return self._error(ERR_BAD_REQUEST, f"bad KmsRequest: {exc}", identity, path, now, status=400)
            if request.kms_uri != self.config.kms_uri:
                return self._error(
                    ERR_BAD_REQUEST, f"this is KMS {self.config.kms_uri}", request.user_uri, path, now, status=400
                )
            identity = request.user_uri
        if not identity:
            return self._error(ERR_BAD_REQUEST, "no identity requested", "", path, now, status=400)
        if token is not None and not token.covers(identity):
            log.warning("KMS: %r asked for keys of %r with a token not for it", username, identity)
            text = f"the access token is not for {identity}"
            reply = self._error(ERR_FORBIDDEN, text, identity, path, now, status=403)
            reply.headers["WWW-Authenticate"] = bearer_challenge("insufficient_scope", text)
            return reply
        # The account's own identity too needs its grant ('self'): an operator may revoke it.
        if not self.store.may_key(username, identity):
            self.store.audit("refused", username=username, detail=f"{endpoint} for {identity}", now=now)
            log.warning("KMS: %r asked for keys of %r without a grant", username, identity)
            return self._error(ERR_FORBIDDEN, f"not authorised for {identity}", identity, path, now, status=403)

        if endpoint == "keyprov":
            key_sets = self._key_sets(identity, now)
            message: KmsInit | KmsKeyProv | KmsCertCache = KmsKeyProv(tuple(key_sets))
            # the issuance records and the audit event in one transaction: a worker killed here leaves none
            issued = [(k.key_period_no, k.user_id) for k in key_sets]
            self.store.record_keyprov(username, identity, issued, now=now, during=self._stall_hook)
            log.debug("KMS: issued keys of %r for periods %s to %r", identity, [p for p, _ in issued], username)
        else:
            if endpoint == "init":
                message = KmsInit(self.certificate)
            else:
                message = KmsCertCache(tuple(parse_certificate(c) for c in self.store.trusted_certificates()))
            self.store.audit(endpoint, username=username, detail=identity, now=now)
        return self._signed(KmsResponse(identity, self.config.kms_uri, _utc(now), self._url(path), message=message))

    def _login(
        self, authorization: str | None, path: str, peer: str, now: float
    ) -> tuple[str, str | None, AccessToken | None] | HttpReply:
        """(account name, its own URI, the access token if one was used), or the reply refusing the request."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            try:
                token = self.idms.check(credentials.strip(), now)
            except TokenRefused as exc:
                return self._unauthorised(str(exc), path, now, error="invalid_token")
            # the account as it is now: a disabled or removed account's token stops at once
            account = self.store.account(token.username)
            if account is None or account.disabled:
                state = "removed" if account is None else "disabled"
                text = f"the account of this access token is {state}"
                return self._unauthorised(text, path, now, error="invalid_token")
            return token.username, account.uri, token
        if scheme.lower() == "basic" and not self.config.allow_basic_login:
            text = f"HTTP Basic login is off: get an access token at {self.config.token_url} and send it as Bearer"
            return self._unauthorised(text, path, now, error="invalid_request")
        basic = basic_credentials(authorization)
        if basic is None:
            return self._unauthorised("login required", path, now)
        username, password = basic
        try:
            account = self.store.authenticate(username, password, now=now, source=peer)
        except LockedOut as exc:
            # what happened and when to try again; logged at most every 10 s per account (per address, budget)
            self.guard.log_refusal(log, "KMS", username, peer, exc, now)
            reply = self._error(ERR_LOCKED, str(exc), "", path, now, status=429)
            reply.headers["Retry-After"] = retry_after_header(exc.retry_after)
            return reply
        except LoginFailed:
            self.guard.log_failure(log, "KMS", username, peer, now)
            return self._unauthorised("wrong username or password", path, now)
        if account.disabled:
            return self._unauthorised("account disabled", path, now)
        return username, account.uri, None

    def _key_sets(self, identity: str, now: float) -> list[KmsKeySet]:
        """The key sets of the current and the next period: precomputed (``ptt-kms issue``) when the store holds
        them and they open for this identity, period and UID, derived otherwise (the same keys either way).
        Opening one costs ~0.1 ms, deriving ~1.1 ms (bench/kmsbulk.py)."""
        cfg = self.config
        current = period_number(now, cfg.key_period, cfg.key_period_offset)
        periods = (current, current + 1)
        stored = self.store.precomputed(identity, periods)
        key_sets = []
        for period in periods:
            user_id = self.sealer.domain.user_id(identity, period)
            keys = None
            if period in stored:
                keys = self.sealer.open(identity, period, *stored[period])
                if keys is None:
                    log.warning("KMS: the precomputed keys of %r for period %d do not open; deriving", identity, period)
            if keys is None:
                keys = derive_user_keys(user_id, self.master)
            start, end = period_bounds(period, cfg.key_period, cfg.key_period_offset)
            key_sets.append(
                KmsKeySet(
                    kms_uri=cfg.kms_uri,
                    user_uri=identity,
                    user_id=user_id,
                    key_period_no=period,
                    rsk=keys.rsk,
                    ssk=keys.ssk,
                    pvt=keys.pvt,
                    valid_from=_utc(start),
                    valid_to=_utc(end),
                    revoked=False,
                )
            )
        return key_sets

    def _stall_hook(self) -> None:
        """The test hook of ``STALL_ENV``: the first keyprov of the whole KMS (the file does not exist yet) writes
        this process's id there and stalls inside its transaction, so a test can kill the worker mid-request."""
        marker = os.environ.get(STALL_ENV)
        if not marker:
            return
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        log.warning("KMS: %s is set: stalling this keyprov inside its transaction", STALL_ENV)
        time.sleep(STALL_SECONDS)

    def _url(self, path: str) -> str:
        # percent-encoded: a hostile path must not stop us signing the (error) reply that echoes it
        return self.config.base_url.rstrip("/") + urllib.parse.quote(path, safe="/-._~")

    def _signed(self, response: KmsResponse, status: int = 200) -> HttpReply:
        body = sign_response(response, self.signing_key, self.signing_cert)
        return HttpReply(status, body, {"Content-Type": "application/xml; charset=utf-8", "Cache-Control": "no-store"})

    def _error(self, code: int, text: str, user_uri: str, path: str, now: float, *, status: int) -> HttpReply:
        # UserUri is mandatory in a KmsResponse; before login we do not know who is asking
        response = KmsResponse(
            user_uri or ANONYMOUS, self.config.kms_uri, _utc(now), self._url(path), error=KmsError(code, text)
        )
        try:
            return self._signed(response, status)
        except Exception:
            log.exception("KMS: cannot sign an error response")
            return HttpReply(500, b"internal error\n", {"Content-Type": "text/plain"})

    def _unauthorised(self, text: str, path: str, now: float, *, error: str | None = None) -> HttpReply:
        """401 with a Bearer challenge (RFC 6750 §3: an error code only when a token was sent and refused), and a
        Basic one too when Basic login is allowed."""
        reply = self._error(ERR_UNAUTHORISED, text, "", path, now, status=401)
        challenges = [bearer_challenge(error, text if error else None)]
        if self.config.allow_basic_login:
            challenges.append(f'Basic realm="{REALM}", charset="UTF-8"')
        reply.headers["WWW-Authenticate"] = ", ".join(challenges)
        return reply


def _utc(seconds: float) -> datetime:
    # sub-second precision: two responses within one second must still order (the client refuses replays)
    return datetime.fromtimestamp(seconds, UTC)
