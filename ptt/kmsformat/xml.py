"""XML encoding of the TS 33.180 Annex D KMS interface (namespace ``urn:3gpp:ns:mcsecKMSInterface:1.0``).

Documents are built in the element order of the Annex D schema (D.2.2 KmsRequest, D.2.3 KmsResponse, D.3.2.2
KmsCertificate, and the KmsKeySet, KmsCertCache and Error types) and parsed strictly: a hardened parser (no DTD,
no entities, no network, bounded size), elements of our namespace in schema order with their cardinalities, elements
of other namespaces (the schema's ``xsd:any ##other`` extension points, e.g. ``ds:Signature``) skipped, keys as
hexBinary of the exact length, times as xsd:dateTime (naive ones taken as UTC, ours written with ``Z``).

Parsing never establishes trust: signed documents are checked by ``ptt.kmsformat.signing``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from lxml import etree

from ptt.kmsformat.model import (
    NAMESPACE,
    PUB_AUTH_KEY_LENGTH,
    PUB_ENC_KEY_LENGTH,
    PVT_LENGTH,
    RSK_LENGTH,
    SSK_LENGTH,
    USER_ID_LENGTH,
    KmsCertCache,
    KmsCertificate,
    KmsError,
    KmsFormatError,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsRequest,
    KmsResponse,
    MalformedKmsXml,
    as_utc,
)

__all__ = [
    "DS_NAMESPACE",
    "MAX_XML_SIZE",
    "XSI_NAMESPACE",
    "build_response_element",
    "certificate_to_xml",
    "parse_certificate",
    "parse_document",
    "parse_request",
    "parse_response",
    "request_to_xml",
    "response_from_element",
    "response_to_xml",
]

MAX_XML_SIZE = 256 * 1024
"""Largest document accepted (a key provisioning response with two key sets is about 3 KiB)."""

XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
DS_NAMESPACE = "http://www.w3.org/2000/09/xmldsig#"

_MESSAGE_VERSION = "1.0.0"  # KmsInit / KmsKeyProv / KmsCertCache Version (fixed in the schema for the last two)
_REQUEST_VERSION = "1.1.0"  # KmsRequest Version (fixed in the schema)
_XSI_TYPE = f"{{{XSI_NAMESPACE}}}type"

_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_INT_RE = re.compile(r"[0-9]{1,20}\Z")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})*\Z")
_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?(Z|[+-]\d{2}:\d{2})?\Z",
)

Element = Any  # lxml ships no type information; elements are lxml.etree._Element


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _local(element: Element) -> str:
    return str(etree.QName(element).localname)


@contextmanager
def _as_malformed() -> Iterator[None]:
    """Model-level validation failures (wrong key length...) of parsed input are malformed XML."""
    try:
        yield
    except MalformedKmsXml:
        raise
    except (KmsFormatError, ValueError, OverflowError) as exc:
        raise MalformedKmsXml(str(exc)) from exc


# --- Hardened parsing ---


def parse_document(data: bytes) -> Element:
    """Parse untrusted XML: bounded size, no DOCTYPE (so no entities, billion laughs or external entities), no network.

    Returns the root element; raises ``MalformedKmsXml``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedKmsXml("XML input must be bytes")
    data = bytes(data)
    if len(data) > MAX_XML_SIZE:
        raise MalformedKmsXml(f"XML document larger than {MAX_XML_SIZE} octets")
    if _DTD_RE.search(data):
        raise MalformedKmsXml("XML document with a DOCTYPE or entity declaration")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser=parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise MalformedKmsXml(f"not well-formed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise MalformedKmsXml("XML document with a DOCTYPE")
    if any(True for _ in root.iter(etree.Entity)):
        raise MalformedKmsXml("XML document with entity references")
    return root


class _Children:
    """The element children of a complex element, consumed in schema order.

    Elements of other namespaces (the schema's ``xsd:any namespace="##other"``) are skipped; comments are ignored;
    text outside the children is refused.
    """

    def __init__(self, element: Element) -> None:
        self._name = _local(element)
        if (element.text or "").strip() or any((child.tail or "").strip() for child in element):
            raise MalformedKmsXml(f"{self._name}: unexpected text content")
        self._items = [c for c in element if isinstance(c.tag, str) and c.tag.startswith(f"{{{NAMESPACE}}}")]
        self._pos = 0

    def optional(self, name: str) -> Element | None:
        if self._pos < len(self._items) and self._items[self._pos].tag == _q(name):
            self._pos += 1
            return self._items[self._pos - 1]
        return None

    def required(self, name: str) -> Element:
        element = self.optional(name)
        if element is None:
            raise MalformedKmsXml(f"{self._name}: missing {name}" + self._found())
        return element

    def many(self, name: str) -> list[Element]:
        found = []
        while (element := self.optional(name)) is not None:
            found.append(element)
        return found

    def end(self) -> None:
        if self._pos < len(self._items):
            raise MalformedKmsXml(f"{self._name}: unexpected {_local(self._items[self._pos])}")

    def _found(self) -> str:
        return f" (found {_local(self._items[self._pos])})" if self._pos < len(self._items) else ""


def _text(element: Element) -> str:
    """Text of a simple element (comments inside it do not split it); child elements are refused."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str):
            raise MalformedKmsXml(
                f"{_local(element)}: child elements are not supported here (e.g. encrypted key content)"
            )
        parts.append(child.tail or "")
    return "".join(parts)


def _token(element: Element) -> str:
    return _text(element).strip()


def _opt_token(element: Element | None) -> str | None:
    return None if element is None else _token(element)


def _int(element: Element) -> int:
    text = _token(element)
    if not _INT_RE.match(text):
        raise MalformedKmsXml(f"{_local(element)}: not a non-negative decimal integer: {text[:40]!r}")
    return int(text)


def _opt_int(element: Element | None) -> int | None:
    return None if element is None else _int(element)


def _bool(element: Element) -> bool:
    text = _token(element)
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise MalformedKmsXml(f"{_local(element)}: not an xsd:boolean: {text[:40]!r}")


def _opt_bool(element: Element | None) -> bool | None:
    return None if element is None else _bool(element)


def _hex(element: Element, length: int) -> bytes:
    text = _token(element)
    if len(text) != 2 * length or not _HEX_RE.match(text):
        raise MalformedKmsXml(f"{_local(element)}: expected {length} octets of hex, got {len(text)} characters")
    return bytes.fromhex(text)


def _time_from_text(text: str, name: str) -> datetime:
    match = _TIME_RE.match(text)
    if not match:
        raise MalformedKmsXml(f"{name}: not an xsd:dateTime: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if zone in (None, "Z"):
            tz = UTC
        else:
            sign = -1 if zone[0] == "-" else 1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            if offset >= timedelta(hours=24):
                raise ValueError("time zone offset out of range")
            tz = timezone(sign * offset)
        value = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise MalformedKmsXml(f"{name}: invalid date-time {text[:40]!r}: {exc}") from exc


def _time(element: Element) -> datetime:
    return _time_from_text(_token(element), _local(element))


def _opt_time(element: Element | None) -> datetime | None:
    return None if element is None else _time(element)


def _key(element: Element, length: int) -> bytes:
    xsi_type = element.get(_XSI_TYPE)
    if xsi_type is not None and xsi_type.rpartition(":")[2] != "KeyContentType":
        raise MalformedKmsXml(f"{_local(element)}: key content type {xsi_type!r} is not supported (only plaintext)")
    return _hex(element, length)


def _root(data: bytes, names: tuple[str, ...]) -> Element:
    root = parse_document(data)
    if root.tag not in tuple(_q(n) for n in names):
        raise MalformedKmsXml(f"expected {' or '.join(names)} in {NAMESPACE}, got {root.tag!r}")
    return root


# --- Writing helpers ---


def _format_time(value: datetime) -> str:
    v = as_utc(value)
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        text += "." + f"{v.microsecond:06d}".rstrip("0")
    return text + "Z"


def _sub(parent: Element, name: str, text: str | None) -> Element:
    element = etree.SubElement(parent, _q(name))
    if text is not None:
        try:
            element.text = text
        except ValueError as exc:  # characters XML cannot carry
            raise KmsFormatError(f"{name}: {exc}") from exc
    return element


def _opt_sub(parent: Element, name: str, value: str | None) -> None:
    if value is not None:
        _sub(parent, name, value)


def _format_bool(value: bool) -> str:
    return "true" if value else "false"


def _serialize(root: Element) -> bytes:
    etree.indent(root, space="  ")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _new_root(name: str, *, xsi: bool = False) -> Element:
    nsmap = {None: NAMESPACE, "xsi": XSI_NAMESPACE} if xsi else {None: NAMESPACE}
    return etree.Element(_q(name), nsmap=nsmap)


# --- KmsCertificate (D.3.2.2) ---


def _certificate_into(parent: Element | None, cert: KmsCertificate) -> Element:
    element = _new_root("KmsCertificate") if parent is None else etree.SubElement(parent, _q("KmsCertificate"))
    element.set("Version", cert.version)
    element.set("Role", cert.role)
    _opt_sub(element, "CertUri", cert.cert_uri)
    _sub(element, "KmsUri", cert.kms_uri)
    _opt_sub(element, "Issuer", cert.issuer)
    _opt_sub(element, "ValidFrom", None if cert.valid_from is None else _format_time(cert.valid_from))
    _opt_sub(element, "ValidTo", None if cert.valid_to is None else _format_time(cert.valid_to))
    _opt_sub(element, "Revoked", None if cert.revoked is None else _format_bool(cert.revoked))
    _sub(element, "UserIdFormat", cert.user_id_format)
    _sub(element, "UserKeyPeriod", str(cert.user_key_period))
    _sub(element, "UserKeyOffset", str(cert.user_key_offset))
    _sub(element, "PubEncKey", cert.pub_enc_key.hex().upper())
    _sub(element, "PubAuthKey", cert.pub_auth_key.hex().upper())
    _opt_sub(element, "ParameterSet", None if cert.parameter_set is None else str(cert.parameter_set))
    if cert.kms_domains:
        domains = _sub(element, "KmsDomainList", None)
        for domain in cert.kms_domains:
            _sub(domains, "KmsDomain", domain)
    return element


def _certificate_from(element: Element) -> KmsCertificate:
    c = _Children(element)
    cert_uri = _opt_token(c.optional("CertUri"))
    kms_uri = _token(c.required("KmsUri"))
    issuer = _opt_token(c.optional("Issuer"))
    valid_from = _opt_time(c.optional("ValidFrom"))
    valid_to = _opt_time(c.optional("ValidTo"))
    revoked = _opt_bool(c.optional("Revoked"))
    user_id_format = _token(c.required("UserIdFormat"))
    user_key_period = _int(c.required("UserKeyPeriod"))
    user_key_offset = _int(c.required("UserKeyOffset"))
    pub_enc_key = _hex(c.required("PubEncKey"), PUB_ENC_KEY_LENGTH)
    pub_auth_key = _hex(c.required("PubAuthKey"), PUB_AUTH_KEY_LENGTH)
    parameter_set = _opt_int(c.optional("ParameterSet"))
    domain_list = c.optional("KmsDomainList")
    c.end()
    kms_domains: tuple[str, ...] = ()
    if domain_list is not None:
        d = _Children(domain_list)
        kms_domains = tuple(_token(e) for e in d.many("KmsDomain"))
        d.end()
        if not kms_domains:
            raise MalformedKmsXml("KmsDomainList: no KmsDomain")
    return KmsCertificate(
        kms_uri=kms_uri,
        user_key_period=user_key_period,
        user_key_offset=user_key_offset,
        pub_enc_key=pub_enc_key,
        pub_auth_key=pub_auth_key,
        user_id_format=user_id_format,
        cert_uri=cert_uri,
        issuer=issuer,
        valid_from=valid_from,
        valid_to=valid_to,
        revoked=revoked,
        parameter_set=parameter_set,
        version=element.get("Version", "1.1.0"),
        role=element.get("Role", "Root"),
        kms_domains=kms_domains,
    )


def _certificate_or_signed(children: _Children) -> KmsCertificate | None:
    """A KmsCertificate, or the one inside a SignedKmsCertificate (whose own signature is not checked here)."""
    signed = children.optional("SignedKmsCertificate")
    if signed is not None:
        inner = _Children(signed)
        cert = _certificate_from(inner.required("KmsCertificate"))
        inner.end()
        return cert
    element = children.optional("KmsCertificate")
    return None if element is None else _certificate_from(element)


def certificate_to_xml(cert: KmsCertificate) -> bytes:
    """A standalone ``<KmsCertificate>`` document (D.3.2.2), as published in a certificate cache or trust domain."""
    return _serialize(_certificate_into(None, cert))


def parse_certificate(data: bytes) -> KmsCertificate:
    """Parse a standalone ``<KmsCertificate>`` (or ``<SignedKmsCertificate>``, its signature not checked)."""
    root = _root(data, ("KmsCertificate", "SignedKmsCertificate"))
    with _as_malformed():
        if root.tag == _q("KmsCertificate"):
            return _certificate_from(root)
        children = _Children(root)
        cert = _certificate_from(children.required("KmsCertificate"))
        children.end()
        return cert


# --- KmsKeySet ---


def _key_set_into(parent: Element, ks: KmsKeySet) -> None:
    element = etree.SubElement(parent, _q("KmsKeySet"))
    element.set("Version", ks.version)
    _sub(element, "KmsUri", ks.kms_uri)
    _opt_sub(element, "CertUri", ks.cert_uri)
    _opt_sub(element, "Issuer", ks.issuer)
    _sub(element, "UserUri", ks.user_uri)
    _sub(element, "UserID", ks.user_id.hex())  # xsd:string; lower case as in the vendor sample
    _opt_sub(element, "ValidFrom", None if ks.valid_from is None else _format_time(ks.valid_from))
    _opt_sub(element, "ValidTo", None if ks.valid_to is None else _format_time(ks.valid_to))
    _sub(element, "KeyPeriodNo", str(ks.key_period_no))
    _opt_sub(element, "Revoked", None if ks.revoked is None else _format_bool(ks.revoked))
    # abstractKeyContentType: the plaintext form is xsi:type KeyContentType (the vendor sample omits the xsi:type,
    # which the schema does not allow; we accept both).
    for name, key in (("UserDecryptKey", ks.rsk), ("UserSigningKeySSK", ks.ssk), ("UserPubTokenPVT", ks.pvt)):
        _sub(element, name, key.hex().upper()).set(_XSI_TYPE, "KeyContentType")


def _key_set_from(element: Element) -> KmsKeySet:
    c = _Children(element)
    kms_uri = _token(c.required("KmsUri"))
    cert_uri = _opt_token(c.optional("CertUri"))
    issuer = _opt_token(c.optional("Issuer"))
    user_uri = _token(c.required("UserUri"))
    user_id = _hex(c.required("UserID"), USER_ID_LENGTH)
    valid_from = _opt_time(c.optional("ValidFrom"))
    valid_to = _opt_time(c.optional("ValidTo"))
    key_period_no = _int(c.required("KeyPeriodNo"))
    revoked = _opt_bool(c.optional("Revoked"))
    rsk = _key(c.required("UserDecryptKey"), RSK_LENGTH)
    ssk = _key(c.required("UserSigningKeySSK"), SSK_LENGTH)
    pvt = _key(c.required("UserPubTokenPVT"), PVT_LENGTH)
    c.end()
    return KmsKeySet(
        kms_uri=kms_uri,
        user_uri=user_uri,
        user_id=user_id,
        key_period_no=key_period_no,
        rsk=rsk,
        ssk=ssk,
        pvt=pvt,
        valid_from=valid_from,
        valid_to=valid_to,
        revoked=revoked,
        cert_uri=cert_uri,
        issuer=issuer,
        version=element.get("Version", "1.1.0"),
    )


# --- KmsMessage and KmsError ---


def _message_into(parent: Element, message: KmsInit | KmsKeyProv | KmsCertCache) -> None:
    container = _sub(parent, "KmsMessage", None)
    if isinstance(message, KmsInit):
        element = etree.SubElement(container, _q("KmsInit"))
        element.set("Version", _MESSAGE_VERSION)
        element.set(_XSI_TYPE, "KmsInitTkIkType")
        _certificate_into(element, message.certificate)
    elif isinstance(message, KmsKeyProv):
        element = etree.SubElement(container, _q("KmsKeyProv"))
        element.set("Version", _MESSAGE_VERSION)
        element.set(_XSI_TYPE, "KmsKeyProvTkIkType")
        for key_set in message.key_sets:
            _key_set_into(element, key_set)
    elif isinstance(message, KmsCertCache):
        element = etree.SubElement(container, _q("KmsCertCache"))
        element.set("Version", _MESSAGE_VERSION)
        if message.cache_num is not None:
            element.set("CacheNum", str(message.cache_num))
        for cert in message.certificates:
            _certificate_into(element, cert)
    else:
        raise KmsFormatError(f"unknown KMS message {type(message).__name__}")


def _message_from(element: Element) -> KmsInit | KmsKeyProv | KmsCertCache:
    c = _Children(element)
    result: KmsInit | KmsKeyProv | KmsCertCache
    if (init := c.optional("KmsInit")) is not None:
        ic = _Children(init)
        cert = _certificate_or_signed(ic)
        if cert is None:
            raise MalformedKmsXml("KmsInit: missing KmsCertificate")
        # KmsInitTkIkType: new transport / integrity keys (encrypted key content) are not supported and ignored.
        ic.many("NewTransportKey")
        ic.many("NewIntegrityKey")
        ic.end()
        result = KmsInit(cert)
    elif (prov := c.optional("KmsKeyProv")) is not None:
        pc = _Children(prov)
        key_sets = tuple(_key_set_from(e) for e in pc.many("KmsKeySet"))
        pc.many("NewTransportKey")
        pc.many("NewIntegrityKey")
        pc.end()
        result = KmsKeyProv(key_sets)
    elif (cache := c.optional("KmsCertCache")) is not None:
        cc = _Children(cache)
        certs = []
        while (cert := _certificate_or_signed(cc)) is not None:
            certs.append(cert)
        cc.end()
        cache_num = cache.get("CacheNum")
        if cache_num is not None and not _INT_RE.match(cache_num.strip()):
            raise MalformedKmsXml("KmsCertCache: CacheNum is not a non-negative integer")
        result = KmsCertCache(tuple(certs), None if cache_num is None else int(cache_num))
    else:
        raise MalformedKmsXml("KmsMessage: no KmsInit, KmsKeyProv or KmsCertCache")
    c.end()
    return result


def _error_from(element: Element) -> KmsError:
    c = _Children(element)
    code = _int(c.required("ErrorCode"))
    message = _text(c.required("ErrorMsg"))
    c.end()
    return KmsError(code, message)


# --- KmsResponse (D.2.3) ---


def build_response_element(response: KmsResponse) -> Element:
    """The unindented ``<KmsResponse>`` element (what ``sign_response`` wraps and signs)."""
    root = _new_root("KmsResponse", xsi=True)
    root.set("Id", response.response_id)
    _sub(root, "UserUri", response.user_uri)
    _sub(root, "KmsUri", response.kms_uri)
    _sub(root, "Time", _format_time(response.time))
    _opt_sub(root, "KmsId", response.kms_id)
    _sub(root, "ClientReqUrl", response.client_req_url)
    if response.message is not None:
        _message_into(root, response.message)
    if response.error is not None:
        error = _sub(root, "KmsError", None)
        _sub(error, "ErrorCode", str(response.error.code))
        _sub(error, "ErrorMsg", response.error.message)
    return root


def response_from_element(element: Element) -> KmsResponse:
    """A ``<KmsResponse>`` element → ``KmsResponse`` (raises ``MalformedKmsXml``)."""
    if element.tag != _q("KmsResponse"):
        raise MalformedKmsXml(f"expected KmsResponse, got {element.tag!r}")
    with _as_malformed():
        c = _Children(element)
        user_uri = _token(c.required("UserUri"))
        kms_uri = _token(c.required("KmsUri"))
        time = _time(c.required("Time"))
        kms_id = _opt_token(c.optional("KmsId"))
        client_req_url = _token(c.required("ClientReqUrl"))
        message_element = c.optional("KmsMessage")
        message = None if message_element is None else _message_from(message_element)
        error_element = c.optional("KmsError")
        error = None if error_element is None else _error_from(error_element)
        c.end()
        return KmsResponse(
            user_uri=user_uri,
            kms_uri=kms_uri,
            time=time,
            client_req_url=client_req_url,
            message=message,
            error=error,
            kms_id=kms_id,
            response_id=element.get("Id", "xmldoc"),
        )


def response_to_xml(response: KmsResponse) -> bytes:
    """An unsigned ``<KmsResponse>`` document (D.2.3) with ``Id`` = ``response.response_id``."""
    return _serialize(build_response_element(response))


def parse_response(data: bytes) -> KmsResponse:
    """Parse a ``<KmsResponse>`` or the response inside a ``<SignedKmsResponse>``.

    The signature, if any, is NOT checked: use this only to inspect; trust comes from ``verify_signed_response``.
    """
    root = _root(data, ("KmsResponse", "SignedKmsResponse"))
    if root.tag == _q("SignedKmsResponse"):
        children = _Children(root)
        inner = children.required("KmsResponse")
        children.end()
        return response_from_element(inner)
    return response_from_element(root)


# --- KmsRequest (D.2.2) ---


def request_to_xml(request: KmsRequest) -> bytes:
    """A ``<KmsRequest>`` document (D.2.2)."""
    root = _new_root("KmsRequest")
    root.set("Version", _REQUEST_VERSION)
    _sub(root, "UserUri", request.user_uri)
    _sub(root, "KmsUri", request.kms_uri)
    _sub(root, "Time", _format_time(request.time))
    _opt_sub(root, "ClientId", request.client_id)
    _opt_sub(root, "DeviceId", request.device_id)
    _sub(root, "ClientReqUrl", request.client_req_url)
    return _serialize(root)


def parse_request(data: bytes) -> KmsRequest:
    """Parse a ``<KmsRequest>`` or the request inside a ``<SignedKmsRequest>`` (signature not checked).

    KrrList and ClientError are accepted and ignored.
    """
    root = _root(data, ("KmsRequest", "SignedKmsRequest"))
    with _as_malformed():
        if root.tag == _q("SignedKmsRequest"):
            outer = _Children(root)
            root = outer.required("KmsRequest")
            outer.end()
        c = _Children(root)
        user_uri = _token(c.required("UserUri"))
        kms_uri = _token(c.required("KmsUri"))
        time = _time(c.required("Time"))
        client_id = _opt_token(c.optional("ClientId"))
        device_id = _opt_token(c.optional("DeviceId"))
        client_req_url = _token(c.required("ClientReqUrl"))
        c.optional("KrrList")
        c.optional("ClientError")
        c.end()
        return KmsRequest(
            user_uri=user_uri,
            kms_uri=kms_uri,
            time=time,
            client_req_url=client_req_url,
            client_id=client_id,
            device_id=device_id,
        )
