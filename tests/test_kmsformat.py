"""TS 33.180 Annex D KMS interface: vendor samples, round trips, schema validity, XML-DSig, hostile XML, validation.

The vendor samples are tests/vectors/streamwide_kms_*.xml (unsigned) and the schema streamwide_kms_schema.xsd. The
signing tests use a fresh P-256 key with a self-signed certificate; the validation tests a fresh KMS (module-scoped:
master secrets and tables cost ~0.5 s) issuing real keys with ``ptt.crypto.kms.derive_user_keys``.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.algorithms import SignatureConstructionMethod as methods
from signxml.signer import XMLSigner

from ptt import ts33180
from ptt.crypto import kms
from ptt.kmsformat import (
    MAX_XML_SIZE,
    NAMESPACE,
    DomainMismatch,
    Enrolment,
    InvalidKeys,
    KmsCertCache,
    KmsCertificate,
    KmsError,
    KmsErrorResponse,
    KmsFormatError,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsRequest,
    KmsResponse,
    MalformedEnrolment,
    MalformedKmsXml,
    ProvisioningRejected,
    SignatureInvalid,
    StaleResponse,
    UnexpectedMessage,
    Unsigned,
    WrongAddressee,
    certificate_to_xml,
    check_cert_cache,
    check_init,
    check_key_prov,
    parse_certificate,
    parse_request,
    parse_response,
    request_to_xml,
    response_to_xml,
    sign_response,
    signing,
    verify_signed_response,
)
from ptt.kmsformat.xml import build_response_element
from tests.vectorfiles import VECTORS, load

DS = "http://www.w3.org/2000/09/xmldsig#"
KMS_URI = "kms.example.org"
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
PERIOD = 2592000
OFFSET = 0
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
CURRENT = ts33180.period_number(NOW.timestamp(), PERIOD, OFFSET)


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _ds(name: str) -> str:
    return f"{{{DS}}}{name}"


# --- Schema (the vendor XSD with its imports of ds/xenc/krr replaced by wildcards, as lxml cannot fetch them) ---


def schema_text() -> str:
    """The vendor XSD with its imports replaced by wildcards (also what xmllint is given)."""
    text = (VECTORS / "streamwide_kms_schema.xsd").read_text()
    text = re.sub(r"<xsd:import [^>]*/>", "", text)
    text = re.sub(
        r'<xsd:element ref="ds:Signature"( minOccurs="0")? />',
        rf'<xsd:any namespace="{DS}" processContents="skip"\1 />',
        text,
    )
    text = text.replace(
        '<xsd:element ref="xenc:EncryptedKey" />',
        '<xsd:any namespace="http://www.w3.org/2001/04/xmlenc#" processContents="skip" />',
    )
    return text.replace('type="krr:KmsRedirectResponseType"', 'type="xsd:anyType"')


@pytest.fixture(scope="module")
def schema() -> Any:
    return etree.XMLSchema(etree.fromstring(schema_text().encode()))


def _assert_schema_valid(schema: Any, data: bytes) -> None:
    document = etree.fromstring(data)
    assert schema.validate(document), schema.error_log


# --- Vendor samples ---


def test_vendor_init_sample() -> None:
    response = parse_response((VECTORS / "streamwide_kms_init_response.xml").read_bytes())
    assert response.user_uri == "alice@org.com"
    assert response.kms_uri == "localhost:8080"
    assert response.time == datetime(2021, 5, 10, 11, 23, 2, tzinfo=UTC)  # naive in the sample: UTC
    assert response.client_req_url == "http://localhost:8080/keymanagement/identity/v1/init"
    assert response.response_id == "xmldoc"
    assert response.error is None
    assert isinstance(response.message, KmsInit)
    cert = response.message.certificate
    assert (cert.kms_uri, cert.user_key_period, cert.user_key_offset) == ("localhost:8080", 2592000, 0)
    assert (cert.user_id_format, cert.version, cert.role, cert.parameter_set) == ("2", "1.1.0", "Root", None)
    # The sample KMS uses the RFC 6508 Appendix A Z and the RFC 6507 Appendix A KPAK.
    assert cert.pub_enc_key == bytes.fromhex(load("rfc6508_sakke.json")["Z_S"])
    assert cert.pub_auth_key == bytes.fromhex(load("rfc6507_eccsi.json")["KPAK"])
    domain = cert.domain()
    assert (domain.kms_uri, domain.z, domain.kpak, domain.key_period) == (
        "localhost:8080",
        cert.pub_enc_key,
        cert.pub_auth_key,
        2592000,
    )


def test_vendor_keyprov_sample() -> None:
    response = parse_response((VECTORS / "streamwide_kms_keyprov_response.xml").read_bytes())
    assert response.time == datetime(2021, 5, 17, 13, 25, 16, tzinfo=UTC)
    assert isinstance(response.message, KmsKeyProv)
    (key_set,) = response.message.key_sets
    assert (key_set.kms_uri, key_set.user_uri, key_set.key_period_no) == ("localhost:8080", "alice@org.com", 625)
    assert key_set.user_id.hex() == "060c5cddd13b87be1e37d3ff091101684b88aadef26c409a8b49c8da9dd81a05"
    # The sample's UserID is the F.2.1 UID for period 625 (a period number counted from the Unix epoch, not NTP's).
    assert key_set.user_id == ts33180.uid("alice@org.com", "localhost:8080", 2592000, 0, 625)
    assert (len(key_set.rsk), len(key_set.ssk), len(key_set.pvt)) == (257, 32, 65)
    assert key_set.ssk.hex().upper() == "D31C6FD21791D92D0BC721B50125C2B83450F4727EC5A845853AD30E023C34F3"
    assert key_set.rsk[0] == key_set.pvt[0] == 4


@pytest.mark.parametrize("name", ["streamwide_kms_init_response.xml", "streamwide_kms_keyprov_response.xml"])
def test_vendor_samples_reencode(name: str, schema: Any) -> None:
    response = parse_response((VECTORS / name).read_bytes())
    data = response_to_xml(response)
    assert parse_response(data) == response
    _assert_schema_valid(schema, data)


# --- Round trips of our own documents ---


def _cert(**changes: Any) -> KmsCertificate:
    base = KmsCertificate(
        kms_uri=KMS_URI,
        user_key_period=PERIOD,
        user_key_offset=OFFSET,
        pub_enc_key=bytes.fromhex(load("rfc6508_sakke.json")["Z_S"]),
        pub_auth_key=bytes.fromhex(load("rfc6507_eccsi.json")["KPAK"]),
    )
    return replace(base, **changes)


def _full_cert() -> KmsCertificate:
    return _cert(
        cert_uri="cert1.kms.example.org",
        issuer="www.example.org",
        valid_from=datetime(2025, 1, 1, tzinfo=UTC),
        valid_to=datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        revoked=False,
        kms_domains=("kms.example.org", "kms.other.example"),
    )


def _fake_key_set(period: int, **changes: Any) -> KmsKeySet:
    base = KmsKeySet(
        kms_uri=KMS_URI,
        user_uri=ALICE,
        user_id=ts33180.uid(ALICE, KMS_URI, PERIOD, OFFSET, period),
        key_period_no=period,
        rsk=b"\x04" + bytes(range(256)),
        ssk=bytes(range(32)),
        pvt=b"\x04" + bytes(range(64)),
    )
    return replace(base, **changes)


def _response(message: KmsInit | KmsKeyProv | KmsCertCache | None = None, **changes: Any) -> KmsResponse:
    base = KmsResponse(
        user_uri=ALICE,
        kms_uri=KMS_URI,
        time=NOW,
        client_req_url=f"https://{KMS_URI}/keymanagement/identity/v1/keyprov",
        message=message,
    )
    return replace(base, **changes)


ROUND_TRIP_RESPONSES: dict[str, Callable[[], KmsResponse]] = {
    "init": lambda: _response(KmsInit(_cert())),
    "init-full-certificate": lambda: _response(KmsInit(_full_cert()), kms_id="kms-1", response_id="r1"),
    "keyprov": lambda: _response(KmsKeyProv((_fake_key_set(CURRENT), _fake_key_set(CURRENT + 1)))),
    "keyprov-optional-fields": lambda: _response(
        KmsKeyProv(
            (
                _fake_key_set(
                    CURRENT,
                    valid_from=datetime(2025, 3, 1, tzinfo=UTC),
                    valid_to=datetime(2025, 3, 31, tzinfo=UTC),
                    revoked=False,
                    cert_uri="cert1.kms.example.org",
                    issuer="www.example.org",
                ),
            )
        )
    ),
    "keyprov-empty": lambda: _response(KmsKeyProv(())),
    "certcache": lambda: _response(
        KmsCertCache((_cert(), _full_cert(), _cert(kms_uri="kms.other.example", role="External")), cache_num=7)
    ),
    "error": lambda: _response(error=KmsError(403, "not authorised <&> ünïcode")),
    "bare": lambda: _response(time=datetime(2025, 3, 14, 12, 0, 0, 123456, tzinfo=UTC)),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_RESPONSES))
def test_response_round_trip(name: str, schema: Any) -> None:
    response = ROUND_TRIP_RESPONSES[name]()
    data = response_to_xml(response)
    assert parse_response(data) == response
    _assert_schema_valid(schema, data)


def test_response_xml_shape() -> None:
    data = response_to_xml(_response(KmsInit(_cert())))
    root = etree.fromstring(data)
    assert root.tag == _q("KmsResponse") and root.get("Id") == "xmldoc"
    assert [etree.QName(c).localname for c in root] == ["UserUri", "KmsUri", "Time", "ClientReqUrl", "KmsMessage"]
    init = root.find(f"{_q('KmsMessage')}/{_q('KmsInit')}")
    assert init.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "KmsInitTkIkType"
    assert root.findtext(_q("Time")) == "2025-03-14T12:00:00Z"
    pub_enc = root.findtext(f".//{_q('PubEncKey')}")
    assert pub_enc == pub_enc.upper() and len(pub_enc) == 514
    keyprov = etree.fromstring(response_to_xml(_response(KmsKeyProv((_fake_key_set(CURRENT),)))))
    assert keyprov.find(f".//{_q('KmsKeyProv')}").get("{http://www.w3.org/2001/XMLSchema-instance}type") == (
        "KmsKeyProvTkIkType"
    )


def test_request_round_trip(schema: Any) -> None:
    for request in (
        KmsRequest(ALICE, KMS_URI, NOW, f"https://{KMS_URI}/keymanagement/identity/v1/init"),
        KmsRequest(ALICE, KMS_URI, NOW, "https://k/keyprov", client_id="client-7", device_id="device-9"),
    ):
        data = request_to_xml(request)
        assert parse_request(data) == request
        _assert_schema_valid(schema, data)


def test_certificate_round_trip(schema: Any) -> None:
    for cert in (_cert(), _full_cert(), _cert(role="External", parameter_set=None, user_key_offset=3600)):
        data = certificate_to_xml(cert)
        assert etree.fromstring(data).tag == _q("KmsCertificate")
        assert parse_certificate(data) == cert
        _assert_schema_valid(schema, data)


def test_signed_certificate_wrapper_is_unwrapped() -> None:
    inner = certificate_to_xml(_cert()).split(b"?>", 1)[1]
    data = f'<SignedKmsCertificate xmlns="{NAMESPACE}">'.encode() + inner + b"</SignedKmsCertificate>"
    assert parse_certificate(data) == _cert()


def test_signed_wrappers_are_read_for_inspection() -> None:
    cert = certificate_to_xml(_cert()).split(b"?>", 1)[1].decode()
    signature = f'<ds:Signature xmlns:ds="{DS}"/>'
    cache = response_to_xml(_response(KmsCertCache(()))).decode()
    cache = cache.replace(
        '<KmsCertCache Version="1.0.0"/>',
        f'<KmsCertCache Version="1.0.0"><SignedKmsCertificate>{cert}{signature}</SignedKmsCertificate>{cert}'
        "</KmsCertCache>",
    )
    response = parse_response(cache.encode())
    assert response.message == KmsCertCache((_cert(), _cert()))
    request = request_to_xml(KmsRequest(ALICE, KMS_URI, NOW, "https://k/init")).split(b"?>", 1)[1].decode()
    signed_request = f'<SignedKmsRequest xmlns="{NAMESPACE}">{request}{signature}</SignedKmsRequest>'
    assert parse_request(signed_request.encode()) == KmsRequest(ALICE, KMS_URI, NOW, "https://k/init")


def test_times_and_hex_are_read_leniently() -> None:
    text = response_to_xml(_response(KmsKeyProv((_fake_key_set(CURRENT),)))).decode()
    text = text.replace("2025-03-14T12:00:00Z", "2025-03-14T14:00:00.5+02:00")
    text = re.sub(r"(<UserSigningKeySSK[^>]*>)([0-9A-F]+)<", lambda m: f"{m[1]}{m[2].lower()}<", text)
    response = parse_response(text.encode())
    assert response.time == datetime(2025, 3, 14, 12, 0, 0, 500000, tzinfo=UTC)
    assert isinstance(response.message, KmsKeyProv)
    assert response.message.key_sets[0].ssk == bytes(range(32))


def test_model_normalises_times_to_utc() -> None:
    naive = _response(time=datetime(2025, 3, 14, 12, 0))
    offset = _response(time=datetime(2025, 3, 14, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    assert naive.time == offset.time == NOW and naive.time.tzinfo is UTC


def test_key_set_repr_hides_secrets() -> None:
    key_set = _fake_key_set(CURRENT, ssk=bytes.fromhex("AB" * 32))
    text = repr(key_set).lower()
    assert "ab" * 32 not in text and key_set.rsk.hex() not in text
    assert str(CURRENT) in text


@pytest.mark.parametrize(
    "build",
    [
        lambda: _cert(pub_enc_key=b"\x04" * 65),
        lambda: _cert(pub_auth_key=b"\x04" * 257),
        lambda: _cert(user_key_period=0),
        lambda: _cert(user_key_offset=-1),
        lambda: _cert(role="Other"),
        lambda: _fake_key_set(CURRENT, ssk=b"\x01" * 31),
        lambda: _fake_key_set(CURRENT, user_id=b"\x00" * 31),
        lambda: _fake_key_set(CURRENT, key_period_no=-1),
        lambda: _response(response_id="has space"),
        lambda: _response(user_uri=""),
        lambda: KmsError(-1, "negative"),
    ],
)
def test_model_rejects_invalid_values(build: Callable[[], object]) -> None:
    with pytest.raises(KmsFormatError):
        build()


# --- Malformed and hostile XML ---


def _good_keyprov_text() -> str:
    return response_to_xml(_response(KmsKeyProv((_fake_key_set(CURRENT),)))).decode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<KeyPeriodNo>", "<KeyPeriodNo>-"),  # negative
        ("<KeyPeriodNo>", "<KeyPeriodNo>+"),  # signed
        ("<KeyPeriodNo>", "<KeyPeriodNo>0x"),
        ('<UserSigningKeySSK xsi:type="KeyContentType">', '<UserSigningKeySSK xsi:type="KeyContentType">00'),
        ('<UserSigningKeySSK xsi:type="KeyContentType">', '<UserSigningKeySSK xsi:type="KeyContentType">G'),
        ("<UserID>", "<UserID>00"),
        ("<Time>2025-03-14T12:00:00Z", "<Time>2025-02-30T12:00:00Z"),
        ("<Time>2025-03-14T12:00:00Z", "<Time>yesterday"),
        ("<UserUri>sip:alice@example.org</UserUri>\n  <KmsUri>", "<KmsUri>"),  # missing UserUri
        ("<KmsUri>kms.example.org</KmsUri>\n  <Time>", "<Time>"),  # missing KmsUri
        ("<ClientReqUrl>", "<Bogus/><ClientReqUrl>"),  # unknown element of our namespace
        ("<UserID>", "<UserID><x/>"),  # child element in a simple element
        ("<KmsMessage>", "<KmsMessage>text"),  # text in a complex element
        ("<KmsKeyProv ", "<KmsKeyProvX "),
        ('xmlns="urn:3gpp:ns:mcsecKMSInterface:1.0"', 'xmlns="urn:example:other"'),
        ('xsi:type="KeyContentType"', 'xsi:type="EncKeyContentType"'),
        ("</KmsResponse>", ""),  # not well-formed
    ],
)
def test_malformed_responses_are_rejected(old: str, new: str) -> None:
    text = _good_keyprov_text()
    assert old in text
    with pytest.raises(MalformedKmsXml):
        parse_response(text.replace(old, new, 1).encode())


def test_foreign_namespace_extensions_and_comments_are_ignored() -> None:
    text = _good_keyprov_text()
    text = text.replace("</KmsMessage>", '</KmsMessage><ext:Extra xmlns:ext="urn:example:ext">x</ext:Extra>')
    text = text.replace("<UserUri>sip:alice@", "<UserUri><!-- split -->sip:alice@<!-- split -->")
    assert parse_response(text.encode()) == parse_response(_good_keyprov_text().encode())


def test_request_and_certificate_parsers_reject_other_roots() -> None:
    with pytest.raises(MalformedKmsXml):
        parse_request(_good_keyprov_text().encode())
    with pytest.raises(MalformedKmsXml):
        parse_certificate(_good_keyprov_text().encode())
    with pytest.raises(MalformedKmsXml):
        parse_response(certificate_to_xml(_cert()))


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE KmsResponse [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<KmsResponse xmlns="urn:3gpp:ns:mcsecKMSInterface:1.0"><UserUri>&lol9;</UserUri></KmsResponse>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE KmsResponse [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<KmsResponse xmlns="urn:3gpp:ns:mcsecKMSInterface:1.0"><UserUri>&xxe;</UserUri><KmsUri>k</KmsUri>
<Time>2025-03-14T12:00:00Z</Time><ClientReqUrl>u</ClientReqUrl></KmsResponse>"""

