"""Compact JWS with ES256 (RFC 7515, RFC 7518 §3.4) for the IdMS's access tokens (JWT, RFC 7519; RFC 9068 type).

Strict on input: a bounded ASCII string of three base64url parts without padding, in canonical form; a JSON header
of exactly the members we write (``alg`` must be ES256: ``none``, HS256 and every other algorithm are refused
before any key is looked at; ``typ`` at+jwt; a known ``kid``), no duplicate JSON members, no NaN/Infinity; a
64-octet r ‖ s signature with 0 < r, s < n. ``TokenRejected`` names what was wrong. The claims are not checked
here (``server.kms.idms`` does that).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = ["ALGORITHM", "MAX_TOKEN_LENGTH", "TOKEN_TYPE", "TokenRejected", "key_id", "sign", "verify"]

ALGORITHM = "ES256"
TOKEN_TYPE = "at+jwt"  # RFC 9068 §2.1: an access token, not an ID token or another JWT
MAX_TOKEN_LENGTH = 16 * 1024
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenRejected(ValueError):
    """The token is malformed or its signature does not verify; the message says which."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenRejected(f"the {what} is not base64url without padding")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:  # unused low bits set: another spelling of the same octets
        raise TokenRejected(f"the {what} is not canonical base64url")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number we accept")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenRejected(f"the {what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"the {what} is not a JSON object")
    return value


def _compact(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's JWK thumbprint (RFC 7638, SHA-256, base64url): names it in the ``kid`` header."""
    numbers = public_key.public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": _b64encode(numbers.x.to_bytes(32, "big")),
           "y": _b64encode(numbers.y.to_bytes(32, "big"))}  # fmt: skip
    return _b64encode(hashlib.sha256(_compact(jwk)).digest())


def sign(claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    """``claims`` as a compact JWS signed with ``key`` (P-256)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ES256 needs a P-256 key")
    header = {"alg": ALGORITHM, "kid": key_id(key.public_key()), "typ": TOKEN_TYPE}
    signing_input = f"{_b64encode(_compact(header))}.{_b64encode(_compact(claims))}"
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify(token: object, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> dict[str, Any]:
    """The claims of ``token`` if it is a well-formed ES256 JWS signed by one of ``keys`` (kid → key)."""
    if not isinstance(token, str) or not token:
        raise TokenRejected("no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("not a compact JWS (three dot-separated parts)")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    if header.get("alg") != ALGORITHM:
        raise TokenRejected(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted (only {ALGORITHM})")
    if set(header) != {"alg", "kid", "typ"} or header["typ"] != TOKEN_TYPE:
        raise TokenRejected(f"unexpected header (want alg, kid and typ {TOKEN_TYPE} only)")
    public_key = keys.get(header["kid"]) if isinstance(header["kid"], str) else None
    if public_key is None:
        raise TokenRejected("signed by an unknown key")
    signature = _b64decode(parts[2], "signature")
    if len(signature) != 64:
        raise TokenRejected("the signature is not 64 octets (r ‖ s)")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        raise TokenRejected("the signature is out of range")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    try:
        public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error):
        raise TokenRejected("the signature does not verify") from None
    return _json_object(_b64decode(parts[1], "payload"), "payload")
