"""XML encoding of the TS 33.180 Annex D KMS interface (namespace ``urn:3gpp:ns:mcsecKMSInterface:1.0``).

Documents are built in the element order of the Annex D schema (D.2.2 KmsRequest, D.2.3 KmsResponse, D.3.2.2
KmsCertificate, and the KmsKeySet, KmsCertCache and Error types) and parsed strictly: a hardened parser (no DTD,
no entities, no network, bounded size), elements of our namespace in schema order with their cardinalities, elements
of other namespaces (the schema's ``xsd:any ##other`` extension points, e.g. ``ds:Signature``) skipped, keys as
hexBinary of the exact length, times as xsd:dateTime (naive ones taken as UTC, ours written with ``Z``).

Parsing never establishes trust: signed documents are checked by ``ptt.kmsformat.signing``.
"""

from __future__ import annotations

from lxml import etree

from ptt.kmsformat.certxml import certificate_into, certificate_or_signed, certificate_to_xml, parse_certificate
from ptt.kmsformat.model import (
    PVT_LENGTH,
    RSK_LENGTH,
    SSK_LENGTH,
    USER_ID_LENGTH,
    KmsCertCache,
    KmsError,
    KmsFormatError,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsRequest,
    KmsResponse,
    MalformedKmsXml,
)
from ptt.kmsformat.xmlparser import (
    DS_NAMESPACE,
    INT_RE,
    MAX_XML_SIZE,
    XSI_NAMESPACE,
    XSI_TYPE,
    Children,
    Element,
    as_malformed,
    format_bool,
    format_time,
    hex_of,
    int_of,
    key_of,
    new_root,
    opt_bool_of,
    opt_sub_element,
    opt_time_of,
    opt_token_of,
    parse_document,
    qualified,
    root_of,
    serialize,
    sub_element,
    text_of,
    time_of,
    token_of,
)