PLAIN_DOCTYPE = """<?xml version="1.0"?><!DOCTYPE KmsResponse SYSTEM "http://example.invalid/kms.dtd">
<KmsResponse xmlns="urn:3gpp:ns:mcsecKMSInterface:1.0"/>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, PLAIN_DOCTYPE], ids=["laughs", "xxe", "dtd"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_doctype_and_entities_are_rejected(text: str, encoding: str) -> None:
    data = text.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding}"?>').encode(encoding)
    for parse in (parse_response, parse_request, parse_certificate):
        with pytest.raises(MalformedKmsXml) as info:
            parse(data)
        assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message
    with pytest.raises(MalformedKmsXml):
        verify_signed_response(data, _make_identity("x").cert)


def test_too_large_is_rejected_before_parsing() -> None:
    text = _good_keyprov_text()
    padding = "<!--" + "x" * MAX_XML_SIZE + "-->"
    with pytest.raises(MalformedKmsXml, match="larger"):
        parse_response(text.replace("<KmsMessage>", "<KmsMessage>" + padding).encode())
    with pytest.raises(MalformedKmsXml):
        parse_response("not xml at all")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("<KmsMessage>", "<KmsMessage>" + "<x:a xmlns:x='urn:x'>" * 25 + "</x:a>" * 25, "deeper than 24"),
        ("<KmsMessage>", "<KmsMessage><x:a xmlns:x='urn:x'>" + "<x:b/>" * 10_000 + "</x:a>", "more than 10000"),
        ("<KmsMessage>", "<KmsMessage><!--" + "x" * (16 * 1024 + 1) + "-->", "text longer than 16384"),
        ("<UserUri>", "<UserUri>" + "a" * (16 * 1024 + 1), "text longer than 16384"),
        ("<KmsMessage>", "<KmsMessage " + " ".join(f"a{i}='v'" for i in range(17)) + ">", "more than 16 attributes"),
        ("<KmsMessage>", "<KmsMessage a='" + "v" * 1025 + "'>", "attribute longer than 1024"),
        ("<KmsMessage>", "<KmsMessage xmlns:x='urn:" + "v" * 1025 + "'>", "namespace declarations"),
    ],
)
def test_parser_bounds_depth_count_and_sizes(old: str, new: str, words: str) -> None:
    text = _good_keyprov_text()
    assert old in text
    with pytest.raises(MalformedKmsXml, match=words):
        parse_response(text.replace(old, new, 1).encode())


def test_libxml2_depth_limit_is_a_malformed_document() -> None:
    with pytest.raises(MalformedKmsXml, match="not well-formed"):
        parse_request(b"<a>" * 50_000)


# --- XML-DSig ---


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _make_identity(name: str, *, not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC)) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return Identity(key, cert)


@pytest.fixture(scope="module")
def signer() -> Identity:
    return _make_identity("kms signer")


@pytest.fixture(scope="module")
def other_signer() -> Identity:
    return _make_identity("someone else")


@pytest.fixture
def keyprov() -> KmsResponse:
    return _response(KmsKeyProv((_fake_key_set(CURRENT), _fake_key_set(CURRENT + 1))))


def test_sign_and_verify(signer: Identity, keyprov: KmsResponse, schema: Any) -> None:
    data = sign_response(keyprov, signer.key, signer.cert)
    root = etree.fromstring(data)
    assert root.tag == _q("SignedKmsResponse")
    assert [c.tag for c in root] == [_q("KmsResponse"), _ds("Signature")]
    (reference,) = root.iter(_ds("Reference"))
    assert reference.get("URI") == "#xmldoc"
    assert root.find(f".//{_ds('SignatureMethod')}").get("Algorithm") == SignatureMethod.ECDSA_SHA256.value
    assert root.find(f".//{_ds('X509Certificate')}") is not None
    assert verify_signed_response(data, signer.cert) == keyprov
    assert verify_signed_response(data, signer.cert, now=NOW) == keyprov
    assert parse_response(data) == keyprov  # inspection without trust
    _assert_schema_valid(schema, data)


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_RESPONSES))
def test_sign_and_verify_every_message(name: str, signer: Identity) -> None:
    response = ROUND_TRIP_RESPONSES[name]()
    assert verify_signed_response(sign_response(response, signer.key, signer.cert), signer.cert) == response


def test_sign_requires_the_matching_certificate(signer: Identity, other_signer: Identity, keyprov: KmsResponse) -> None:
    with pytest.raises(ValueError, match="not the signing key"):
        sign_response(keyprov, signer.key, other_signer.cert)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<KeyPeriodNo>", "<KeyPeriodNo>1"),
        ("<UserUri>sip:alice@", "<UserUri>sip:mallory@"),
        ("<Time>2025-03-14T12", "<Time>2025-03-15T12"),
        ('Id="xmldoc"', 'Id="xmldoc" Version="1.0.0"'),
    ],
)
def test_tampered_response_is_rejected(old: str, new: str, signer: Identity, keyprov: KmsResponse) -> None:
    data = sign_response(keyprov, signer.key, signer.cert).decode()
    assert old in data
    with pytest.raises(SignatureInvalid):
        verify_signed_response(data.replace(old, new, 1).encode(), signer.cert)


def test_tampered_signature_value_is_rejected(signer: Identity, keyprov: KmsResponse) -> None:
    root = etree.fromstring(sign_response(keyprov, signer.key, signer.cert))
    value = root.find(f".//{_ds('SignatureValue')}")
    raw = bytearray(base64.b64decode(value.text))
    raw[5] ^= 1
    value.text = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureInvalid):
        verify_signed_response(etree.tostring(root), signer.cert)


def test_unsigned_is_rejected(signer: Identity, keyprov: KmsResponse) -> None:
    root = etree.fromstring(sign_response(keyprov, signer.key, signer.cert))
    root.remove(root.find(_ds("Signature")))
    with pytest.raises(Unsigned):
        verify_signed_response(etree.tostring(root), signer.cert)
    with pytest.raises(Unsigned):
        verify_signed_response(response_to_xml(keyprov), signer.cert)
    with pytest.raises(Unsigned):
        verify_signed_response((VECTORS / "streamwide_kms_keyprov_response.xml").read_bytes(), signer.cert)


def test_other_key_is_rejected(signer: Identity, other_signer: Identity, keyprov: KmsResponse) -> None:
    data = sign_response(keyprov, signer.key, signer.cert)
    with pytest.raises(SignatureInvalid):
        verify_signed_response(data, other_signer.cert)
    # A forger signing with its own key and certificate, even if it puts that certificate in KeyInfo.
    forged = sign_response(replace(keyprov, user_uri=BOB), other_signer.key, other_signer.cert)
    with pytest.raises(SignatureInvalid):
        verify_signed_response(forged, signer.cert)


def test_key_info_naming_another_certificate_is_rejected(
    signer: Identity, other_signer: Identity, keyprov: KmsResponse
) -> None:
    root = etree.fromstring(sign_response(keyprov, signer.key, signer.cert))
    element = root.find(f".//{_ds('X509Certificate')}")
    element.text = base64.b64encode(other_signer.cert.public_bytes(Encoding.DER)).decode()
    with pytest.raises(SignatureInvalid, match="other than the pinned"):
        verify_signed_response(etree.tostring(root), signer.cert)


def test_key_info_is_not_needed(signer: Identity, keyprov: KmsResponse) -> None:
    # KeyInfo is outside SignedInfo; the pinned certificate is what verifies.
    root = etree.fromstring(sign_response(keyprov, signer.key, signer.cert))
    signature = root.find(_ds("Signature"))
    signature.remove(signature.find(_ds("KeyInfo")))
    assert verify_signed_response(etree.tostring(root), signer.cert) == keyprov


def test_expired_certificate_with_now(keyprov: KmsResponse) -> None:
    expired = _make_identity("old kms", not_after=datetime(2024, 1, 1, tzinfo=UTC))
    data = sign_response(keyprov, expired.key, expired.cert)
    assert verify_signed_response(data, expired.cert) == keyprov  # pinned, dates not checked without a clock
    with pytest.raises(SignatureInvalid):
        verify_signed_response(data, expired.cert, now=NOW)


def _sign_with(
    response: KmsResponse,
    identity: Identity,
    *,
    signature_algorithm: SignatureMethod = SignatureMethod.ECDSA_SHA256,
    digest_algorithm: DigestAlgorithm = DigestAlgorithm.SHA256,
    method: Any = methods.detached,
) -> bytes:
    root = etree.Element(_q("SignedKmsResponse"), nsmap={None: NAMESPACE})
    root.append(build_response_element(response))
    signer = XMLSigner(
        method=method,
        signature_algorithm=signature_algorithm,
        digest_algorithm=digest_algorithm,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signed = signer.sign(root, key=identity.key, cert=[identity.cert], reference_uri="#xmldoc")
    if method == methods.detached:
        root.append(signed)
        return bytes(etree.tostring(root))
    return bytes(etree.tostring(signed))


def test_other_algorithms_are_rejected(signer: Identity, keyprov: KmsResponse) -> None:
    assert verify_signed_response(_sign_with(keyprov, signer), signer.cert) == keyprov
    for options in (
        {"signature_algorithm": SignatureMethod.ECDSA_SHA384},
        {"digest_algorithm": DigestAlgorithm.SHA512},
    ):
        with pytest.raises(SignatureInvalid, match="not"):
            verify_signed_response(_sign_with(keyprov, signer, **options), signer.cert)


def test_enveloped_layout_is_rejected(signer: Identity, keyprov: KmsResponse) -> None:
    # An enveloped signature inside <SignedKmsResponse> (beside nothing): not the layout of D.2.3.
    root = build_response_element(keyprov)
    signed = XMLSigner(
        method=methods.enveloped,
        signature_algorithm=SignatureMethod.ECDSA_SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    ).sign(root, key=signer.key, cert=[signer.cert], reference_uri="#xmldoc")
    with pytest.raises(Unsigned):  # a KmsResponse root is an unsigned response
        verify_signed_response(etree.tostring(signed), signer.cert)


def test_comments_cannot_change_signed_text(signer: Identity, keyprov: KmsResponse) -> None:
    # Exclusive c14n drops comments; we return the canonical octets, so text is never cut at a comment.
    data = sign_response(keyprov, signer.key, signer.cert).decode()
    data = data.replace("<UserUri>sip:alice@example.org<", "<UserUri>sip:alice@<!-- x -->example.org<", 1)
    assert verify_signed_response(data.encode(), signer.cert).user_uri == ALICE


def _forged() -> KmsResponse:
    return _response(KmsKeyProv((_fake_key_set(CURRENT, user_uri="sip:mallory@example.org"),)), user_uri=BOB)


def _wrapping_attempts(genuine_signed: bytes) -> dict[str, bytes]:
    attempts = {}
    forged_text = response_to_xml(_forged()).split(b"?>", 1)[1]

    def variant(edit: Callable[[Any, Any, Any], None]) -> bytes:
        root = etree.fromstring(genuine_signed)
        genuine, signature = root[0], root[1]
        edit(root, genuine, signature)
        return bytes(etree.tostring(root))

    def forged(response_id: str | None) -> Any:
        element = etree.fromstring(forged_text)
        if response_id is None:
            del element.attrib["Id"]
        else:
            element.set("Id", response_id)
        return element

    def move_into_wrapper(root: Any, genuine: Any, signature: Any) -> None:
        wrapper = etree.SubElement(root, "{urn:example:evil}Wrapper")
        wrapper.append(genuine)
        root.insert(0, forged(None))

    def move_into_object(root: Any, genuine: Any, signature: Any) -> None:
        obj = etree.SubElement(signature, _ds("Object"))
        obj.append(genuine)
        root.insert(0, forged("other"))

    def same_id_first(root: Any, genuine: Any, signature: Any) -> None:
        root.insert(0, forged("xmldoc"))

    def forged_first_genuine_after_signature(root: Any, genuine: Any, signature: Any) -> None:
        root.remove(genuine)
        root.insert(0, forged(None))
        root.append(genuine)

    def inside_forged(root: Any, genuine: Any, signature: Any) -> None:
        fake = forged(None)
        root.replace(genuine, fake)
        extension = etree.SubElement(fake, "{urn:example:evil}Ext")
        extension.append(genuine)

    for edit in (
        move_into_wrapper,
        move_into_object,
        same_id_first,
        forged_first_genuine_after_signature,
        inside_forged,
    ):
        attempts[edit.__name__] = variant(edit)
    return attempts


def test_signature_wrapping_is_not_accepted(signer: Identity, keyprov: KmsResponse) -> None:
    genuine_signed = sign_response(keyprov, signer.key, signer.cert)
    attempts = _wrapping_attempts(genuine_signed)
    # The attempts are real: a parser that ignores the signature finds the forged response in some of them.
    assert any(_inspect_user(data) == BOB for data in attempts.values())
    for name, data in attempts.items():
        try:
            result = verify_signed_response(data, signer.cert)
        except (SignatureInvalid, MalformedKmsXml):
            continue
        assert result == keyprov, name  # only ever the genuinely signed content


def _inspect_user(data: bytes) -> str | None:
    try:
        return parse_response(data).user_uri
    except MalformedKmsXml:
        return None


def test_wrapping_defence_in_depth(signer: Identity, keyprov: KmsResponse, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even without the layout checks, only the canonical octets the digest covered are parsed."""

    def lenient(root: Any) -> tuple[Any, Any, str]:
        return None, root.find(_ds("Signature")), "xmldoc"

    monkeypatch.setattr(signing, "_signed_parts", lenient)
    accepted = 0
    for name, data in _wrapping_attempts(sign_response(keyprov, signer.key, signer.cert)).items():
        try:
            result = verify_signed_response(data, signer.cert)
        except (SignatureInvalid, MalformedKmsXml):
            continue
        assert result == keyprov, name
        accepted += 1
    assert accepted  # the lenient path did reach signxml and returned the genuine content


