"""Test identities keyed by a throwaway KMS: the domain and each identity's keys for a key period."""

from __future__ import annotations

from ptt.crypto import kms
from ptt.mikey.imessage import IdentityKeys, KmsDomain

World = tuple[KmsDomain, kms.MasterSecrets]


def make_world(kms_uri: str = "kms.example.org") -> World:
    master = kms.generate_master_secrets()
    return KmsDomain(kms_uri, master.kpak, master.z_public), master


def keys_for(world: World, uri: str, now: float) -> IdentityKeys:
    """What the KMS of ``world`` issues ``uri`` for the key period at ``now``."""
    domain, master = world
    period = domain.period_number(now)
    material = kms.derive_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)