__all__ = [
    "DS_NAMESPACE",
    "MAX_XML_SIZE",
    "XSI_NAMESPACE",
    "Element",
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

_MESSAGE_VERSION = "1.0.0"  # KmsInit / KmsKeyProv / KmsCertCache Version (fixed in the schema for the last two)
_REQUEST_VERSION = "1.1.0"  # KmsRequest Version (fixed in the schema)

# --- KmsKeySet ---


def _key_set_into(parent: Element, ks: KmsKeySet) -> None:
    element = etree.SubElement(parent, qualified("KmsKeySet"))
    element.set("Version", ks.version)
    sub_element(element, "KmsUri", ks.kms_uri)
    opt_sub_element(element, "CertUri", ks.cert_uri)
    opt_sub_element(element, "Issuer", ks.issuer)
    sub_element(element, "UserUri", ks.user_uri)
    sub_element(element, "UserID", ks.user_id.hex())  # xsd:string; lower case as in the vendor sample
    opt_sub_element(element, "ValidFrom", None if ks.valid_from is None else format_time(ks.valid_from))
    opt_sub_element(element, "ValidTo", None if ks.valid_to is None else format_time(ks.valid_to))
    sub_element(element, "KeyPeriodNo", str(ks.key_period_no))
    opt_sub_element(element, "Revoked", None if ks.revoked is None else format_bool(ks.revoked))
    # abstractKeyContentType: the plaintext form is xsi:type KeyContentType (the vendor sample omits the xsi:type,
    # which the schema does not allow; we accept both).
    for name, key in (("UserDecryptKey", ks.rsk), ("UserSigningKeySSK", ks.ssk), ("UserPubTokenPVT", ks.pvt)):
        sub_element(element, name, key.hex().upper()).set(XSI_TYPE, "KeyContentType")


def _key_set_from(element: Element) -> KmsKeySet:
    c = Children(element)
    kms_uri = token_of(c.required("KmsUri"))
    cert_uri = opt_token_of(c.optional("CertUri"))
    issuer = opt_token_of(c.optional("Issuer"))
    user_uri = token_of(c.required("UserUri"))
    user_id = hex_of(c.required("UserID"), USER_ID_LENGTH)
    valid_from = opt_time_of(c.optional("ValidFrom"))
    valid_to = opt_time_of(c.optional("ValidTo"))
    key_period_no = int_of(c.required("KeyPeriodNo"))
    revoked = opt_bool_of(c.optional("Revoked"))
    rsk = key_of(c.required("UserDecryptKey"), RSK_LENGTH)
    ssk = key_of(c.required("UserSigningKeySSK"), SSK_LENGTH)
    pvt = key_of(c.required("UserPubTokenPVT"), PVT_LENGTH)
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
    container = sub_element(parent, "KmsMessage", None)
    if isinstance(message, KmsInit):
        element = etree.SubElement(container, qualified("KmsInit"))
        element.set("Version", _MESSAGE_VERSION)
        element.set(XSI_TYPE, "KmsInitTkIkType")
        certificate_into(element, message.certificate)
    elif isinstance(message, KmsKeyProv):
        element = etree.SubElement(container, qualified("KmsKeyProv"))
        element.set("Version", _MESSAGE_VERSION)
        element.set(XSI_TYPE, "KmsKeyProvTkIkType")
        for key_set in message.key_sets:
            _key_set_into(element, key_set)
    elif isinstance(message, KmsCertCache):
        element = etree.SubElement(container, qualified("KmsCertCache"))
        element.set("Version", _MESSAGE_VERSION)
        if message.cache_num is not None:
            element.set("CacheNum", str(message.cache_num))
        for cert in message.certificates:
            certificate_into(element, cert)
    else:
        raise KmsFormatError(f"unknown KMS message {type(message).__name__}")


def _message_from(element: Element) -> KmsInit | KmsKeyProv | KmsCertCache:
    c = Children(element)
    result: KmsInit | KmsKeyProv | KmsCertCache
    if (init := c.optional("KmsInit")) is not None:
        ic = Children(init)
        cert = certificate_or_signed(ic)
        if cert is None:
            raise MalformedKmsXml("KmsInit: missing KmsCertificate")
        # KmsInitTkIkType: new transport / integrity keys (encrypted key content) are not supported and ignored.
        ic.many("NewTransportKey")
        ic.many("NewIntegrityKey")
        ic.end()
        result = KmsInit(cert)
    elif (prov := c.optional("KmsKeyProv")) is not None:
        pc = Children(prov)
        key_sets = tuple(_key_set_from(e) for e in pc.many("KmsKeySet"))
        pc.many("NewTransportKey")
        pc.many("NewIntegrityKey")
        pc.end()
        result = KmsKeyProv(key_sets)
    elif (cache := c.optional("KmsCertCache")) is not None:
        cc = Children(cache)
        certs = []
        while (cert := certificate_or_signed(cc)) is not None:
            certs.append(cert)
        cc.end()
        cache_num = cache.get("CacheNum")
        if cache_num is not None and not INT_RE.match(cache_num.strip()):
            raise MalformedKmsXml("KmsCertCache: CacheNum is not a non-negative integer")
        result = KmsCertCache(tuple(certs), None if cache_num is None else int(cache_num))
    else:
        raise MalformedKmsXml("KmsMessage: no KmsInit, KmsKeyProv or KmsCertCache")
    c.end()
    return result


def _error_from(element: Element) -> KmsError:
    c = Children(element)
    code = int_of(c.required("ErrorCode"))
    message = text_of(c.required("ErrorMsg"))
    c.end()
    return KmsError(code, message)


# --- KmsResponse (D.2.3) ---


def build_response_element(response: KmsResponse) -> Element:
    """The unindented ``<KmsResponse>`` element (what ``sign_response`` wraps and signs)."""
    root = new_root("KmsResponse", xsi=True)
    root.set("Id", response.response_id)
    sub_element(root, "UserUri", response.user_uri)
    sub_element(root, "KmsUri", response.kms_uri)
    sub_element(root, "Time", format_time(response.time))
    opt_sub_element(root, "KmsId", response.kms_id)
    sub_element(root, "ClientReqUrl", response.client_req_url)
    if response.message is not None:
        _message_into(root, response.message)
    if response.error is not None:
        error = sub_element(root, "KmsError", None)
        sub_element(error, "ErrorCode", str(response.error.code))
        sub_element(error, "ErrorMsg", response.error.message)
    return root


def response_from_element(element: Element) -> KmsResponse:
    """A ``<KmsResponse>`` element → ``KmsResponse`` (raises ``MalformedKmsXml``)."""
    if element.tag != qualified("KmsResponse"):
        raise MalformedKmsXml(f"expected KmsResponse, got {element.tag!r}")
    with as_malformed():
        c = Children(element)
        user_uri = token_of(c.required("UserUri"))
        kms_uri = token_of(c.required("KmsUri"))
        time = time_of(c.required("Time"))
        kms_id = opt_token_of(c.optional("KmsId"))
        client_req_url = token_of(c.required("ClientReqUrl"))
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
    return serialize(build_response_element(response))


def parse_response(data: bytes) -> KmsResponse:
    """Parse a ``<KmsResponse>`` or the response inside a ``<SignedKmsResponse>``.

    The signature, if any, is NOT checked: use this only to inspect; trust comes from ``verify_signed_response``.
    """
    root = root_of(data, ("KmsResponse", "SignedKmsResponse"))
    if root.tag == qualified("SignedKmsResponse"):
        children = Children(root)
        inner = children.required("KmsResponse")
        children.end()
        return response_from_element(inner)
    return response_from_element(root)


# --- KmsRequest (D.2.2) ---


def request_to_xml(request: KmsRequest) -> bytes:
    """A ``<KmsRequest>`` document (D.2.2)."""
    root = new_root("KmsRequest")
    root.set("Version", _REQUEST_VERSION)
    sub_element(root, "UserUri", request.user_uri)
    sub_element(root, "KmsUri", request.kms_uri)
    sub_element(root, "Time", format_time(request.time))
    opt_sub_element(root, "ClientId", request.client_id)
    opt_sub_element(root, "DeviceId", request.device_id)
    sub_element(root, "ClientReqUrl", request.client_req_url)
    return serialize(root)


def parse_request(data: bytes) -> KmsRequest:
    """Parse a ``<KmsRequest>`` or the request inside a ``<SignedKmsRequest>`` (signature not checked).

    KrrList and ClientError are accepted and ignored.
    """
    root = root_of(data, ("KmsRequest", "SignedKmsRequest"))
    with as_malformed():
        if root.tag == qualified("SignedKmsRequest"):
            outer = Children(root)
            root = outer.required("KmsRequest")
            outer.end()
        c = Children(root)
        user_uri = token_of(c.required("UserUri"))
        kms_uri = token_of(c.required("KmsUri"))
        time = time_of(c.required("Time"))
        client_id = opt_token_of(c.optional("ClientId"))
        device_id = opt_token_of(c.optional("DeviceId"))
        client_req_url = token_of(c.required("ClientReqUrl"))
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