def test_signed_documents_with_doctype_are_rejected(signer: Identity, keyprov: KmsResponse) -> None:
    data = sign_response(keyprov, signer.key, signer.cert)
    doctyped = data.replace(b"?>", b'?>\n<!DOCTYPE SignedKmsResponse [<!ENTITY e "x">]>', 1)
    with pytest.raises(MalformedKmsXml):
        verify_signed_response(doctyped, signer.cert)
    with pytest.raises(MalformedKmsXml):
        verify_signed_response(b"<SignedKmsResponse", signer.cert)


# --- Validation with real keys from a fresh KMS ---


@dataclass(frozen=True)
class Domain:
    master: kms.MasterSecrets
    certificate: KmsCertificate


@pytest.fixture(scope="module")
def domain() -> Domain:
    master = kms.generate_master_secrets()
    certificate = KmsCertificate(
        kms_uri=KMS_URI,
        user_key_period=PERIOD,
        user_key_offset=OFFSET,
        pub_enc_key=master.z_public,
        pub_auth_key=master.kpak,
        valid_from=datetime(2025, 1, 1, tzinfo=UTC),
        valid_to=datetime(2027, 1, 1, tzinfo=UTC),
    )
    return Domain(master, certificate)


def _real_key_set(domain: Domain, user: str, period: int, *, with_bounds: bool = False) -> KmsKeySet:
    uid = ts33180.uid(user, KMS_URI, PERIOD, OFFSET, period)
    keys = kms.derive_user_keys(uid, domain.master)
    start, end = ts33180.period_bounds(period, PERIOD, OFFSET)
    return KmsKeySet(
        kms_uri=KMS_URI,
        user_uri=user,
        user_id=uid,
        key_period_no=period,
        rsk=keys.rsk,
        ssk=keys.ssk,
        pvt=keys.pvt,
        valid_from=datetime.fromtimestamp(start, UTC) if with_bounds else None,
        valid_to=datetime.fromtimestamp(end, UTC) if with_bounds else None,
    )


