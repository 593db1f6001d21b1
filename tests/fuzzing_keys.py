"""The key-handling targets of ``tests.fuzzing``: KMS XML, ad-hoc envelopes, MIKEY-SAKKE I_MESSAGEs and IdMS
access tokens."""

from __future__ import annotations

import contextlib
import random

from tests.fuzzing_base import Harness, mutate


def kms_harness() -> Harness:
    from datetime import UTC, datetime

    from ptt.kmsformat.model import KmsFormatError, KmsRequest
    from ptt.kmsformat.signing import sign_response, verify_signed_response
    from ptt.kmsformat.validation import check_cert_cache, check_init, check_key_prov
    from ptt.kmsformat.xml import (
        certificate_to_xml,
        parse_certificate,
        parse_request,
        parse_response,
        request_to_xml,
        response_to_xml,
    )
    from tests.test_kmsformat import (
        ALICE,
        KMS_URI,
        NOW,
        ROUND_TRIP_RESPONSES,
        _cert,
        _full_cert,
        _make_identity,
    )
    from tests.vectorfiles import VECTORS

    signer = _make_identity("kms signer")
    responses = [make() for make in ROUND_TRIP_RESPONSES.values()]
    seeds = [response_to_xml(r) for r in responses]
    seeds += [sign_response(r, signer.key, signer.cert) for r in responses[:3]]
    seeds += [
        (VECTORS / n).read_bytes() for n in ("streamwide_kms_init_response.xml", "streamwide_kms_keyprov_response.xml")
    ]
    seeds += [
        request_to_xml(KmsRequest(ALICE, KMS_URI, NOW, f"https://{KMS_URI}/keymanagement/identity/v1/init")),
        request_to_xml(KmsRequest(ALICE, KMS_URI, NOW, "https://k/keyprov", client_id="c-7", device_id="d-9")),
        certificate_to_xml(_full_cert()),
    ]
    when = datetime(2025, 3, 14, 12, 0, 30, tzinfo=UTC)
    certificate = _cert()

    def run(data: bytes) -> bool:
        accepted = False
        for parse in (parse_request, parse_certificate):
            with contextlib.suppress(KmsFormatError):
                parse(data)
                accepted = True
        with contextlib.suppress(KmsFormatError):
            response = parse_response(data)
            accepted = True
            for check in (check_init, check_cert_cache):
                with contextlib.suppress(KmsFormatError):
                    check(response, expected_kms_uri=KMS_URI, expected_user_uri=ALICE, now=when)
            with contextlib.suppress(KmsFormatError):
                check_key_prov(response, certificate=certificate, expected_user_uri=ALICE, now=when)
        if b"Signature" in data:
            with contextlib.suppress(KmsFormatError):
                verify_signed_response(data, signer.cert, now=NOW)
                accepted = True
        return accepted

    return Harness(seeds, run)


def adhoc_harness() -> Harness:
    from ptt.adhoc.messages import AdhocMessageError, Envelope, open_envelope, seal
    from ptt.mikey.imessage import ReplayCache
    from tests.test_adhoc_messages import ALICE, ALL_BODIES, NOW, make_world

    world = make_world()
    alice = world.keys(ALICE)
    seeds = [seal(alice, body, NOW) for body in ALL_BODIES]
    originals = set(seeds)

    def run(data: bytes) -> bool:
        try:
            envelope = Envelope.parse(data)
        except AdhocMessageError:
            return False
        if bytes(envelope) != data:
            raise AssertionError("the envelope does not re-encode to the same octets")
        if data not in originals and data[:-129] in {s[:-129] for s in seeds}:
            return True  # a mutated signature over the seeds' octets: opening costs an ECCSI verify, done below
        try:
            open_envelope(data, trusted_kms=world.trust, now=NOW, replay_cache=ReplayCache())
        except AdhocMessageError:
            return False
        return True

    return Harness(seeds, run)


def mikey_harness() -> Harness:
    from tests import test_mikey_fuzz as mf

    def run(data: bytes) -> bool:
        return mf._check(data)

    return Harness([d for d, _ in mf.SEEDS], run, mutate=mf.mutate)


def idms_harness() -> Harness:
    from tests.fuzzing_idms import idms_harness as make

    def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
        return mutate(rng, [data])

    harness: Harness = make(mutate_bytes)
    return harness


def emergency_harness() -> Harness:
    from tests.fuzzing_calls import emergency_harness as make

    harness: Harness = make()
    return harness


def privatecall_harness() -> Harness:
    from tests.fuzzing_calls import privatecall_harness as make

    harness: Harness = make()
    return harness
