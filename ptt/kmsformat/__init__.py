"""The 3GPP TS 33.180 Annex D KMS interface: message model, XML, XML-DSig, client-side checks, enrolment.

Pure (no sockets, files or clock: time is passed in). ``server.kms`` builds and signs responses with it;
``client`` verifies (``verify_signed_response``) and checks (``check_init``, ``check_key_prov``,
``check_cert_cache``) them.
"""

from __future__ import annotations

from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import (
    NAMESPACE,
    DomainMismatch,
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
)
from ptt.kmsformat.signing import sign_response, verify_signed_response
from ptt.kmsformat.validation import (
    check_cert_cache,
    check_certificate,
    check_init,
    check_key_prov,
    check_key_set,
)
from ptt.kmsformat.xml import (
    MAX_XML_SIZE,
    certificate_to_xml,
    parse_certificate,
    parse_request,
    parse_response,
    request_to_xml,
    response_to_xml,
)

__all__ = [
    "MAX_XML_SIZE",
    "NAMESPACE",
    "DomainMismatch",
    "Enrolment",
    "InvalidKeys",
    "KmsCertCache",
    "KmsCertificate",
    "KmsError",
    "KmsErrorResponse",
    "KmsFormatError",
    "KmsInit",
    "KmsKeyProv",
    "KmsKeySet",
    "KmsRequest",
    "KmsResponse",
    "MalformedEnrolment",
    "MalformedKmsXml",
    "ProvisioningRejected",
    "SignatureInvalid",
    "StaleResponse",
    "UnexpectedMessage",
    "Unsigned",
    "WrongAddressee",
    "certificate_to_xml",
    "check_cert_cache",
    "check_certificate",
    "check_init",
    "check_key_prov",
    "check_key_set",
    "parse_certificate",
    "parse_request",
    "parse_response",
    "request_to_xml",
    "response_to_xml",
    "sign_response",
    "verify_signed_response",
]