def _keyprov_response(*key_sets: KmsKeySet, **changes: Any) -> KmsResponse:
    return _response(KmsKeyProv(key_sets), **changes)


def _check(domain: Domain, response: KmsResponse, **options: Any) -> list[KmsKeySet]:
    kwargs: dict[str, Any] = {"certificate": domain.certificate, "expected_user_uri": ALICE, "now": NOW}
    kwargs.update(options)
    return check_key_prov(response, **kwargs)


def test_check_key_prov_accepts_current_and_next(domain: Domain) -> None:
    current = _real_key_set(domain, ALICE, CURRENT, with_bounds=True)
    following = _real_key_set(domain, ALICE, CURRENT + 1)
    accepted = _check(domain, _keyprov_response(following, current))
    assert accepted == [current, following]
    # and after a trip through signed XML
    identity = _make_identity("kms")
    data = sign_response(_keyprov_response(current, following), identity.key, identity.cert)
    assert _check(domain, verify_signed_response(data, identity.cert)) == [current, following]


Case = tuple[KmsResponse, dict[str, Any], type[ProvisioningRejected], str | None]


def _rejection_cases(domain: Domain) -> dict[str, Case]:
    good = _real_key_set(domain, ALICE, CURRENT)
    bob = _real_key_set(domain, BOB, CURRENT)
    next_period = _real_key_set(domain, ALICE, CURRENT + 1)
    other_master = kms.generate_master_secrets()
    foreign_keys = kms.derive_user_keys(good.user_id, other_master)
    ssk_bad = (int.from_bytes(good.ssk, "big") ^ 1).to_bytes(32, "big")
    pvt_flipped = good.pvt[:-1] + bytes([good.pvt[-1] ^ 1])
    start, end = ts33180.period_bounds(CURRENT, PERIOD, OFFSET)

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    def keys(key_set: KmsKeySet, **changes: Any) -> KmsResponse:
        return _keyprov_response(replace(key_set, **changes))

    return {
        "kms error": (_response(error=KmsError(404, "unknown user")), {}, KmsErrorResponse, "unknown user"),
        "response for bob": (_keyprov_response(good, user_uri=BOB), {}, WrongAddressee, None),
        "bob's key set": (_keyprov_response(bob), {}, WrongAddressee, None),
        "bob's key set beside ours": (_keyprov_response(next_period, bob), {}, WrongAddressee, None),
        "other UID": (keys(good, user_id=next_period.user_id), {}, InvalidKeys, "UserID"),
        "period relabelled": (keys(next_period, key_period_no=CURRENT), {}, InvalidKeys, "UserID"),
        "bob's RSK": (keys(good, rsk=bob.rsk), {}, InvalidKeys, "RSK"),
        "other KMS's RSK": (keys(good, rsk=foreign_keys.rsk), {}, InvalidKeys, "RSK"),
        "corrupted SSK": (keys(good, ssk=ssk_bad), {}, InvalidKeys, "SSK/PVT"),
        "bob's PVT": (keys(good, pvt=bob.pvt), {}, InvalidKeys, "SSK/PVT"),
        "flipped PVT": (keys(good, pvt=pvt_flipped), {}, InvalidKeys, "SSK/PVT"),
        "other KMS's SSK/PVT": (keys(good, ssk=foreign_keys.ssk, pvt=foreign_keys.pvt), {}, InvalidKeys, "SSK/PVT"),
        "revoked key set": (keys(good, revoked=True), {}, InvalidKeys, "revoked"),
        "duplicate period": (_keyprov_response(good, good), {}, InvalidKeys, "same key period"),
        "ValidFrom in another period": (keys(good, valid_from=at(end)), {}, InvalidKeys, "ValidFrom"),
        "ValidTo in another period": (keys(good, valid_to=at(end + PERIOD)), {}, InvalidKeys, "ValidTo"),
        "ValidFrom after ValidTo": (
            keys(good, valid_from=at(start + 100), valid_to=at(start + 50)),
            {},
            InvalidKeys,
            "before",
        ),
        "too old": (_keyprov_response(good, time=NOW - timedelta(minutes=6)), {}, StaleResponse, "older"),
        "in the future": (_keyprov_response(good, time=NOW + timedelta(minutes=6)), {}, StaleResponse, "later"),
        "replayed": (_keyprov_response(good), {"not_before": NOW}, StaleResponse, "replayed"),
        "older than the last": (
            _keyprov_response(good),
            {"not_before": NOW + timedelta(seconds=1)},
            StaleResponse,
            "replayed",
        ),
        "response from another KMS": (_keyprov_response(good, kms_uri="kms.evil"), {}, DomainMismatch, None),
        "key set of another KMS": (keys(good, kms_uri="kms.evil"), {}, DomainMismatch, None),
        "revoked certificate": (
            _keyprov_response(good),
            {"certificate": replace(domain.certificate, revoked=True)},
            InvalidKeys,
            "revoked",
        ),
        "expired certificate": (
            _keyprov_response(good),
            {"certificate": replace(domain.certificate, valid_to=NOW - timedelta(days=1))},
            StaleResponse,
            "expired",
        ),
        "not a key response": (_response(KmsInit(domain.certificate)), {}, UnexpectedMessage, None),
    }


