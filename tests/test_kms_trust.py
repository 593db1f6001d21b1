"""Which trusted KMS speaks for which identity (ptt/kmsformat/trust.py)."""

from __future__ import annotations

import pytest

from ptt.crypto import kms
from ptt.kmsformat.model import KmsCertificate
from ptt.kmsformat.trust import KmsTrust, uri_domain, user_domains
from ptt.mikey.imessage import KmsDomain


@pytest.fixture(scope="module")
def public_keys() -> tuple[bytes, bytes]:
    master = kms.generate_master_secrets()
    return master.kpak, master.z_public


def certificate(kms_uri: str, keys: tuple[bytes, bytes], domains: tuple[str, ...] = ()) -> KmsCertificate:
    return KmsCertificate(kms_uri, 2592000, 0, keys[1], keys[0], role="External", kms_domains=domains)


@pytest.mark.parametrize(
    ("uri", "domain"),
    [
        ("sip:alice@example.org", "example.org"),
        ("sip:Alice@Example.ORG.", "example.org"),
        ("sip:alice@example.org;transport=udp", "example.org"),
        ("sip:alice@example.org:5060", "example.org"),
        ("<sip:alice@example.org>", "example.org"),
        ("tel:+441234", ""),
        ("sip:a@b@ops.example.org", "ops.example.org"),
    ],
)
def test_uri_domain(uri: str, domain: str) -> None:
    assert uri_domain(uri) == domain


def test_user_domains_come_from_the_domain_list_or_the_kms_uri(public_keys: tuple[bytes, bytes]) -> None:
    assert user_domains(certificate("kms.partner.org", public_keys)) == ("partner.org",)
    assert user_domains(certificate("keys.partner.org", public_keys)) == ("keys.partner.org",)
    listed = certificate("kms.partner.org", public_keys, ("Partner.org", " ops.partner.net. "))
    assert user_domains(listed) == ("partner.org", "ops.partner.net")


def test_each_kms_speaks_only_for_its_users(public_keys: tuple[bytes, bytes]) -> None:
    own = KmsDomain("kms.example.org", public_keys[0], public_keys[1])
    trust = KmsTrust.of(
        own,
        [
            certificate("kms.partner.org", public_keys),
            certificate("kms.ops.partner.org", public_keys, ("ops.partner.org",)),
            certificate("kms.example.org", public_keys, ("example.org",)),  # our own: never an External entry
        ],
    )
    assert set(trust.domains) == {"kms.example.org", "kms.partner.org", "kms.ops.partner.org"}
    assert trust.domains["kms.example.org"] is own
    assert trust.kms_for("sip:alice@example.org") is own
    assert trust.kms_for("sip:bob@partner.org").kms_uri == "kms.partner.org"
    assert trust.kms_for("sip:bob@x.partner.org").kms_uri == "kms.partner.org"
    assert trust.kms_for("sip:erin@ops.partner.org").kms_uri == "kms.ops.partner.org"  # the most specific
    assert trust.kms_for("sip:eve@notpartner.org") is own  # not a subdomain of partner.org
    assert trust.speaks_for("kms.partner.org", "sip:bob@partner.org")
    assert not trust.speaks_for("kms.partner.org", "sip:alice@example.org")  # a partner cannot sign as our users
    assert not trust.speaks_for("kms.example.org", "sip:bob@partner.org")  # nor we as theirs
    assert not trust.speaks_for("kms.partner.org", "sip:erin@ops.partner.org")
    assert not trust.speaks_for("kms.unknown.org", "sip:zed@unknown.org")
