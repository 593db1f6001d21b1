"""Provisioning from the KMS: HTTPS to a pinned certificate, signed XML checked, keys validated and stored,
renewed automatically before the key period ends.

``accept_init`` / ``accept_key_prov`` / ``accept_cert_cache`` are the trust decisions (pure: bytes and ``now`` in);
``client.kmshttp.KmsHttpClient`` does HTTPS, trusting only the TLS certificate from the enrolment, with an access
token from the IdMS; ``ProvisioningAgent`` drives them for one or more identities, refreshes the External KMS
certificates from the KMS's certificate cache, keeps the refresh token sealed in the keystore, and keeps the
keystore topped up with a ``callLater`` timer: once per key period, at a time of this keystore's own within it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer

from client.keystore import Keystore, KeystoreError
from client.kmshttp import REQUEST_TIMEOUT as REQUEST_TIMEOUT  # re-exported, as are the two below
from client.kmshttp import HttpResult as HttpResult
from client.kmshttp import KmsHttpClient as KmsHttpClient
from client.kmshttp import ProvisioningError
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import (
    DomainMismatch,
    KmsCertificate,
    KmsErrorResponse,
    KmsFormatError,
    KmsKeySet,
    KmsRequest,
)
from ptt.kmsformat.signing import verify_signed_response
from ptt.kmsformat.trust import user_domains
from ptt.kmsformat.validation import check_cert_cache, check_init, check_key_prov
from ptt.kmsformat.xml import request_to_xml
from ptt.ts33180 import period_bounds

log = logging.getLogger("ptt.client.provisioning")

INIT = "/keymanagement/identity/v1/init"
KEYPROV = "/keymanagement/identity/v1/keyprov"
CERTCACHE = "/keymanagement/identity/v1/certcache"
RETRY_MIN = 30.0
RETRY_MAX = 3600.0
RENEWAL_WINDOW = (0.1, 0.9)
"""Where in each key period a keystore renews (its own point in this part, ``Keystore.renewal_slot``): a domain's
clients spread over the period instead of all calling at the rollover, and a failed renewal has the rest of the
period to retry before the next period's keys are needed."""


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def accept_init(data: bytes, enrolment: Enrolment, identity: str, now: float) -> KmsCertificate:
    """Verify an init response against the pinned signing certificate and the enrolled domain."""
    response = verify_signed_response(data, enrolment.signing_cert)
    certificate = check_init(response, expected_kms_uri=enrolment.kms_uri, expected_user_uri=identity, now=_utc(now))
    pinned = enrolment.certificate
    if (
        certificate.pub_auth_key != pinned.pub_auth_key
        or certificate.pub_enc_key != pinned.pub_enc_key
        or certificate.user_key_period != pinned.user_key_period
        or certificate.user_key_offset != pinned.user_key_offset
    ):
        raise DomainMismatch("the KMS certificate differs from the one enrolled (KPAK, Z or key period changed)")
    return certificate


def accept_key_prov(
    data: bytes, enrolment: Enrolment, identity: str, now: float, not_before: datetime | None
) -> tuple[list[KmsKeySet], datetime]:
    """Verify a keyprov response; returns the validated key sets and the response's Time."""
    response = verify_signed_response(data, enrolment.signing_cert)
    key_sets = check_key_prov(
        response, certificate=enrolment.certificate, expected_user_uri=identity, now=_utc(now), not_before=not_before
    )
    return key_sets, response.time


def accept_cert_cache(
    data: bytes, enrolment: Enrolment, identity: str, now: float, not_before: datetime | None
) -> tuple[list[KmsCertificate], datetime]:
    """Verify a certcache response; returns the usable External KMS certificates and the response's Time."""
    response = verify_signed_response(data, enrolment.signing_cert)
    certificates = check_cert_cache(
        response, expected_kms_uri=enrolment.kms_uri, expected_user_uri=identity, now=_utc(now), not_before=not_before
    )
    return certificates, response.time


def _explain(result: HttpResult, enrolment: Enrolment, identity: str) -> str:
    """A clear message for a non-200 answer, using the signed KmsError when it verifies."""
    detail = ""
    try:
        response = verify_signed_response(result.body, enrolment.signing_cert)
        if response.error is not None:
            detail = response.error.message
    except Exception:  # the reason is still worth giving even if the error body is unusable
        detail = result.body[:200].decode("utf-8", "replace")
    reasons = {401: "login failed", 403: f"not allowed to get keys for {identity}", 429: "refused for now"}
    return f"KMS answered {result.status} ({reasons.get(result.status, 'error')}): {detail}"