REJECTIONS = [
    "kms error",
    "response for bob",
    "bob's key set",
    "bob's key set beside ours",
    "other UID",
    "period relabelled",
    "bob's RSK",
    "other KMS's RSK",
    "corrupted SSK",
    "bob's PVT",
    "flipped PVT",
    "other KMS's SSK/PVT",
    "revoked key set",
    "duplicate period",
    "ValidFrom in another period",
    "ValidTo in another period",
    "ValidFrom after ValidTo",
    "too old",
    "in the future",
    "replayed",
    "older than the last",
    "response from another KMS",
    "key set of another KMS",
    "revoked certificate",
    "expired certificate",
    "not a key response",
]


@pytest.fixture(scope="module")
def rejection_cases(domain: Domain) -> dict[str, Case]:
    cases = _rejection_cases(domain)
    assert sorted(cases) == sorted(REJECTIONS)
    return cases


@pytest.mark.parametrize("name", REJECTIONS)
def test_check_key_prov_rejects(name: str, domain: Domain, rejection_cases: dict[str, Case]) -> None:
    response, options, error, message = rejection_cases[name]
    with pytest.raises(error, match=message):
        _check(domain, response, **options)


def test_check_key_prov_error_details_and_limits(domain: Domain) -> None:
    with pytest.raises(KmsErrorResponse) as info:
        _check(domain, _response(error=KmsError(404, "unknown user")))
    assert (info.value.code, info.value.message) == (404, "unknown user")
    good = _real_key_set(domain, ALICE, CURRENT)
    assert _check(domain, _keyprov_response(good, time=NOW - timedelta(minutes=5))) == [good]
    assert _check(domain, _keyprov_response(good, time=NOW + timedelta(minutes=5))) == [good]
    assert _check(domain, _keyprov_response(good), not_before=NOW - timedelta(seconds=1)) == [good]
    assert _check(domain, _keyprov_response()) == []


