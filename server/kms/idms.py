"""The identity management server (IdMS) role of the KMS process (TS 33.180 §5.2, OAuth 2.0, RFC 6749/6750).

``IdentityManagement.token_endpoint`` answers ``POST /idms/token`` (form-encoded, JSON out): the password grant
logs an account in once (scrypt, with the login rules of ``server.accounts``), the refresh_token grant rotates a
refresh token (``server.kms.token_store``); both hand out a short-lived access token, a JWT signed with the IdMS
key (ES256, ``server.kms.jws``) whose scope is the KMS scope and the identities the account may fetch.
``IdentityManagement.check`` is what the KMS does with ``Authorization: Bearer`` on each request: no password work,
a signature check and the claims (issuer, audience, expiry with a small leeway). The KMS then checks the account
and its grants in the store (``server.kms.service``), so a disabled or removed account's token stops at once.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ptt.kmsformat.enrolment import TOKEN_PATH
from server.accounts import LockedOut, LoginFailed, retry_after_header
from server.kms import jws
from server.kms.grant_store import namespace_matches
from server.kms.store import KmsStore, RefreshRefused
from server.web import HttpReply

log = logging.getLogger("ptt.kms")

__all__ = [
    "CLOCK_LEEWAY",
    "DEFAULT_ACCESS_TOKEN_LIFETIME",
    "DEFAULT_REFRESH_TOKEN_LIFETIME",
    "KMS_SCOPE",
    "TOKEN_PATH",
    "AccessToken",
    "IdentityManagement",
    "TokenRefused",
    "bearer_challenge",
]

KMS_SCOPE = "3gpp:mcptt:key_management_server"  # the scope of an access token meant for the KMS
DEFAULT_ACCESS_TOKEN_LIFETIME = 600
DEFAULT_REFRESH_TOKEN_LIFETIME = 90 * 86400
MAX_ACCESS_TOKEN_LIFETIME = 86400  # a token claiming to live longer is none we issued
CLOCK_LEEWAY = 30.0  # seconds of clock difference allowed between the IdMS and the KMS (several processes)
REALM = "ptt-kms"
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token: NQCHAR
_MAX_FORM = 8192


class TokenRefused(Exception):
    """The access token is not usable; ``expired`` when that is the only reason (the client should refresh)."""

    def __init__(self, description: str, *, expired: bool = False) -> None:
        super().__init__(description)
        self.expired = expired


@dataclass(frozen=True, repr=False)
class AccessToken:
    """A verified access token: whose, which identities, until when."""

    username: str
    identities: tuple[str, ...]
    expires: float
    token_id: str

    def covers(self, identity: str) -> bool:
        """Whether the token's scope names ``identity`` (exactly, or by a group namespace ``scheme:*@host``)."""
        return any(i == identity or namespace_matches(i, identity) for i in self.identities)

    def __repr__(self) -> str:
        return f"AccessToken(username={self.username!r}, identities={len(self.identities)}, expires={self.expires})"


def bearer_challenge(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3); no error code when no token was given."""
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    if description:
        safe = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')  # RFC 6750 §3: no " or \
        challenge += f', error_description="{safe}"'
    return challenge


def _json_reply(status: int, document: dict[str, Any]) -> HttpReply:
    headers = {"Content-Type": "application/json;charset=UTF-8", "Cache-Control": "no-store", "Pragma": "no-cache"}
    return HttpReply(status, json.dumps(document).encode("utf-8"), headers)


def _oauth_error(error: str, description: str, status: int = 400) -> HttpReply:
    return _json_reply(status, {"error": error, "error_description": description})


def _form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; ``ValueError`` if malformed or a parameter repeats."""
    if len(body) > _MAX_FORM:
        raise ValueError("request too large")
    pairs = urllib.parse.parse_qsl(
        body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=16, errors="strict"
    )
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise ValueError("a parameter is repeated")  # RFC 6749 §3.2
    return fields


