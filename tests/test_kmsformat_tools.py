"""The KMS's signed XML checked by outside tools: xmlsec1 verifies the XML-DSig signature of every response we
sign (and refuses a tampered one), xmllint validates it against the vendor schema (TS 33.180 Annex D)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ptt.kmsformat import KmsResponse
from ptt.kmsformat.signing import sign_response
from tests.test_kmsformat import ROUND_TRIP_RESPONSES, Identity, _make_identity, schema_text


@pytest.fixture(scope="module")
def signer() -> Identity:
    return _make_identity("kms signer")


def _xmlsec1_verify(document: Path, trusted: Path) -> subprocess.CompletedProcess[str]:
    xmlsec1 = shutil.which("xmlsec1")
    assert xmlsec1, "xmlsec1 is installed by scripts/setup"
    # The signature references the KmsResponse by its Id attribute (URI="#xmldoc"); xmlsec1 must be told so.
    command = [xmlsec1, "--verify", "--trusted-pem", str(trusted), "--id-attr:Id", "KmsResponse", str(document)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_RESPONSES))
def test_xmlsec1_verifies_and_xmllint_validates_every_signed_response(
    name: str, signer: Identity, tmp_path: Path
) -> None:
    build: Callable[[], KmsResponse] = ROUND_TRIP_RESPONSES[name]
    signed = tmp_path / "signed.xml"
    signed.write_bytes(sign_response(build(), signer.key, signer.cert))
    trusted = tmp_path / "kms.pem"
    trusted.write_bytes(signer.cert.public_bytes(Encoding.PEM))
    verified = _xmlsec1_verify(signed, trusted)
    assert verified.returncode == 0 and "SignedInfo References (ok/all): 1/1" in verified.stderr, verified.stderr

    xmllint = shutil.which("xmllint")
    assert xmllint, "xmllint is installed by scripts/setup"
    schema = tmp_path / "kms.xsd"
    schema.write_text(schema_text())
    linted = subprocess.run(
        [xmllint, "--noout", "--schema", str(schema), str(signed)], capture_output=True, text=True, timeout=30
    )
    assert linted.returncode == 0 and "validates" in linted.stderr, linted.stderr


def test_xmlsec1_refuses_a_tampered_response_and_a_foreign_signer(signer: Identity, tmp_path: Path) -> None:
    name = sorted(ROUND_TRIP_RESPONSES)[0]
    document = sign_response(ROUND_TRIP_RESPONSES[name](), signer.key, signer.cert)
    trusted = tmp_path / "kms.pem"
    trusted.write_bytes(signer.cert.public_bytes(Encoding.PEM))
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(document.replace(b"example.org</", b"example.net</", 1))
    assert tampered.read_bytes() != document
    assert _xmlsec1_verify(tampered, trusted).returncode != 0

    other = _make_identity("someone else")
    foreign = tmp_path / "foreign.xml"
    foreign.write_bytes(sign_response(ROUND_TRIP_RESPONSES[name](), other.key, other.cert))
    assert _xmlsec1_verify(foreign, trusted).returncode != 0  # signed well, but not by the KMS we trust