def test_check_init(domain: Domain) -> None:
    def check(response: KmsResponse, **options: Any) -> KmsCertificate:
        kwargs: dict[str, Any] = {"expected_kms_uri": KMS_URI, "expected_user_uri": ALICE, "now": NOW}
        kwargs.update(options)
        return check_init(response, **kwargs)

    cert = domain.certificate
    assert check(_response(KmsInit(cert))) == cert
    assert check(parse_response(response_to_xml(_response(KmsInit(cert))))) == cert
    bad_z = cert.pub_enc_key[:-1] + bytes([cert.pub_enc_key[-1] ^ 1])
    bad_kpak = cert.pub_auth_key[:-1] + bytes([cert.pub_auth_key[-1] ^ 1])
    cases: list[tuple[KmsResponse, dict[str, Any], type[ProvisioningRejected]]] = [
        (_response(error=KmsError(500, "down")), {}, KmsErrorResponse),
        (_response(KmsInit(cert), kms_uri="kms.evil"), {}, DomainMismatch),
        (_response(KmsInit(replace(cert, kms_uri="kms.evil"))), {}, DomainMismatch),
        (_response(KmsInit(replace(cert, role="External"))), {}, DomainMismatch),
        (_response(KmsInit(cert), user_uri=BOB), {}, WrongAddressee),
        (_response(KmsInit(cert), time=NOW - timedelta(hours=1)), {}, StaleResponse),
        (_response(KmsInit(cert)), {"not_before": NOW}, StaleResponse),
        (_response(KmsInit(replace(cert, revoked=True))), {}, InvalidKeys),
        (_response(KmsInit(replace(cert, valid_from=NOW + timedelta(days=1)))), {}, StaleResponse),
        (_response(KmsInit(replace(cert, user_id_format="1"))), {}, InvalidKeys),
        (_response(KmsInit(replace(cert, parameter_set=2))), {}, InvalidKeys),
        (_response(KmsInit(replace(cert, pub_enc_key=bad_z))), {}, InvalidKeys),
        (_response(KmsInit(replace(cert, pub_auth_key=bad_kpak))), {}, InvalidKeys),
        (_response(KmsKeyProv(())), {}, UnexpectedMessage),
    ]
    for response, options, error in cases:
        with pytest.raises(error):
            check(response, **options)


