"""Which KMS may speak for which identity: the client's own (Root) KMS and the External KMSs it vouches for.

Identity-based keys make every KMS able to issue keys for *any* URI, so trusting another domain's KMS must not
let it sign as our users (or ours as theirs). Each External certificate a client got in its KMS's signed
certificate cache (TS 33.180 Annex D KmsCertCache) is bound to the user domains its ``KmsDomainList`` names (our
KMS writes them there when an operator runs ``ptt-kms trust-domain``): that KMS speaks for URIs in those domains
and their subdomains, and only for them. The own KMS speaks for every other URI. A certificate without a list is
bound to its KMS URI without a leading ``kms.`` label (``kms.partner.org`` → ``partner.org``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ptt.kmsformat.model import KmsCertificate
from ptt.mikey.imessage import KmsDomain


def uri_domain(uri: str) -> str:
    """The domain part of an identity URI (``sip:alice@Example.org;x=y`` → ``example.org``); "" if it has none."""
    _, at, rest = uri.rpartition("@")
    if not at:
        return ""
    for stop in ";?>:":
        rest = rest.split(stop, 1)[0]
    return rest.strip().lower().rstrip(".")


def user_domains(certificate: KmsCertificate) -> tuple[str, ...]:
    """The user domains an External KMS certificate is bound to (see the module docstring)."""
    listed = tuple(d.strip().lower().rstrip(".") for d in certificate.kms_domains if d.strip())
    if listed:
        return listed
    uri = certificate.kms_uri.lower()
    return (uri.removeprefix("kms."),)


def _within(domain: str, parent: str) -> bool:
    return bool(domain) and (domain == parent or domain.endswith("." + parent))


@dataclass(frozen=True)
class KmsTrust:
    """The own KMS domain plus External KMS domains, each with the user domains it speaks for."""

    own: KmsDomain
    external: Mapping[str, tuple[KmsDomain, tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def of(cls, own: KmsDomain, certificates: Iterable[KmsCertificate] = ()) -> KmsTrust:
        external = {c.kms_uri: (c.domain(), user_domains(c)) for c in certificates if c.kms_uri != own.kms_uri}
        return cls(own, external)

    @property
    def domains(self) -> dict[str, KmsDomain]:
        """KMS URI → public parameters of every trusted KMS (what the MIKEY and envelope checks take)."""
        return {self.own.kms_uri: self.own, **{uri: entry[0] for uri, entry in self.external.items()}}

    def kms_for(self, uri: str) -> KmsDomain:
        """The KMS that speaks for ``uri``: the External KMS bound to its domain (the most specific), else our own."""
        domain = uri_domain(uri)
        best: tuple[int, KmsDomain] | None = None
        for kms_domain, bound in self.external.values():
            for parent in bound:
                if _within(domain, parent) and (best is None or len(parent) > best[0]):
                    best = (len(parent), kms_domain)
        return best[1] if best is not None else self.own

    def speaks_for(self, kms_uri: str, uri: str) -> bool:
        """Whether keys of ``kms_uri`` may vouch for the identity ``uri``."""
        return self.kms_for(uri).kms_uri == kms_uri
