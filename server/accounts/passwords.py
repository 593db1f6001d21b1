"""Password hashes and service tokens.

- **Hashes**: scrypt, self-describing (``scrypt$N$r$p$salt$hash``, base64), so a hash made at an older cost still
  verifies and is replaced at the account's next successful login; comparison in constant time.
- **Service accounts** (the group server's KMS account): the credential is a random token of 256 bits made by the
  KMS (``new_service_token``), kept as ``token$sha256$digest``. Guessing it is infeasible and checking it is cheap,
  so wrong guesses never lock it, slow it or spend the failure budget; they count only against their address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from server.accounts.errors import MalformedHash

MIN_PASSWORD_LENGTH = 8

# Password hashing cost for new hashes; a stored hash names its own parameters, so lowering this (tests do)
# never breaks existing accounts, and a changed value is applied to an account at its next successful login.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_LENGTH = 16
_HASH_LENGTH = 32
_MAX_N = 2**20
_HASH_RE = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_TOKEN_PREFIX = "token$sha256$"
_TOKEN_RE = re.compile(r"token\$sha256\$([A-Za-z0-9+/=]{44})")
SERVICE_TOKEN_BYTES = 32  # 256 bits of randomness in a service account's credential


def password_problem(password: object) -> str | None:
    """Why ``password`` may not be set as a new password, or None if it may."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
    return None


def _password_octets(password: str) -> bytes:
    # NFC so that the same password typed on differently composing keyboards gives the same octets.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=_HASH_LENGTH, n=n, r=r, p=p).derive(password)


def hash_password(password: str) -> str:
    """A self-describing hash at the current cost: ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(_SALT_LENGTH)
    digest = _scrypt(_password_octets(password), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def new_service_token() -> str:
    """A service account's credential: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SERVICE_TOKEN_BYTES)


def hash_service_token(token: str) -> str:
    """``token$sha256$digest``: a token has 256 bits of entropy, so one SHA-256 is as good as scrypt for it."""
    return _TOKEN_PREFIX + base64.b64encode(hashlib.sha256(token.encode("utf-8")).digest()).decode()


def is_service_hash(stored: str) -> bool:
    """Whether ``stored`` is a service token's hash (the account is a service account)."""
    return stored.startswith(_TOKEN_PREFIX)


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _HASH_RE.fullmatch(stored)
    if m is None:
        raise MalformedHash("malformed password hash in the database")
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise MalformedHash("password hash parameters out of range")
    return n, r, p, base64.b64decode(m[4]), base64.b64decode(m[5])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a password hash or a service token's; constant-time comparison);
    ``MalformedHash`` if it is damaged."""
    if is_service_hash(stored):
        m = _TOKEN_RE.fullmatch(stored)
        if m is None:
            raise MalformedHash("malformed service token hash in the database")
        given = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given, base64.b64decode(m[1]))
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(_password_octets(password), salt, n, r, p), digest)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made at another cost than new hashes are (never for a service token's)."""
    if is_service_hash(stored):
        return False
    n, r, p, _, _ = _parse_hash(stored)
    return (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def equal_work(password: str) -> None:
    """The scrypt work of one real check, against a random salt: an unknown name costs what a known one does."""
    _scrypt(_password_octets(password), secrets.token_bytes(_SALT_LENGTH), SCRYPT_N, SCRYPT_R, SCRYPT_P)
