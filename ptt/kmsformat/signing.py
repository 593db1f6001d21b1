"""XML-DSig signing and verification of KMS responses (TS 33.180 Annex D, D.2.3 SignedKmsResponse).

A signed response is ``<SignedKmsResponse><KmsResponse Id="xmldoc">…</KmsResponse><ds:Signature>…</ds:Signature>
</SignedKmsResponse>``: a signature beside the signed element, with one Reference ``URI="#xmldoc"``, exclusive
canonicalization, SHA-256 digest and ECDSA-SHA256 (XML Signature 1.1, RFC 4051), the signer's X.509 certificate in
KeyInfo.

Verification trusts only the certificate the client pinned at enrolment. It refuses anything but that exact layout
(one signature, one reference to the KmsResponse beside it, an Id no other element carries), other algorithms, and a
KeyInfo naming another key; it then parses only the canonical octets the digest covered, so content outside the
signature (a wrapped or forged element, comments splitting text) can never be returned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime

import cryptography.exceptions
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.algorithms import SignatureConstructionMethod as methods
from signxml.exceptions import SignXMLException
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from ptt.kmsformat.model import NAMESPACE, KmsResponse, MalformedKmsXml, SignatureInvalid, Unsigned, as_utc
from ptt.kmsformat.xml import DS_NAMESPACE, Element, build_response_element, parse_document, response_from_element

__all__ = ["sign_response", "verify_signed_response"]

_DSIG11_NAMESPACE = "http://www.w3.org/2009/xmldsig11#"
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_C14N_ALGORITHMS = frozenset(
    m.value
    for m in (
        CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        CanonicalizationMethod.CANONICAL_XML_1_1,
        CanonicalizationMethod.CANONICAL_XML_1_0,
    )
)
_ID_ATTRIBUTES = ("Id", "ID", "id")


def _ds(name: str) -> str:
    return f"{{{DS_NAMESPACE}}}{name}"


def _public_der(key: ec.EllipticCurvePublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def sign_response(response: KmsResponse, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    """A ``<SignedKmsResponse>`` document: the response and an ECDSA-SHA256 XML-DSig signature referencing it."""
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the KMS signing key must be an elliptic-curve private key (ECDSA-SHA256)")
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError("the certificate is not the signing key's")
    root = etree.Element(f"{{{NAMESPACE}}}SignedKmsResponse", nsmap={None: NAMESPACE})
    root.append(build_response_element(response))
    etree.indent(root, space="  ")
    signer = XMLSigner(
        method=methods.detached,
        signature_algorithm=SignatureMethod.ECDSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signature = signer.sign(root, key=key, cert=[cert], reference_uri="#" + response.response_id)
    root.append(signature)
    root[0].tail = "\n  "
    signature.tail = "\n"
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _one(parent: Element, name: str) -> Element:
    found = parent.findall(_ds(name))
    if len(found) != 1:
        raise SignatureInvalid(f"expected one ds:{name}, found {len(found)}")
    return found[0]


def _check_signed_info(signature: Element, response_id: str) -> None:
    """ECDSA-SHA256, SHA-256, a canonicalization we accept, exactly one Reference: to the KmsResponse."""
    signed_info = _one(signature, "SignedInfo")
    c14n = _one(signed_info, "CanonicalizationMethod").get("Algorithm")
    if c14n not in _C14N_ALGORITHMS:
        raise SignatureInvalid(f"canonicalization {c14n!r} not accepted")
    method = _one(signed_info, "SignatureMethod").get("Algorithm")
    if method != SignatureMethod.ECDSA_SHA256.value:
        raise SignatureInvalid(f"signature algorithm {method!r} is not ECDSA-SHA256")
    references = signed_info.findall(_ds("Reference"))
    if len(references) != 1:
        raise SignatureInvalid(f"expected exactly one signature reference, found {len(references)}")
    reference = references[0]
    if reference.get("URI") != "#" + response_id:
        raise SignatureInvalid(f"the signature references {reference.get('URI')!r}, not the KmsResponse")
    transforms = reference.find(_ds("Transforms"))
    for transform in [] if transforms is None else transforms.findall(_ds("Transform")):
        if transform.get("Algorithm") not in _C14N_ALGORITHMS | {_ENVELOPED}:
            raise SignatureInvalid(f"transform {transform.get('Algorithm')!r} not accepted")
    digest = _one(reference, "DigestMethod").get("Algorithm")
    if digest != DigestAlgorithm.SHA256.value:
        raise SignatureInvalid(f"digest algorithm {digest!r} is not SHA-256")


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("KeyInfo: invalid base64") from exc


def _check_key_info(signature: Element, cert: x509.Certificate) -> None:
    """KeyInfo may repeat the pinned certificate (or name it) but must not name any other key."""
    key_info = signature.find(_ds("KeyInfo"))
    if key_info is None:
        return
    cert_der = cert.public_bytes(Encoding.DER)
    for child in key_info:
        if not isinstance(child.tag, str) or child.tag == _ds("KeyName"):
            continue
        if child.tag in (_ds("KeyValue"), f"{{{_DSIG11_NAMESPACE}}}DEREncodedKeyValue"):
            continue  # signxml checks these against the pinned certificate's key
        if child.tag != _ds("X509Data"):
            raise SignatureInvalid(f"KeyInfo: unsupported {etree.QName(child).localname}")
        for item in child:
            if not isinstance(item.tag, str) or item.tag in (_ds("X509SubjectName"), _ds("X509CRL")):
                continue
            if item.tag == _ds("X509Certificate"):
                if not hmac.compare_digest(_b64(item.text), cert_der):
                    raise SignatureInvalid("KeyInfo carries a certificate other than the pinned one")
            elif item.tag == _ds("X509IssuerSerial"):
                serial = item.findtext(_ds("X509SerialNumber"), default="").strip()
                if serial != str(cert.serial_number):
                    raise SignatureInvalid("KeyInfo names a certificate other than the pinned one")
            elif item.tag == f"{{{_DSIG11_NAMESPACE}}}X509Digest":
                if item.get("Algorithm") != DigestAlgorithm.SHA256.value:
                    raise SignatureInvalid("KeyInfo: X509Digest algorithm not accepted")
                if not hmac.compare_digest(_b64(item.text), hashlib.sha256(cert_der).digest()):
                    raise SignatureInvalid("KeyInfo names a certificate other than the pinned one")
            elif item.tag == _ds("X509SKI"):
                try:
                    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
                except x509.ExtensionNotFound:
                    ski = b""
                if not hmac.compare_digest(_b64(item.text), ski):
                    raise SignatureInvalid("KeyInfo names a key other than the pinned one")
            else:
                raise SignatureInvalid(f"KeyInfo: unsupported {etree.QName(item).localname}")


def _signed_parts(root: Element) -> tuple[Element, Element, str]:
    """The KmsResponse and the ds:Signature of a SignedKmsResponse, in exactly the layout we accept."""
    if root.tag == f"{{{NAMESPACE}}}KmsResponse":
        raise Unsigned("a KmsResponse without signature")
    if root.tag != f"{{{NAMESPACE}}}SignedKmsResponse":
        raise MalformedKmsXml(f"expected SignedKmsResponse, got {root.tag!r}")
    signatures = list(root.iter(_ds("Signature")))
    if not signatures:
        raise Unsigned("SignedKmsResponse without ds:Signature")
    if len(signatures) != 1:
        raise SignatureInvalid(f"expected one ds:Signature, found {len(signatures)}")
    children = [c for c in root if isinstance(c.tag, str)]
    if (
        len(children) != 2
        or children[0].tag != f"{{{NAMESPACE}}}KmsResponse"
        or children[1] is not signatures[0]
        or (root.text or "").strip()
        or any((c.tail or "").strip() for c in root)
    ):
        raise SignatureInvalid("SignedKmsResponse must hold exactly a KmsResponse and then its ds:Signature")
    signed, signature = children
    response_id = signed.get("Id")
    if not response_id:
        raise SignatureInvalid("the KmsResponse has no Id for the signature to reference")
    holders = [
        e
        for e in root.iter()
        if isinstance(e.tag, str)
        and any(etree.QName(k).localname in _ID_ATTRIBUTES and v == response_id for k, v in e.attrib.items())
    ]
    if len(holders) != 1:
        raise SignatureInvalid(f"Id {response_id!r} is carried by {len(holders)} elements")
    return signed, signature, response_id


def verify_signed_response(data: bytes, cert: x509.Certificate, *, now: datetime | None = None) -> KmsResponse:
    """Verify a ``<SignedKmsResponse>`` with the pinned KMS signing certificate and return the signed response.

    Raises ``Unsigned`` (no signature), ``SignatureInvalid`` (tampered, other key, other algorithm, unexpected layout)
    or ``MalformedKmsXml``. With ``now`` the certificate must also be within its validity period; without it the
    certificate is trusted as pinned, whatever its dates (this module reads no clock).
    """
    root = parse_document(data)
    _, signature, response_id = _signed_parts(root)
    _check_signed_info(signature, response_id)
    _check_key_info(signature, cert)
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise SignatureInvalid("the pinned certificate does not hold an elliptic-curve key")
    config = SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        verification_time=cert.not_valid_before_utc if now is None else as_utc(now),
    )
    try:
        result = XMLVerifier().verify(root, x509_cert=cert, expect_config=config)
    except (
        SignXMLException,
        cryptography.exceptions.InvalidSignature,
        etree.LxmlError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,
    ) as exc:
        raise SignatureInvalid(f"XML signature does not verify: {exc}") from exc
    if not isinstance(result, VerifyResult):
        raise SignatureInvalid("expected exactly one verified reference")
    # Parse the canonical octets that were digested, never the document we were given.
    return response_from_element(parse_document(result.signed_data))
