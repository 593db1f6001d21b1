"""The client's side of the IdMS (TS 33.180 §5.2; OAuth 2.0, RFC 6749): log in once, keep the tokens, refresh.

``TokenLogin.authorization()`` gives the ``Authorization`` header for the next KMS request: the access token while
it has more than ``REFRESH_MARGIN`` seconds left; else a new one by the refresh token (rotated: the new refresh
token is handed to ``keep_refresh`` to be sealed in the keystore; never logged); else by the password grant (the
password, or a service account's token). ``invalidate()`` after the KMS refused the access token (401
invalid_token) makes the next call get a fresh one. A KMS from before the IdMS (404 at the token endpoint) gets
HTTP Basic, as before.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

log = logging.getLogger("ptt.client.idms")

__all__ = ["REFRESH_MARGIN", "FormResult", "IdmsError", "TokenLogin", "token_refused"]

REFRESH_MARGIN = 60.0  # seconds before its expiry an access token is replaced
MAX_TOKEN_RESPONSE = 64 * 1024


class IdmsError(Exception):
    """The IdMS refused the login or answered nonsense; the message says why in words a user can act on."""


@dataclass(frozen=True)
class FormResult:
    status: int
    body: bytes


def token_refused(www_authenticate: str) -> bool:
    """Whether a 401's ``WWW-Authenticate`` says the access token is no good (RFC 6750 invalid_token)."""
    return 'error="invalid_token"' in www_authenticate


def _document(result: FormResult) -> dict[str, Any]:
    try:
        document = json.loads(result.body[:MAX_TOKEN_RESPONSE].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    return document if isinstance(document, dict) else {}


class TokenLogin:
    """One account's tokens at one IdMS. ``post_form(url, fields)`` POSTs a form and returns a Deferred
    ``FormResult``; ``clock`` has ``seconds()``."""

    def __init__(
        self,
        clock: Any,
        post_form: Callable[[str, dict[str, str]], Any],
        token_url: str,
        username: str,
        password: str,
        *,
        refresh_token: str | None = None,
        keep_refresh: Callable[[str | None], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.post_form = post_form
        self.token_url = token_url
        self.username = username
        self._password = password
        self._refresh = refresh_token
        self._keep_refresh = keep_refresh or (lambda token: None)
        self._access: str | None = None
        self._expires = 0.0
        self._basic = False  # the KMS has no IdMS (before issue 14): HTTP Basic as then
        self._lock = defer.DeferredLock()  # one login at a time: concurrent requests share its token

    def __repr__(self) -> str:
        return f"TokenLogin({self.username!r} at {self.token_url!r})"

    def invalidate(self) -> None:
        """The KMS refused the access token: get another before the next request."""
        self._access = None

    def authorization(self) -> Any:
        """A Deferred ``Authorization`` header value (``Bearer …``, or ``Basic …`` for a KMS without an IdMS)."""
        return self._lock.run(self._authorization)

    @defer.inlineCallbacks
    def _authorization(self) -> Any:
        if self._basic:
            credentials = base64.b64encode(f"{self.username}:{self._password}".encode()).decode("ascii")
            return f"Basic {credentials}"
        if self._access is not None and self.clock.seconds() < self._expires - REFRESH_MARGIN:
            return f"Bearer {self._access}"
        if self._refresh is not None:
            fields = {"grant_type": "refresh_token", "refresh_token": self._refresh}
            result = yield self.post_form(self.token_url, fields)
            if result.status == 200:
                yield self._accept(result)
                return f"Bearer {self._access}"
            reason = _document(result).get("error_description", f"HTTP {result.status}")
            log.info("refresh token of %s refused (%s): logging in again", self.username, reason)
            self._refresh = None
            yield self._keep_refresh(None)
        fields = {"grant_type": "password", "username": self.username, "password": self._password}
        result = yield self.post_form(self.token_url, fields)
        if result.status == 404:
            log.warning("the KMS has no IdMS at %s: logging in with HTTP Basic", self.token_url)
            self._basic = True
            return (yield self._authorization())
        if result.status != 200:
            document = _document(result)
            error, detail = document.get("error", "error"), document.get("error_description", "")
            what = "login refused for now" if result.status == 429 else "login failed"
            raise IdmsError(f"IdMS answered {result.status} ({what}, {error}): {detail}")
        yield self._accept(result)
        return f"Bearer {self._access}"

    def _accept(self, result: FormResult) -> Any:
        document = _document(result)
        access, kind, lifetime = document.get("access_token"), document.get("token_type"), document.get("expires_in")
        refresh = document.get("refresh_token")
        if not (isinstance(access, str) and access and isinstance(kind, str) and kind.lower() == "bearer"):
            raise IdmsError("the IdMS answered without a bearer access token")
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            raise IdmsError("the IdMS answered without a valid expires_in")
        self._access, self._expires = access, self.clock.seconds() + lifetime
        if isinstance(refresh, str) and refresh and refresh != self._refresh:
            self._refresh = refresh
            return defer.maybeDeferred(self._keep_refresh, refresh)
        return defer.succeed(None)


def form_body(fields: dict[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` octets of ``fields``."""
    return urllib.parse.urlencode(fields).encode("ascii")
