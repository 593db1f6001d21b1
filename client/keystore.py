"""The client's local keystore: the trusted KMS (enrolment) and the key sets it provisioned, sealed at rest.

One file, mode 0600, written atomically; its content is JSON sealed with a passphrase (``ptt.sealed``: scrypt +
AES-256-GCM). Everything the client needs offline is here: the domain certificate and, per identity, the keys of
the current and next key periods, the time of the last KMS response accepted (to refuse replays of older
responses), and the External KMS certificates from the KMS's signed certificate cache (which other domains' users
this client may key and be keyed by, ``trust``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsKeySet
from ptt.kmsformat.trust import KmsTrust
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate
from ptt.mikey.imessage import IdentityKeys
from ptt.sealed import SealError, seal, unseal

LABEL = "ptt-client-keystore"
KEEP_PAST_PERIODS = 1  # keep last period's keys: messages sent just before a rollover still decrypt


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
    def __init__(self, path: Path, passphrase: bytes) -> None:
        self.path = Path(path)
        self.passphrase = passphrase
        self.enrolment: Enrolment | None = None
        self.key_sets: dict[tuple[str, int], StoredKeySet] = {}
        self.last_response: dict[str, float] = {}  # identity URI -> Time of the last accepted keyprov
        self.external: dict[str, KmsCertificate] = {}  # KMS URI -> External certificate from the cert cache
        self.external_time: float | None = None  # Time of the last accepted cert cache (refuses older ones)

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
        }
        try:
            sealed = seal(json.dumps(document).encode(), self.passphrase, label=LABEL)
        except SealError as exc:  # an empty passphrase
            raise KeystoreError(f"cannot seal the keystore {self.path}: {exc}") from None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keystore-")
        except OSError as exc:
            raise KeystoreError(f"cannot write the keystore {self.path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(sealed)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise KeystoreError(f"cannot write the keystore {self.path}: {exc.strerror or exc}") from None
            raise

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
