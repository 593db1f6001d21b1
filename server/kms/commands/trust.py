"""``ptt-kms export-enrolment`` (what clients must trust) and ``trust-domain`` / ``untrust-domain`` (other KMS
domains served in the certificate cache)."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from ptt.kmsformat.enrolment import SYSTEM_TRUST, TOKEN_PATH, Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsFormatError
from ptt.kmsformat.trust import user_domains
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate
from server.kms.commands import common
from server.kms.commands.common import CliError, DataDir, fingerprint, open_store, stored_domain, unique
from server.kms.domain import certificate_validity, domain_certificate
from server.kms.material import certificate_pem, load_certificate
from server.kms.secrets import read_public_keys

__all__ = ["cmd_export_enrolment", "cmd_trust_domain", "cmd_untrust_domain", "describe_trust"]


def _tls_trust(dd: DataDir, setting: str | None) -> str | None:
    """What the enrolment tells clients to trust for the KMS's HTTPS: None (pin its self-signed certificate), the
    operator's CA bundle, or "system"."""
    if setting == "ca":
        return dd.tls_ca.read_text()
    return SYSTEM_TRUST if setting == "system" else None


def cmd_export_enrolment(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    with open_store(dd) as store:
        domain = stored_domain(store)
        valid_from, valid_to = certificate_validity(store.settings())
        tls_ca = _tls_trust(dd, store.get_setting("tls_trust"))
    kpak, z = read_public_keys(dd.secrets)
    base_url = args.base_url or domain.base_url
    if not base_url:
        raise CliError("no base URL: give --base-url https://HOST:PORT")
    enrolment = Enrolment(
        kms_uri=domain.kms_uri,
        base_url=base_url,
        tls_cert_pem=certificate_pem(load_certificate(dd.tls_cert)),
        signing_cert_pem=certificate_pem(load_certificate(dd.signing_cert)),
        certificate=domain_certificate(
            domain.kms_uri, domain.key_period, domain.key_period_offset, kpak, z, valid_from, valid_to
        ),
        tls_ca=tls_ca,
        idms_token_url=base_url.rstrip("/") + TOKEN_PATH,  # clients from before issue 14 ignore it
    )
    data = enrolment.to_json()
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"enrolment for {domain.kms_uri} at {base_url} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(data.decode("utf-8"))
        if not data.endswith(b"\n"):
            sys.stdout.write("\n")
    return 0


def _certificate_from_file(path: str) -> KmsCertificate:
    """A KmsCertificate from an enrolment JSON file or a standalone KmsCertificate XML document."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    try:
        if data.lstrip().startswith(b"{"):
            return Enrolment.from_json(data).certificate
        return parse_certificate(data)
    except (KmsFormatError, ValueError) as e:
        raise CliError(f"{path} is neither an enrolment file nor a KmsCertificate: {e}") from None


# A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123), lower case once normalised.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")


def _user_domain(text: str) -> str:
    """A ``--user-domain`` value, lower-cased (a trailing root dot dropped), or a CliError."""
    domain = text.lower().removesuffix(".")
    if len(domain) > 253 or not _DOMAIN_RE.match(domain):
        raise CliError(f"--user-domain {text!r} is not a domain name (letters, digits, hyphens and dots)")
    return domain


def _within(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def describe_trust(certificate: KmsCertificate) -> str:
    return f"KMS {certificate.kms_uri} for users in {', '.join(user_domains(certificate))}"


def cmd_trust_domain(args: argparse.Namespace) -> int:
    given = unique([_user_domain(d) for d in args.user_domain or []])
    with open_store(DataDir(Path(args.data))) as store:
        domain = stored_domain(store)
        certificate = _certificate_from_file(args.file)
        if certificate.kms_uri == domain.kms_uri:
            raise CliError(f"{args.file} is this KMS's own certificate ({domain.kms_uri})")
        # Role External: the cache vouches for another KMS. Its KmsDomainList names the user domains it speaks for
        # (ptt.kmsformat.trust); without --user-domain the file's own list stays, or the client derives one.
        certificate = replace(certificate, role="External", kms_domains=tuple(given or certificate.kms_domains))
        # Clients let an External KMS speak for these domains instead of us: never for our own users.
        own = domain.name.lower().removesuffix(".")
        for bound in user_domains(certificate):
            if own and _within(own, bound):
                raise CliError(f"user domain {bound} would hand this domain's own users ({own}) to another KMS")
        # Stored as we serialise it, so the certificate cache only ever serves XML we can parse.
        store.add_trusted_certificate(certificate.kms_uri, certificate_to_xml(certificate), now=common.clock())
    print(f"trusting {describe_trust(certificate)} (KPAK SHA-256 {fingerprint(certificate.pub_auth_key)})")
    return 0


def cmd_untrust_domain(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        store.remove_trusted_certificate(args.kms_uri, now=common.clock())
    print(f"no longer trusting KMS {args.kms_uri}")
    return 0
