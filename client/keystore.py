"""The client's local keystore: the trusted KMS (enrolment) and the key sets it provisioned, sealed at rest.

One file, mode 0600, written atomically; its content is JSON sealed with a passphrase (``ptt.sealed``: scrypt +
AES-256-GCM). Everything the client needs offline is here: the domain certificate and, per identity, the keys of
the current and next key periods, the time of the last KMS response accepted (to refuse replays of older
responses), the External KMS certificates from the KMS's signed certificate cache (which other domains' users
this client may key and be keyed by, ``trust``), the IdMS's refresh token per account (a secret: sealed here, never
logged) and this keystore's point in each key period at which it renews (``renewal_slot``).

Beside it, per identity, the I_MESSAGE replay cache (``ReplayFile``: digests and times, no secrets, so not
sealed; 0600, atomic), saved a moment after it changes (``DebouncedSave``) and loaded at start, so that an
I_MESSAGE replayed to a restarted client is refused. The group server keeps its CSK replay cache the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsKeySet
from ptt.kmsformat.trust import KmsTrust
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate
from ptt.mikey.imessage import IdentityKeys, ReplayCache
from ptt.sealed import SealError, seal, unseal

log = logging.getLogger("ptt.client.keystore")

LABEL = "ptt-client-keystore"
KEEP_PAST_PERIODS = 1  # keep last period's keys: messages sent just before a rollover still decrypt
REPLAY_CAPACITY = 10_000
"""Entries a persisted replay cache keeps (a client receives a few GMKs a day; the file stays under ~1 MB)."""
REPLAY_SAVE_DELAY = 1.0
"""Seconds between a change of a persisted replay cache and its save (a burst of changes is one write)."""


class KeystoreError(Exception):
    """The keystore cannot be read (wrong passphrase, altered, malformed) or written."""


@dataclass(frozen=True, repr=False)
class StoredKeySet:
    uri: str
    period_no: int
    user_id: bytes
    ssk: bytes
    pvt: bytes
    rsk: bytes
    valid_from: float | None
    valid_to: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "uri": self.uri,
            "period_no": self.period_no,
            "user_id": self.user_id.hex(),
            "ssk": self.ssk.hex(),
            "pvt": self.pvt.hex(),
            "rsk": self.rsk.hex(),
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> StoredKeySet:
        return cls(
            uri=str(d["uri"]),
            period_no=int(d["period_no"]),  # type: ignore[call-overload]
            user_id=bytes.fromhex(str(d["user_id"])),
            ssk=bytes.fromhex(str(d["ssk"])),
            pvt=bytes.fromhex(str(d["pvt"])),
            rsk=bytes.fromhex(str(d["rsk"])),
            valid_from=None if d.get("valid_from") is None else float(d["valid_from"]),  # type: ignore[arg-type]
            valid_to=None if d.get("valid_to") is None else float(d["valid_to"]),  # type: ignore[arg-type]
        )

    @classmethod
    def from_key_set(cls, key_set: KmsKeySet) -> StoredKeySet:
        return cls(
            uri=key_set.user_uri,
            period_no=key_set.key_period_no,
            user_id=key_set.user_id,
            ssk=key_set.ssk,
            pvt=key_set.pvt,
            rsk=key_set.rsk,
            valid_from=key_set.valid_from.timestamp() if key_set.valid_from else None,
            valid_to=key_set.valid_to.timestamp() if key_set.valid_to else None,
        )

    def __repr__(self) -> str:
        return f"StoredKeySet(uri={self.uri!r}, period_no={self.period_no})"


class Keystore:
    def __repr__(self) -> str:  # never the refresh tokens
        return f"Keystore({str(self.path)!r})"

    def __init__(self, path: Path, passphrase: bytes) -> None:
        self.path = Path(path)
        self.passphrase = passphrase
        self.enrolment: Enrolment | None = None
        self.key_sets: dict[tuple[str, int], StoredKeySet] = {}
        self.last_response: dict[str, float] = {}  # identity URI -> Time of the last accepted keyprov
        self.external: dict[str, KmsCertificate] = {}  # KMS URI -> External certificate from the cert cache
        self.external_time: float | None = None  # Time of the last accepted cert cache (refuses older ones)
        self.refresh_tokens: dict[str, str] = {}  # KMS account -> the IdMS's latest refresh token
        self.renewal_slot: float | None = None  # in [0, 1): where in each key period keys are renewed

    @classmethod
    def open(cls, path: Path, passphrase: bytes) -> Keystore:
        """Load the keystore at ``path``; an absent file is an empty keystore."""
        store = cls(path, passphrase)
        if not store.path.exists():
            return store
        try:
            data = store.path.read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read the keystore {path}: {exc.strerror or exc}") from None
        try:
            document = json.loads(unseal(data, passphrase, label=LABEL))
            if document.get("enrolment"):
                store.enrolment = Enrolment.from_json(document["enrolment"].encode())
            for item in document.get("key_sets", []):
                key_set = StoredKeySet.from_json(item)
                store.key_sets[(key_set.uri, key_set.period_no)] = key_set
            store.last_response = {str(k): float(v) for k, v in document.get("last_response", {}).items()}
            # absent in keystores written before the cert cache was fetched: no External KMS trusted yet
            for xml in document.get("external", []):
                certificate = parse_certificate(str(xml).encode())
                store.external[certificate.kms_uri] = certificate
            if document.get("external_time") is not None:
                store.external_time = float(document["external_time"])
            # absent in keystores written before issue 14 (HTTP Basic login, renewal at the rollover)
            store.refresh_tokens = {str(k): str(v) for k, v in document.get("refresh_tokens", {}).items()}
            if document.get("renewal_slot") is not None:
                slot = float(document["renewal_slot"])
                if not 0.0 <= slot < 1.0:
                    raise ValueError("renewal_slot out of range")
                store.renewal_slot = slot
        except SealError as exc:
            raise KeystoreError(f"{path}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # KmsFormatError is a ValueError
            raise KeystoreError(f"{path}: malformed keystore: {exc}") from None
        return store

    def save(self) -> None:
        document = {
            "enrolment": self.enrolment.to_json().decode() if self.enrolment else None,
            "key_sets": [k.to_json() for k in sorted(self.key_sets.values(), key=lambda k: (k.uri, k.period_no))],
            "last_response": self.last_response,
            "external": [certificate_to_xml(c).decode() for _, c in sorted(self.external.items())],
            "external_time": self.external_time,
            "refresh_tokens": self.refresh_tokens,
            "renewal_slot": self.renewal_slot,
        }
        try:
            sealed = seal(json.dumps(document).encode(), self.passphrase, label=LABEL)
        except SealError as exc:  # an empty passphrase
            raise KeystoreError(f"cannot seal the keystore {self.path}: {exc}") from None
        try:
            write_private(self.path, sealed)
        except OSError as exc:
            raise KeystoreError(f"cannot write the keystore {self.path}: {exc.strerror or exc}") from None

    def replay_file(self, uri: str) -> ReplayFile:
        """Where ``uri``'s I_MESSAGE replay cache is kept: beside the keystore, one file per identity (several
        sessions may share a keystore)."""
        tag = hashlib.sha256(uri.encode()).hexdigest()[:16]
        return ReplayFile(self.path.with_name(f"{self.path.name}.replay-{tag}.json"))

    # --- contents --------------------------------------------------------------------------------------------

    def add(self, key_sets: list[KmsKeySet], response_time: datetime, identity: str) -> None:
        for key_set in key_sets:
            self.key_sets[(key_set.user_uri, key_set.key_period_no)] = StoredKeySet.from_key_set(key_set)
        self.last_response[identity] = response_time.timestamp()

    def set_external(self, certificates: list[KmsCertificate], response_time: datetime) -> None:
        """Replace the External KMS certificates with a newer cert cache (so an untrusted domain disappears)."""
        self.external = {c.kms_uri: c for c in certificates}
        self.external_time = response_time.timestamp()

    def external_response_time(self) -> datetime | None:
        return None if self.external_time is None else datetime.fromtimestamp(self.external_time, UTC)

    def trust(self) -> KmsTrust:
        """The own KMS and the External KMSs, each bound to the user domains it speaks for."""
        if self.enrolment is None:
            raise KeystoreError(f"{self.path}: not enrolled with a KMS")
        return KmsTrust.of(self.enrolment.certificate.domain(), self.external.values())

    def last_response_time(self, identity: str) -> datetime | None:
        seconds = self.last_response.get(identity)
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

    def identities(self) -> list[str]:
        return sorted({uri for uri, _ in self.key_sets})

    def periods(self, uri: str) -> list[int]:
        return sorted(period for u, period in self.key_sets if u == uri)

    def identity_keys(self, uri: str, period_no: int) -> IdentityKeys | None:
        stored = self.key_sets.get((uri, period_no))
        if stored is None or self.enrolment is None:
            return None
        return IdentityKeys(uri, self.enrolment.certificate.domain(), period_no, stored.ssk, stored.pvt, stored.rsk)

    def current_keys(self, uri: str, now: float) -> IdentityKeys | None:
        if self.enrolment is None:
            return None
        return self.identity_keys(uri, self.enrolment.certificate.domain().period_number(now))

    def held_keys(self, uri: str) -> list[IdentityKeys]:
        """All periods held for ``uri`` (a receiver tries each: messages may be for the next period)."""
        return [k for p in self.periods(uri) if (k := self.identity_keys(uri, p)) is not None]

    def prune(self, now: float) -> list[tuple[str, int]]:
        """Forget key sets more than KEEP_PAST_PERIODS periods old; returns what was dropped."""
        if self.enrolment is None:
            return []
        current = self.enrolment.certificate.domain().period_number(now)
        old = [key for key in self.key_sets if key[1] < current - KEEP_PAST_PERIODS]
        for key in old:
            del self.key_sets[key]
        return old


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600: a temporary file in the same directory, fsync,
    rename (readers see the old file or the new one, never a part). ``OSError`` if it cannot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReplayFile:
    """A replay cache kept in a small JSON file: ``ReplayCache.snapshot`` (digests and times, no secrets) and, for
    a client, per group the digest of the newest key message it accepted and when that entry expires (so that the
    server's re-delivery of that message after a restart still opens, while older ones are replays).

    ``load`` never fails: an absent file is an empty cache (a first start), an unreadable or corrupt one an empty
    cache and a warning (a replay cache that stops a client from starting would be a denial of service of its
    own). ``save`` writes atomically, mode 0600; ``OSError`` if it cannot."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self, now: float, capacity: int = REPLAY_CAPACITY) -> tuple[ReplayCache, dict[str, tuple[bytes, float]]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ReplayCache(capacity), {}
        except OSError as exc:
            log.warning("cannot read the replay cache %s (%s): starting with an empty one", self.path, exc)
            return ReplayCache(capacity), {}
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or not isinstance(document.get("current", {}), dict):
                raise ValueError("not a replay cache file")
            cache = ReplayCache.restore(document.get("cache"), now, capacity)
            current: dict[str, tuple[bytes, float]] = {}
            for group, (digest, expires) in document.get("current", {}).items():
                if not isinstance(expires, int | float) or isinstance(expires, bool):
                    raise ValueError("an expiry is not a number")
                if expires >= now:
                    current[str(group)] = (bytes.fromhex(digest), float(expires))
        except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            log.warning("the replay cache %s is corrupt (%s): starting with an empty one", self.path, exc)
            return ReplayCache(capacity), {}
        return cache, current

    def save(self, cache: ReplayCache, current: dict[str, tuple[bytes, float]] | None = None) -> None:
        document = {
            "cache": cache.snapshot(),
            "current": {group: [digest.hex(), expires] for group, (digest, expires) in (current or {}).items()},
        }
        write_private(self.path, json.dumps(document, separators=(",", ":")).encode())

    def __repr__(self) -> str:
        return f"ReplayFile({str(self.path)!r})"


class DebouncedSave:
    """Runs ``save`` ``delay`` seconds after the first ``changed()`` since the last save (so a burst of changes
    is one write), or at once by ``flush()`` (at stop; registered to run before the reactor shuts down). A
    failing save is logged, never raised: persistence is a safeguard, the cache in memory still works. ``save``
    may return a Deferred (a save that waits for a lock); ``flush`` returns it, so shutdown waits for it."""

    def __init__(self, reactor: Any, save: Callable[[], object], delay: float = REPLAY_SAVE_DELAY) -> None:
        self.reactor = reactor
        self._save = save
        self.delay = delay
        self._pending: Any = None
        trigger = getattr(reactor, "addSystemEventTrigger", None)  # a bare task.Clock (tests) has none
        if trigger is not None:
            trigger("before", "shutdown", self.flush)

    def changed(self) -> None:
        if self._pending is None or not self._pending.active():
            self._pending = self.reactor.callLater(self.delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._run()

    def flush(self) -> object:
        """Save now if a save is pending."""
        if self._pending is None or not self._pending.active():
            return None
        self._pending.cancel()
        self._pending = None
        return self._run()

    def _run(self) -> object:
        try:
            result = self._save()
        except Exception as exc:
            log.warning("saving the replay cache failed: %s", exc)
            return None
        if hasattr(result, "addErrback"):
            result.addErrback(lambda failure: log.warning("saving the replay cache failed: %s", failure.value))
        return result
