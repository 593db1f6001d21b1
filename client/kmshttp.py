"""HTTPS to the KMS and its IdMS for ``client.provisioning``: Twisted's Agent trusting only the TLS certificate from
the enrolment, an access token on every KMS request (``client.idms.TokenLogin``: refreshed before it expires, and
once more when the KMS says it is no good), answers bounded in size and time, failures as ``ProvisioningError``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.web.client import Agent, FileBodyProducer, ResponseNeverReceived, readBody
from twisted.web.http_headers import Headers

from client.idms import FormResult, IdmsError, TokenLogin, form_body, token_refused
from client.tls import PinnedCertificatePolicy
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.xml import MAX_XML_SIZE

__all__ = ["REQUEST_TIMEOUT", "HttpResult", "KmsHttpClient", "ProvisioningError"]

log = logging.getLogger("ptt.client.provisioning")

REQUEST_TIMEOUT = 30


class ProvisioningError(Exception):
    """Provisioning failed; the message says why in words a user can act on."""


@dataclass
class HttpResult:
    status: int
    body: bytes
    www_authenticate: str = ""


class KmsHttpClient:
    """POSTs to the KMS with an access token from its IdMS (``token_url``, default the enrolment's)."""

    def __init__(
        self,
        reactor: Any,
        enrolment: Enrolment,
        username: str,
        password: str,
        *,
        refresh_token: str | None = None,
        keep_refresh: Callable[[str | None], Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.enrolment = enrolment
        self.agent = Agent(reactor, contextFactory=PinnedCertificatePolicy(enrolment.tls_trust_pem), connectTimeout=15)
        self.login = TokenLogin(
            reactor,
            self.post_form,
            enrolment.token_url,
            username,
            password,
            refresh_token=refresh_token,
            keep_refresh=keep_refresh,
        )

    @defer.inlineCallbacks
    def post(self, path: str, body: bytes) -> Any:
        """POST a KMS request; a 401 saying the access token is no good is retried once with a fresh token."""
        for attempt in (1, 2):
            try:
                authorization = yield self.login.authorization()
            except IdmsError as exc:
                raise ProvisioningError(f"KMS login: {exc}") from None
            headers = {b"Authorization": [authorization.encode("ascii")], b"Content-Type": [b"application/xml"]}
            url = self.enrolment.base_url.rstrip("/") + path
            result = yield self._request(url, headers, body)
            if result.status == 401 and token_refused(result.www_authenticate) and attempt == 1:
                log.info("the KMS refused the access token (%s): getting a new one", result.www_authenticate[:120])
                self.login.invalidate()
                continue
            return result
        raise AssertionError("unreachable")

    @defer.inlineCallbacks
    def post_form(self, url: str, fields: dict[str, str]) -> Any:
        """POST an OAuth 2.0 form (to the IdMS) over the same pinned TLS."""
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"], b"Accept": [b"application/json"]}
        result = yield self._request(url, headers, form_body(fields))
        return FormResult(result.status, result.body)

    @defer.inlineCallbacks
    def _request(self, url: str, headers: dict[bytes, list[bytes]], body: bytes) -> Any:
        producer = FileBodyProducer(BytesIO(body))
        request = self.agent.request(b"POST", url.encode("ascii"), Headers(headers), producer)  # type: ignore[arg-type]
        request.addTimeout(REQUEST_TIMEOUT, self.reactor)
        try:
            response = yield request
        except defer.TimeoutError:
            raise ProvisioningError(
                f"KMS at {self.enrolment.base_url} did not answer within {REQUEST_TIMEOUT} s"
            ) from None
        except ConnectError as exc:
            raise ProvisioningError(f"cannot reach the KMS at {self.enrolment.base_url}: {exc}") from None
        except ResponseNeverReceived as exc:
            reasons = "; ".join(r.getErrorMessage() for r in exc.reasons)
            raise ProvisioningError(f"KMS at {self.enrolment.base_url} closed the connection ({reasons})") from None
        if isinstance(response.length, int) and response.length > MAX_XML_SIZE:
            response.deliverBody(_Discard())
            raise ProvisioningError(f"KMS response too large ({response.length} octets)")
        reading = readBody(response)
        reading.addTimeout(REQUEST_TIMEOUT, self.reactor)
        content = yield reading
        challenge = b", ".join(response.headers.getRawHeaders(b"www-authenticate", [])).decode("latin-1")
        return HttpResult(response.code, content, challenge)


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