class IdentityManagement:
    """The token endpoint and the access token check (time passed in)."""

    def __init__(
        self,
        store: KmsStore,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        audience: str,
        access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
        refresh_token_lifetime: int = DEFAULT_REFRESH_TOKEN_LIFETIME,
    ) -> None:
        self.store = store
        self.key = key
        self.keys = {jws.key_id(key.public_key()): key.public_key()}
        self.issuer = issuer
        self.audience = audience
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime

    # --- the token endpoint -----------------------------------------------------------------------------------

    def token_endpoint(self, method: str, body: bytes, peer: str, now: float) -> HttpReply:
        if method != "POST":
            reply = _oauth_error("invalid_request", "use POST", 405)
            reply.headers["Allow"] = "POST"
            return reply
        try:
            fields = _form(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _oauth_error("invalid_request", f"bad form body: {exc}")
        grant_type = fields.get("grant_type")
        if grant_type == "password":
            return self._password_grant(fields, peer, now)
        if grant_type == "refresh_token":
            return self._refresh_grant(fields, now)
        if not grant_type:
            return _oauth_error("invalid_request", "grant_type is missing")
        return _oauth_error("unsupported_grant_type", "use grant_type password or refresh_token")

    def _password_grant(self, fields: dict[str, str], peer: str, now: float) -> HttpReply:
        username, password = fields.get("username", ""), fields.get("password")
        if not username or password is None:
            return _oauth_error("invalid_request", "username and password are required")
        try:
            self.store.authenticate(username, password, now=now, source=peer)
        except LockedOut as exc:
            self.store.login_guard.log_refusal(log, "IdMS", username, peer, exc, now)
            reply = _oauth_error("invalid_grant", str(exc), 429)
            reply.headers["Retry-After"] = retry_after_header(exc.retry_after)
            return reply
        except LoginFailed as exc:
            self.store.login_guard.log_failure(log, "IdMS", username, peer, now)
            return _oauth_error("invalid_grant", str(exc))
        try:
            scope = self._requested_scope(username, fields.get("scope", ""))
        except ValueError as exc:
            return _oauth_error("invalid_scope", str(exc))
        refresh = self.store.issue_refresh_token(username, scope, now=now, lifetime=self.refresh_token_lifetime)
        return self._issue(username, scope, refresh, "password", now)

    def _refresh_grant(self, fields: dict[str, str], now: float) -> HttpReply:
        token = fields.get("refresh_token", "")
        if not token:
            return _oauth_error("invalid_request", "refresh_token is missing")
        try:
            refresh, grant = self.store.rotate_refresh_token(token, now=now, lifetime=self.refresh_token_lifetime)
        except RefreshRefused as exc:
            return _oauth_error("invalid_grant", str(exc))
        if "scope" in fields and fields["scope"] != grant.scope:
            return _oauth_error("invalid_scope", "the scope cannot change on refresh: log in again")
        return self._issue(grant.username, grant.scope, refresh, "refresh_token", now)

    def _requested_scope(self, username: str, requested: str) -> str:
        """The identities asked for, each checked against the account's grants now ('' asks for all)."""
        grants = self.store.grants(username)
        wanted = [s for s in requested.split(" ") if s and s not in (KMS_SCOPE, "openid")]
        for identity in wanted:
            if not _SCOPE_TOKEN.fullmatch(identity):
                raise ValueError("a scope is not a valid scope-token")
            if identity not in grants and not any(namespace_matches(g, identity) for g in grants):
                raise ValueError(f"not authorised for {identity}")
        return " ".join(dict.fromkeys(wanted))

    def _issue(self, username: str, scope: str, refresh: str, grant_type: str, now: float) -> HttpReply:
        grants = self.store.grants(username)
        if scope:  # still granted now (a refresh after a revocation narrows it)
            identities = [i for i in scope.split(" ") if i in grants or any(namespace_matches(g, i) for g in grants)]
        else:
            identities = [g for g in grants if _SCOPE_TOKEN.fullmatch(g)]
        issued = int(now)
        token_scope = " ".join([KMS_SCOPE, *identities])
        claims = {
            "iss": self.issuer,
            "sub": username,
            "aud": self.audience,
            "iat": issued,
            "exp": issued + self.access_token_lifetime,
            "jti": secrets.token_urlsafe(16),
            "scope": token_scope,
        }
        access = jws.sign(claims, self.key)
        detail = f"{grant_type} grant, {len(identities)} identities"
        self.store.audit("token", username=username, detail=detail, now=now)
        return _json_reply(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.access_token_lifetime,
                "refresh_token": refresh,
                "refresh_token_expires_in": self.refresh_token_lifetime,
                "scope": token_scope,
            },
        )

    # --- the check on each KMS request ------------------------------------------------------------------------

    def check(self, token: str, now: float) -> AccessToken:
        """The access token's contents if it is ours, meant for this KMS and not expired; ``TokenRefused``."""
        try:
            claims = jws.verify(token, self.keys)
        except jws.TokenRejected as exc:
            raise TokenRefused(f"bad access token: {exc}") from None
        sub, scope, jti = claims.get("sub"), claims.get("scope"), claims.get("jti")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        audience = claims.get("aud")
        if claims.get("iss") != self.issuer:
            raise TokenRefused("the access token is from another issuer")
        if audience != self.audience and not (isinstance(audience, list) and self.audience in audience):
            raise TokenRefused("the access token is meant for another service")
        if not all(isinstance(v, str) and v for v in (sub, scope, jti)):
            raise TokenRefused("the access token lacks sub, scope or jti")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, iat, nbf)):
            raise TokenRefused("the access token's times are not whole seconds")
        assert isinstance(sub, str) and isinstance(scope, str) and isinstance(jti, str)
        assert isinstance(exp, int) and isinstance(iat, int) and isinstance(nbf, int)
        if exp - iat > MAX_ACCESS_TOKEN_LIFETIME:
            raise TokenRefused("the access token claims too long a life")
        if max(iat, nbf) > now + CLOCK_LEEWAY:
            raise TokenRefused("the access token is not valid yet")
        if now >= exp + CLOCK_LEEWAY:
            raise TokenRefused("the access token expired", expired=True)
        scopes = scope.split(" ")
        if KMS_SCOPE not in scopes:
            raise TokenRefused(f"the access token lacks the scope {KMS_SCOPE}")
        identities = tuple(s for s in scopes if s and s != KMS_SCOPE)
        return AccessToken(sub, identities, float(exp), jti)