def _partner(name: str, **changes: Any) -> KmsCertificate:
    """An External KMS certificate (the RFC 6507/6508 example points: valid, of another KMS than ours)."""
    fields: dict[str, Any] = {
        "kms_uri": f"kms.{name}",
        "role": "External",
        "kms_domains": (name,),
        "valid_from": datetime(2025, 1, 1, tzinfo=UTC),
        "valid_to": datetime(2027, 1, 1, tzinfo=UTC),
    }
    return _cert(**(fields | changes))


def _cache(*certificates: KmsCertificate, **changes: Any) -> KmsResponse:
    return _response(KmsCertCache(certificates, cache_num=3), **changes)


def _check_cache(response: KmsResponse, **options: Any) -> list[KmsCertificate]:
    kwargs: dict[str, Any] = {"expected_kms_uri": KMS_URI, "expected_user_uri": ALICE, "now": NOW}
    kwargs.update(options)
    return check_cert_cache(response, **kwargs)


def test_check_cert_cache(domain: Domain, signer: Identity, caplog: pytest.LogCaptureFixture) -> None:
    partner, third = _partner("partner.org"), _partner("third.net", kms_domains=())
    caplog.set_level(logging.DEBUG, logger="ptt.kmsformat")
    # our own (Root) certificate is skipped: the own KMS comes from init and the enrolment, never from the cache
    assert _check_cache(_cache(domain.certificate, partner, third)) == [partner, third]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _check_cache(_cache(domain.certificate)) == []
    assert _check_cache(_cache()) == []
    # after a trip through signed XML
    data = sign_response(_cache(third, domain.certificate, partner), signer.key, signer.cert)
    assert _check_cache(verify_signed_response(data, signer.cert)) == [third, partner]
    # a second certificate for the same KMS: the first is kept
    caplog.clear()
    replaced = replace(partner, kms_domains=("partner.com",))
    assert _check_cache(_cache(partner, replaced)) == [partner]
    assert "second certificate of KMS kms.partner.org" in caplog.text


