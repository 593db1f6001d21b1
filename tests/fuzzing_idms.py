"""The IdMS target of ``tests.fuzzing``: access tokens (``server.kms.jws.verify`` and the claim checks of
``IdentityManagement.check``) and the token endpoint's form body (``server.kms.idms._form``).

A mutated token's signature never verifies, so the generic mutations reach only the header and signature checks;
this target's own mutation mostly mutates the header or the claims as bytes and then *signs* them with the IdMS key,
so that every claim check sees hostile JSON that passed the signature (as a stolen IdMS key would give)."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

NOW = 1_780_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signed(header: bytes, payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}".encode()


def idms_harness(mutate_bytes: Callable[[random.Random, bytes], bytes]) -> Any:
    from server.kms import jws
    from server.kms.idms import KMS_SCOPE, IdentityManagement, TokenRefused, _form
    from tests.fuzzing_base import Harness

    key = ec.generate_private_key(ec.SECP256R1())
    idms = IdentityManagement(None, key, issuer="https://kms.example.org/idms", audience="kms.example.org")  # type: ignore[arg-type]
    claims = {
        "iss": idms.issuer,
        "sub": "alice",
        "aud": idms.audience,
        "iat": NOW,
        "exp": NOW + 600,
        "jti": "j-1",
        "scope": f"{KMS_SCOPE} sip:alice@example.org",
    }
    header = jws._compact({"alg": "ES256", "kid": jws.key_id(key.public_key()), "typ": "at+jwt"})
    payload = jws._compact(claims)
    seeds = [
        jws.sign(claims, key).encode(),
        jws.sign({**claims, "aud": [idms.audience, "other"], "nbf": NOW}, key).encode(),
        b"grant_type=password&username=alice&password=secret%20word&scope=sip%3Aalice%40example.org",
        b"grant_type=refresh_token&refresh_token=AbC-123_x",
        b"",
    ]

    def run(data: bytes) -> bool:
        accepted = False
        try:
            fields = _form(data)
            accepted = isinstance(fields, dict)
        except (ValueError, UnicodeDecodeError):
            pass
        try:
            token = data.decode("ascii")
        except UnicodeDecodeError:
            return accepted
        try:
            idms.check(token, NOW + 1)
            return True
        except TokenRefused:
            return accepted

    def mutate(rng: random.Random) -> bytes:
        choice = rng.random()
        if choice < 0.4:  # the generic mutations of tokens and forms
            return mutate_bytes(rng, rng.choice(seeds))
        if choice < 0.6:
            return _signed(mutate_bytes(rng, header), payload, key)
        return _signed(header, mutate_bytes(rng, payload), key)

    return Harness(seeds, run, mutate=mutate)
