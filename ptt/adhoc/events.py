"""Events an ad-hoc engine hands its shell (``AdhocEngine.events``): groups keyed, updated or removed, a member
keyed, a datagram refused."""

from __future__ import annotations

from dataclasses import dataclass

from ptt.adhoc.bodies import GroupInfo
from ptt.adhoc.state import Role
from ptt.groupkeys import GroupKey
from ptt.keyrollover import KeyOrigin


@dataclass(frozen=True)
class GroupKeyed:
    """A (new) GMK for a group we belong to: install it for media and floor control."""

    info: GroupInfo
    key: GroupKey
    role: Role
    origin: KeyOrigin | None = None  # who signed its I_MESSAGE in which key period, and our RSK's period


@dataclass(frozen=True)
class GroupUpdated:
    """The group description changed (members, manager) without a new GMK."""

    info: GroupInfo
    role: Role


@dataclass(frozen=True)
class GroupRemoved:
    """We are no longer in the group (removed, left, or it was dissolved): forget its keys."""

    uri: str
    reason: str


@dataclass(frozen=True)
class MemberKeyed:
    """Manager: a member acknowledged the current GMK."""

    group: str
    member: str
    seconds: float  # since the GMK was made


@dataclass(frozen=True)
class Refused:
    """A datagram or key was refused (logged; surfaced so the UI and tests can see it)."""

    sender: str | None
    reason: str


Event = GroupKeyed | GroupUpdated | GroupRemoved | MemberKeyed | Refused