def test_check_cert_cache_skips_unusable_certificates(caplog: pytest.LogCaptureFixture) -> None:
    good = _partner("partner.org")
    bad_z = good.pub_enc_key[:-1] + bytes([good.pub_enc_key[-1] ^ 1])
    bad_kpak = good.pub_auth_key[:-1] + bytes([good.pub_auth_key[-1] ^ 1])
    unusable = {
        "revoked": _partner("revoked.org", revoked=True),
        "expired": _partner("expired.org", valid_to=NOW - timedelta(seconds=1)),
        "not valid before": _partner("future.org", valid_from=NOW + timedelta(days=1)),
        "not a SAKKE curve point": _partner("bad-z.org", pub_enc_key=bad_z),
        "not a P-256 point": _partner("bad-kpak.org", pub_auth_key=bad_kpak),
        "UserIdFormat": _partner("format.org", user_id_format="1"),
        "ParameterSet": _partner("params.org", parameter_set=2),
    }
    caplog.set_level(logging.WARNING, logger="ptt.kmsformat")
    assert _check_cache(_cache(*unusable.values(), good)) == [good]
    for reason, certificate in unusable.items():
        [line] = [r.getMessage() for r in caplog.records if certificate.kms_uri in r.getMessage()]
        assert reason in line, line
    # an unusable certificate does not shadow a usable one of the same KMS after it
    revoked = replace(good, revoked=True)
    assert _check_cache(_cache(revoked, good)) == [good]


def test_check_cert_cache_refuses(domain: Domain) -> None:
    partner = _partner("partner.org")
    cases: list[tuple[KmsResponse, dict[str, Any], type[ProvisioningRejected], str]] = [
        (_response(error=KmsError(403, "not authorised")), {}, KmsErrorResponse, "not authorised"),
        (_cache(partner, kms_uri="kms.evil"), {}, DomainMismatch, "kms.evil"),
        (_cache(partner, user_uri=BOB), {}, WrongAddressee, "bob"),
        (_cache(partner, time=NOW - timedelta(minutes=6)), {}, StaleResponse, "older"),
        (_cache(partner, time=NOW + timedelta(minutes=6)), {}, StaleResponse, "later"),
        (_cache(partner), {"not_before": NOW}, StaleResponse, "replayed"),
        (_response(KmsInit(domain.certificate)), {}, UnexpectedMessage, "KmsCertCache"),
        (_response(KmsKeyProv(())), {}, UnexpectedMessage, "KmsCertCache"),
        (_response(), {}, UnexpectedMessage, "KmsCertCache"),
    ]
    for response, options, error, message in cases:
        with pytest.raises(error, match=message):
            _check_cache(response, **options)
    assert _check_cache(_cache(partner), not_before=NOW - timedelta(seconds=1)) == [partner]


# --- Enrolment ---


def test_enrolment_round_trip(signer: Identity) -> None:
    tls = _make_identity("127.0.0.1")
    enrolment = Enrolment(
        kms_uri=KMS_URI,
        base_url="https://127.0.0.1:8443",
        tls_cert_pem=tls.cert.public_bytes(Encoding.PEM),
        signing_cert_pem=signer.cert.public_bytes(Encoding.PEM),
        certificate=_full_cert(),
    )
    data = enrolment.to_json()
    assert Enrolment.from_json(data) == enrolment
    assert enrolment.signing_cert == signer.cert and enrolment.tls_cert == tls.cert
    document = data.decode()
    for bad in (
        b"not json",
        b"[]",
        document.replace("ptt-kms-enrolment/1", "other").encode(),
        document.replace('"https://127.0.0.1:8443"', '"http://127.0.0.1:8443"').encode(),
        document.replace(f'"kms_uri": "{KMS_URI}"', '"kms_uri": "kms.evil"').encode(),
        document.replace('"base_url"', '"base"').encode(),
        re.sub(r'"tls_cert_pem": "[^"]*"', '"tls_cert_pem": "garbage"', document).encode(),
        b"[" * 100000 + b"]" * 100000,
    ):
        with pytest.raises((MalformedEnrolment, MalformedKmsXml)):
            Enrolment.from_json(bad)
    with pytest.raises(MalformedKmsXml):
        Enrolment.from_json(document.replace("<PubAuthKey>04", "<PubAuthKey>").encode())
