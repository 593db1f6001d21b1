"""The dispatchers' live event stream (issue 15), without I/O: what a dispatcher is told of the groups it may see.

A group's live state is a :class:`GroupView` (membership and alerts as committed, presence, talker and floor queue
as the call has them). The shell builds views whenever something may have changed; :func:`view_events` turns two
successive views of a group into events, and :class:`DispatcherFeed` hands each event to the subscribers that may
see the group (a subscriber's visible groups come from the dispatcher API's authorisation, re-read by the shell).

Events (JSON objects, each with ``type`` and ``group``):

  ``group {state: added, view}`` | ``group {state: removed}`` | ``group {state: renamed, name}``
  ``member {state: added|changed|removed, uri, priority, role}``
  ``presence {uri, online, joined, talking, queued}``   (a member's presence changed; ``queued``: its place, 1-based,
                                                       or null)
  ``talker {uri}``                                      (null: the floor is idle)
  ``queue {queue: [uri, ...]}``
  ``alert {state: raised|acknowledged|cancelled, uri, level, since, call, by}``

A new subscriber first gets ``snapshot {groups: [view, ...]}`` of every visible group already viewed; the views of
the others follow as ``group {state: added}`` once the shell has built them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ptt.emergency import Alert

__all__ = ["AlertView", "DispatcherFeed", "GroupView", "MemberView", "group_view", "view_events"]


@dataclass(frozen=True)
class MemberView:
    uri: str
    priority: int
    role: str


@dataclass(frozen=True)
class AlertView:
    """An active alert as dispatchers see it (with its acknowledgement)."""

    uri: str
    level: str
    since: float
    call: bool
    acked_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "level": self.level, "since": self.since, "call": self.call, "acked_by": self.acked_by}


@dataclass(frozen=True)
class GroupView:
    uri: str
    name: str
    members: tuple[MemberView, ...] = ()
    online: frozenset[str] = frozenset()
    joined: frozenset[str] = frozenset()
    talker: str | None = None
    queue: tuple[str, ...] = ()
    alerts: tuple[AlertView, ...] = ()

    def presence(self, uri: str) -> dict[str, Any]:
        queued = self.queue.index(uri) + 1 if uri in self.queue else None
        return {
            "uri": uri,
            "online": uri in self.online,
            "joined": uri in self.joined,
            "talking": uri == self.talker,
            "queued": queued,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "name": self.name,
            "members": [{**self.presence(m.uri), "priority": m.priority, "role": m.role} for m in self.members],
            "talker": self.talker,
            "queue": list(self.queue),
            "alerts": [a.to_json() for a in self.alerts],
        }


def group_view(
    uri: str, name: str, members: Iterable[MemberView], alerts: Iterable[Alert], status: Mapping[str, Any]
) -> GroupView:
    """A view from a group as committed and its live status (``GroupCall.status``'s form: present, joined, talker,
    queue; missing keys are empty). Only members count as present or joined."""
    listed = tuple(sorted(members, key=lambda m: m.uri))
    uris = {m.uri for m in listed}
    talker = status.get("talker")
    return GroupView(
        uri,
        name,
        listed,
        frozenset(u for u in _strings(status.get("present")) if u in uris),
        frozenset(u for u in _strings(status.get("joined")) if u in uris),
        talker if isinstance(talker, str) and talker in uris else None,
        tuple(u for u in _strings(status.get("queue")) if u in uris),
        tuple(
            AlertView(a.uri, a.level.label, a.since, a.call, a.acked_by)
            for a in sorted(alerts, key=lambda a: (a.since, a.uri))
            if a.active
        ),
    )


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple | set | frozenset) else []


def view_events(old: GroupView | None, new: GroupView | None) -> list[dict[str, Any]]:
    """What changed from ``old`` to ``new`` (None: the group does not exist / no longer exists)."""
    if old is None and new is None:
        return []
    if new is None:
        assert old is not None
        return [{"type": "group", "group": old.uri, "state": "removed"}]
    if old is None:
        return [{"type": "group", "group": new.uri, "state": "added", "view": new.to_json()}]
    group = new.uri
    out: list[dict[str, Any]] = []
    if old.name != new.name:
        out.append({"type": "group", "group": group, "state": "renamed", "name": new.name})
    before = {m.uri: m for m in old.members}
    after = {m.uri: m for m in new.members}
    for uri in sorted(before.keys() | after.keys()):
        state = "added" if uri not in before else "removed" if uri not in after else "changed"
        member = after.get(uri) or before[uri]
        if state != "changed" or before[uri] != after[uri]:
            out.append(
                {"type": "member", "group": group, "state": state, "uri": uri}
                | {"priority": member.priority, "role": member.role}
            )
    for uri in sorted(after):
        if uri in before and old.presence(uri) != new.presence(uri):
            out.append({"type": "presence", "group": group, **new.presence(uri)})
    if old.talker != new.talker:
        out.append({"type": "talker", "group": group, "uri": new.talker})
    if old.queue != new.queue:
        out.append({"type": "queue", "group": group, "queue": list(new.queue)})
    out += _alert_events(group, old.alerts, new.alerts)
    return out


def _alert_events(group: str, old: tuple[AlertView, ...], new: tuple[AlertView, ...]) -> list[dict[str, Any]]:
    before = {a.uri: a for a in old}
    after = {a.uri: a for a in new}
    out: list[dict[str, Any]] = []
    for uri, alert in after.items():
        previous = before.get(uri)
        if previous is None or (previous.level, previous.since) != (alert.level, alert.since):
            out.append(_alert_event(group, "raised", alert, None))
            if alert.acked_by is not None:
                out.append(_alert_event(group, "acknowledged", alert, alert.acked_by))
        elif previous.acked_by is None and alert.acked_by is not None:
            out.append(_alert_event(group, "acknowledged", alert, alert.acked_by))
    for uri in sorted(before.keys() - after.keys()):
        out.append(_alert_event(group, "cancelled", before[uri], None))
    return out


def _alert_event(group: str, state: str, alert: AlertView, by: str | None) -> dict[str, Any]:
    return {"type": "alert", "group": group, "state": state, **alert.to_json(), "by": by}


@dataclass
class _Subscriber:
    visible: set[str] = field(default_factory=set)


class DispatcherFeed:
    """The views last seen and who may see which group; events out per subscriber (an opaque key)."""

    def __init__(self) -> None:
        self._views: dict[str, GroupView] = {}
        self._subscribers: dict[object, _Subscriber] = {}

    def subscribe(self, key: object, visible: Iterable[str]) -> dict[str, Any]:
        """A new subscriber seeing ``visible`` groups; its first event, the snapshot of what is known of them."""
        subscriber = self._subscribers[key] = _Subscriber(set(visible))
        views = [self._views[g].to_json() for g in sorted(subscriber.visible) if g in self._views]
        return {"type": "snapshot", "groups": views}

    def unsubscribe(self, key: object) -> None:
        self._subscribers.pop(key, None)
        self._forget_unwatched()

    def subscribers(self) -> list[object]:
        return list(self._subscribers)

    def watched(self) -> set[str]:
        """Every group some subscriber may see: the groups the shell must view."""
        return set().union(*(s.visible for s in self._subscribers.values())) if self._subscribers else set()

    def set_visible(self, key: object, visible: Iterable[str]) -> list[dict[str, Any]]:
        """The subscriber's rights changed (re-read from the store): groups it now sees are added with their view
        (once viewed), groups it lost are removed."""
        subscriber = self._subscribers.get(key)
        if subscriber is None:
            return []
        new = set(visible)
        out = [
            {"type": "group", "group": g, "state": "added", "view": self._views[g].to_json()}
            for g in sorted(new - subscriber.visible)
            if g in self._views
        ]
        out += [{"type": "group", "group": g, "state": "removed"} for g in sorted(subscriber.visible - new)]
        subscriber.visible = new
        self._forget_unwatched()
        return out

    def update(self, views: Mapping[str, GroupView | None]) -> list[tuple[object, dict[str, Any]]]:
        """New views of some groups (None: the group is gone): (subscriber, event) for each change it may see."""
        out: list[tuple[object, dict[str, Any]]] = []
        for group, view in views.items():
            old = self._views.get(group)
            if view is None:
                self._views.pop(group, None)
            else:
                self._views[group] = view
            events = view_events(old, view)
            if not events:
                continue
            for key, subscriber in self._subscribers.items():
                if group in subscriber.visible:
                    out += [(key, event) for event in events]
        return out

    def _forget_unwatched(self) -> None:
        watched = self.watched()
        for group in [g for g in self._views if g not in watched]:
            del self._views[group]