class ProvisioningAgent:
    """Provisions ``identities`` (default: the account's own URI, given as the first) and renews them."""

    def __init__(
        self,
        reactor: Any,
        keystore: Keystore,
        username: str,
        password: str,
        identities: Sequence[str],
        *,
        http: KmsHttpClient | None = None,
        offload: Callable[..., Any] | None = None,
    ) -> None:
        """``offload(function, *args)`` runs the checks of a response (XML signature, RFC key validations) and
        the keystore's sealing (scrypt) and returns a Deferred: a server passes a thread pool so that its reactor
        never waits on them; by default they run inline."""
        if keystore.enrolment is None:
            raise ProvisioningError("the keystore has no enrolment: enrol with a KMS first")
        self.reactor = reactor
        self.clock: Any = reactor  # IReactorTime (zope interfaces do not type-check)
        self.keystore = keystore
        self.identities = list(identities)
        self.username = username
        self.http = http or KmsHttpClient(
            reactor,
            keystore.enrolment,
            username,
            password,
            refresh_token=keystore.refresh_tokens.get(username),
            keep_refresh=self._keep_refresh_token,
        )
        self.offload: Callable[..., Any] = offload or defer.maybeDeferred
        self._save_lock = defer.DeferredLock()  # one sealing at a time: a save must see a settled keystore
        self._timer: Any = None  # IDelayedCall
        self._running = False  # between start() and stop(): a renewal finishing after stop() must not re-arm
        self._retry = RETRY_MIN
        if keystore.renewal_slot is None:  # saved with the keys: a restart keeps this keystore's renewal time
            keystore.renewal_slot = random.random()
        self._spread = keystore.renewal_slot
        self.last_error: str | None = None

    @property
    def enrolment(self) -> Enrolment:
        assert self.keystore.enrolment is not None
        return self.keystore.enrolment

    @defer.inlineCallbacks
    def _init(self, identity: str) -> Any:
        """KMS init: the domain certificate, which must be the enrolled one (``DomainMismatch`` says so if not)."""
        enrolment = self.enrolment
        body = request_to_xml(
            KmsRequest(identity, enrolment.kms_uri, _utc(self.clock.seconds()), enrolment.base_url + INIT)
        )
        result = yield self.http.post(INIT, body)
        if result.status != 200:
            raise ProvisioningError(_explain(result, enrolment, identity))
        yield self.offload(accept_init, result.body, enrolment, identity, self.clock.seconds())

    @defer.inlineCallbacks
    def provision_identity(self, identity: str) -> Any:
        enrolment = self.enrolment
        previous = self.keystore.last_response_time(identity)
        # A renewal (keys held from an earlier response) skips init: keyprov's key sets are validated against the
        # enrolled certificate anyway, and only if they fail is init asked, to say clearly whether the domain
        # changed. One request fewer per user and period, which counts at national scale (bench.kms).
        if previous is None:
            yield self._init(identity)
        body = request_to_xml(
            KmsRequest(identity, enrolment.kms_uri, _utc(self.clock.seconds()), enrolment.base_url + KEYPROV)
        )
        result = yield self.http.post(KEYPROV, body)
        if result.status != 200:
            raise ProvisioningError(_explain(result, enrolment, identity))
        try:
            key_sets, when = yield self.offload(
                accept_key_prov, result.body, enrolment, identity, self.clock.seconds(), previous
            )
        except KmsFormatError:
            if previous is not None:
                yield self._init(identity)  # raises DomainMismatch if the KMS's certificate is another now
            raise
        yield self._save_lock.run(self._store, key_sets, when, identity)
        log.info("provisioned %s for key periods %s", identity, [k.key_period_no for k in key_sets])
        return key_sets

    def _keep_refresh_token(self, token: str | None) -> Any:
        """Seal the IdMS's newest refresh token (None: forget it) in the keystore, at once if it is already a file
        (else with the first keys); a failure is only logged (the password logs in again)."""

        def store() -> Any:
            if token is None:
                self.keystore.refresh_tokens.pop(self.username, None)
            else:
                self.keystore.refresh_tokens[self.username] = token
            return self.offload(self.keystore.save) if self.keystore.path.exists() else None

        d = self._save_lock.run(store)
        d.addErrback(lambda failure: log.warning("cannot keep the refresh token: %s", failure.getErrorMessage()))
        return d

    @defer.inlineCallbacks
    def _store(self, key_sets: Any, when: datetime, identity: str) -> Any:
        self.keystore.add(key_sets, when, identity)
        self.keystore.prune(self.clock.seconds())
        yield self.offload(self.keystore.save)

    @defer.inlineCallbacks
    def _store_external(self, certificates: Any, when: datetime) -> Any:
        previous = self.keystore.external, self.keystore.external_time
        self.keystore.set_external(certificates, when)
        try:
            yield self.offload(self.keystore.save)
        except KeystoreError:  # memory stays what the file holds
            self.keystore.external, self.keystore.external_time = previous
            raise

    @defer.inlineCallbacks
    def provision(self) -> Any:
        provisioned = {}
        for index, identity in enumerate(self.identities):
            provisioned[identity] = yield self.provision_identity(identity)
            if index == 0:
                # Once per run: the cache is the KMS's, the same whatever identity asks, so one request will do;
                # asked as the first identity (the account's own, normally) right after its keys, so a later
                # identity's failure does not keep a partner's untrusting from reaching us.
                yield self.refresh_cert_cache(identity)
        return provisioned

    @defer.inlineCallbacks
    def refresh_cert_cache(self, identity: str) -> Any:
        """Replace the keystore's External KMS certificates with the KMS's certificate cache; True if done.

        Never fails: the keys matter more than the cache, so any failure is logged and the previous cache kept
        (off-network partners stay usable until the KMS answers again).
        """
        enrolment = self.enrolment
        try:
            body = request_to_xml(
                KmsRequest(identity, enrolment.kms_uri, _utc(self.clock.seconds()), enrolment.base_url + CERTCACHE)
            )
            result = yield self.http.post(CERTCACHE, body)
            if result.status != 200:
                raise ProvisioningError(_explain(result, enrolment, identity))
            certificates, when = yield self.offload(
                accept_cert_cache,
                result.body,
                enrolment,
                identity,
                self.clock.seconds(),
                self.keystore.external_response_time(),
            )
        except (ProvisioningError, KmsFormatError) as exc:
            self._cache_kept(str(exc))
            return False
        except Exception as exc:  # e.g. a body cut off mid-read: a network failure like the others
            self._cache_kept(f"{type(exc).__name__}: {exc}")
            return False
        try:
            yield self._save_lock.run(self._store_external, certificates, when)
        except KeystoreError as exc:
            self._cache_kept(str(exc))
            return False
        for certificate in certificates:
            log.info(
                "trusting external KMS %s for users in %s", certificate.kms_uri, ", ".join(user_domains(certificate))
            )
        if not certificates:
            log.info("no external KMS trusted (the certificate cache of %s is empty)", enrolment.kms_uri)
        return True

    def _cache_kept(self, reason: str) -> None:
        kept = ", ".join(sorted(self.keystore.external)) or "none"
        log.warning("certificate cache not refreshed, keeping the previous one (external KMSs: %s): %s", kept, reason)

    # --- automatic renewal -----------------------------------------------------------------------------------

    def needs_renewal(self, now: float) -> bool:
        domain = self.enrolment.certificate.domain()
        current = domain.period_number(now)
        return any(not {current, current + 1} <= set(self.keystore.periods(identity)) for identity in self.identities)

    def next_renewal(self, now: float) -> float:
        """Seconds until the next renewal. The KMS issues a period's keys and the next one's, so period N+1's
        keys can be had from the start of period N: renew once in each period, at this keystore's own point in
        ``RENEWAL_WINDOW`` (``Keystore.renewal_slot``), so that a domain's clients spread over the period instead
        of all calling at the rollover; at once if the current period's keys are missing."""
        domain = self.enrolment.certificate.domain()
        current = domain.period_number(now)
        held = [set(self.keystore.periods(identity)) for identity in self.identities]
        if any(current not in periods for periods in held):
            return 0.0
        period = current if any(current + 1 not in periods for periods in held) else current + 1
        start, _ = _bounds(period, domain.key_period, domain.key_period_offset)
        low, high = RENEWAL_WINDOW
        return max(0.0, start + domain.key_period * (low + (high - low) * self._spread) - now)

    def start(self) -> None:
        self._running = True
        self._schedule(self.next_renewal(self.clock.seconds()))

    def stop(self) -> None:
        self._running = False
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        self._cancel()
        if self._running:
            self._timer = self.clock.callLater(delay, self._renew)

    def _renew(self) -> None:
        self._timer = None
        d = self.provision()

        def done(_: object) -> None:
            self.last_error = None
            self._retry = RETRY_MIN
            self._schedule(max(self.next_renewal(self.clock.seconds()), 1.0))

        def failed(failure: Any) -> None:
            self.last_error = failure.getErrorMessage()
            log.warning("key renewal failed (retrying in %.0f s): %s", self._retry, self.last_error)
            self._schedule(self._retry)
            self._retry = min(self._retry * 2, RETRY_MAX)

        d.addCallbacks(done, failed)


def _bounds(period: int, key_period: int, offset: int) -> tuple[float, float]:
    start, end = period_bounds(period, key_period, offset)
    return float(start), float(end)


__all__ = [
    "HttpResult",
    "KmsErrorResponse",
    "KmsHttpClient",
    "ProvisioningAgent",
    "ProvisioningError",
    "accept_cert_cache",
    "accept_init",
    "accept_key_prov",
]
