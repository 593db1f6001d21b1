"""What the on-network group call knows of each group and how it refuses: the group and member records as the
store committed them (``ptt.groupcall`` and the server's shells share them) and the refusal with its status code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ptt.emergency import Alert

DISPATCHER_ROLE = "dispatcher"


class Refused(Exception):
    """A request the call refuses, with a status code for the client (HTTP-like: 400, 403, 404, 409, 429)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_membership(info: GroupInfo | None, group: str, member: str) -> None:
    """Refused 404 for a group the server does not have, 403 for one ``member`` is not in (an authenticated
    member may learn that a group exists: group URIs are no secret, the keys are)."""
    if info is None:
        raise Refused(404, f"no group {group} on this server")
    if member not in info.members:
        raise Refused(403, f"{member} is not a member of {group}")


@dataclass(frozen=True)
class MemberInfo:
    uri: str
    priority: int = 0
    role: str = "member"
    broadcast: bool = False


@dataclass(frozen=True)
class GroupInfo:
    """A group as committed in the store: name, burst limit and members by URI."""

    uri: str
    name: str
    max_burst: float = 30.0
    members: Mapping[str, MemberInfo] = field(default_factory=dict)
    alerts: Mapping[str, Alert] = field(default_factory=dict)
    """The members' emergency alerts by URI as committed (active and the last cancelled: ``ptt.emergency``)."""
    private_call: bool = False
    """A private call's two-party call (``ptt.privatecall.router``): not a group, never listed to its members."""
    recorded: bool = False
    """A dispatcher turned recording on: the relay keeps the talker's SRTP (ciphertext only, issue 17)."""


@dataclass(frozen=True)
class RelayAddress:
    host: str
    port: int
