"""The KMS certificate (TS 33.180 D.3.2.2) to and from XML, alone (the enrolment file, the keystore) or inside a
KMS message; parsed with the hardened parser of :mod:`ptt.kmsformat.xmlparser`.
"""

from __future__ import annotations

from lxml import etree

from ptt.kmsformat.model import (
    PUB_AUTH_KEY_LENGTH,
    PUB_ENC_KEY_LENGTH,
    KmsCertificate,
    MalformedKmsXml,
)
from ptt.kmsformat.xmlparser import (
    Children,
    Element,
    as_malformed,
    format_bool,
    format_time,
    hex_of,
    int_of,
    new_root,
    opt_bool_of,
    opt_int_of,
    opt_sub_element,
    opt_time_of,
    opt_token_of,
    qualified,
    root_of,
    serialize,
    sub_element,
    token_of,
)

# --- KmsCertificate (D.3.2.2) ---


def certificate_into(parent: Element | None, cert: KmsCertificate) -> Element:
    element = new_root("KmsCertificate") if parent is None else etree.SubElement(parent, qualified("KmsCertificate"))
    element.set("Version", cert.version)
    element.set("Role", cert.role)
    opt_sub_element(element, "CertUri", cert.cert_uri)
    sub_element(element, "KmsUri", cert.kms_uri)
    opt_sub_element(element, "Issuer", cert.issuer)
    opt_sub_element(element, "ValidFrom", None if cert.valid_from is None else format_time(cert.valid_from))
    opt_sub_element(element, "ValidTo", None if cert.valid_to is None else format_time(cert.valid_to))
    opt_sub_element(element, "Revoked", None if cert.revoked is None else format_bool(cert.revoked))
    sub_element(element, "UserIdFormat", cert.user_id_format)
    sub_element(element, "UserKeyPeriod", str(cert.user_key_period))
    sub_element(element, "UserKeyOffset", str(cert.user_key_offset))
    sub_element(element, "PubEncKey", cert.pub_enc_key.hex().upper())
    sub_element(element, "PubAuthKey", cert.pub_auth_key.hex().upper())
    opt_sub_element(element, "ParameterSet", None if cert.parameter_set is None else str(cert.parameter_set))
    if cert.kms_domains:
        domains = sub_element(element, "KmsDomainList", None)
        for domain in cert.kms_domains:
            sub_element(domains, "KmsDomain", domain)
    return element


def _certificate_from(element: Element) -> KmsCertificate:
    c = Children(element)
    cert_uri = opt_token_of(c.optional("CertUri"))
    kms_uri = token_of(c.required("KmsUri"))
    issuer = opt_token_of(c.optional("Issuer"))
    valid_from = opt_time_of(c.optional("ValidFrom"))
    valid_to = opt_time_of(c.optional("ValidTo"))
    revoked = opt_bool_of(c.optional("Revoked"))
    user_id_format = token_of(c.required("UserIdFormat"))
    user_key_period = int_of(c.required("UserKeyPeriod"))
    user_key_offset = int_of(c.required("UserKeyOffset"))
    pub_enc_key = hex_of(c.required("PubEncKey"), PUB_ENC_KEY_LENGTH)
    pub_auth_key = hex_of(c.required("PubAuthKey"), PUB_AUTH_KEY_LENGTH)
    parameter_set = opt_int_of(c.optional("ParameterSet"))
    domain_list = c.optional("KmsDomainList")
    c.end()
    kms_domains: tuple[str, ...] = ()
    if domain_list is not None:
        d = Children(domain_list)
        kms_domains = tuple(token_of(e) for e in d.many("KmsDomain"))
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


def certificate_or_signed(children: Children) -> KmsCertificate | None:
    """A KmsCertificate, or the one inside a SignedKmsCertificate (whose own signature is not checked here)."""
    signed = children.optional("SignedKmsCertificate")
    if signed is not None:
        inner = Children(signed)
        cert = _certificate_from(inner.required("KmsCertificate"))
        inner.end()
        return cert
    element = children.optional("KmsCertificate")
    return None if element is None else _certificate_from(element)


def certificate_to_xml(cert: KmsCertificate) -> bytes:
    """A standalone ``<KmsCertificate>`` document (D.3.2.2), as published in a certificate cache or trust domain."""
    return serialize(certificate_into(None, cert))


def parse_certificate(data: bytes) -> KmsCertificate:
    """Parse a standalone ``<KmsCertificate>`` (or ``<SignedKmsCertificate>``, its signature not checked)."""
    root = root_of(data, ("KmsCertificate", "SignedKmsCertificate"))
    with as_malformed():
        if root.tag == qualified("KmsCertificate"):
            return _certificate_from(root)
        children = Children(root)
        cert = _certificate_from(children.required("KmsCertificate"))
        children.end()
        return cert
