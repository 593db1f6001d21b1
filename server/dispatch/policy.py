"""Who may do what through the dispatcher API: pure decisions from an account, a group and a member (no I/O).

Every account and every group belongs to one organisation (``org``). A group is owned by the account that created
it (``GroupRecord.owner``; None once that account is removed); an admin of the organisation may assign other
dispatchers of the organisation to it.

=====================================  ===========  =============  ==============  =====================
what                                   org admin    owner          assigned        anyone else
=====================================  ===========  =============  ==============  =====================
see the group, members, dispatchers    yes          yes            yes             no (404, as unknown)
add / change / remove members          yes          yes (a)        yes (a)         no (404)
delete the group                       yes (b)      yes            no (403)        no (404)
assign / unassign dispatchers          yes          no (403)       no (403)        no (404)
the audit log (``GET /api/audit``)     its org's    no (403)       no (403)        no (403)
create a group (in its own org)        yes          --             --              any account (a)
=====================================  ===========  =============  ==============  =====================

(a) Only an admin may give a priority above the ceiling (``GroupStore.priority_ceiling``, 100 unless set) or the
pre-emptive member role 'dispatcher', and only an admin may change or remove a member that has either ("elevated").
(b) An admin may not delete a group another admin owns (only that admin may); groups owned by a dispatcher or by no
account any more, an admin of their organisation may delete.

Groups of other organisations, and groups of its own organisation a dispatcher neither owns nor is assigned to,
are answered exactly as groups that do not exist (404 "no group ..."), so their existence does not leak. The one
exception is creating a group whose URI is taken (409): URIs are unique server-wide.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.groups.records import DispatcherAccount, GroupRecord, MemberRecord

__all__ = ["ADMIN", "NO_ACCESS", "Access", "Refused", "check_member_change", "elevated", "group_access"]

ADMIN = "admin"
PREEMPTIVE_ROLE = "dispatcher"  # the member role that may pre-empt the floor


class Refused(Exception):
    """The account may see the group but not do this (HTTP 403); the message says what it would need."""


@dataclass(frozen=True)
class Access:
    """What one account may do with one group."""

    see: bool = False  # read the group, its members and its assigned dispatchers
    manage: bool = False  # add, change and remove members (within ``elevate``)
    delete: bool = False
    assign: bool = False  # assign and unassign dispatchers
    elevate: bool = False  # priorities above the ceiling, the pre-emptive role, and members that have them


NO_ACCESS = Access()


def group_access(account: DispatcherAccount, group: GroupRecord, *, assigned: bool, owner_role: str | None) -> Access:
    """``assigned``: the account is assigned to the group; ``owner_role``: the role of the group's owner (None if
    the group has no owner or it is not an account of the group's organisation)."""
    if account.disabled or account.org != group.org:
        return NO_ACCESS
    owner = group.owner == account.username
    if account.role == ADMIN:
        return Access(see=True, manage=True, delete=owner or owner_role != ADMIN, assign=True, elevate=True)
    if owner or assigned:
        return Access(see=True, manage=True, delete=owner)
    return NO_ACCESS


def elevated(member: MemberRecord, ceiling: int) -> bool:
    return member.priority > ceiling or member.role == PREEMPTIVE_ROLE


def check_member_change(
    access: Access,
    ceiling: int,
    *,
    priority: int | None = None,
    role: str | None = None,
    current: MemberRecord | None = None,
) -> None:
    """Refuse (``Refused``) a member's new ``priority``/``role``, or a change to (or removal of) ``current``, that
    needs the admin role."""
    if not access.manage:
        raise Refused("this account may not change the members of this group")
    if access.elevate:
        return
    if current is not None and elevated(current, ceiling):
        raise Refused(
            f"{current.uri} has priority {current.priority} and role {current.role}: only an admin may change or "
            "remove it"
        )
    if priority is not None and priority > ceiling:
        raise Refused(f"a priority above {ceiling} needs an admin account")
    if role == PREEMPTIVE_ROLE:
        raise Refused(f"the pre-emptive member role '{PREEMPTIVE_ROLE}' needs an admin account")
