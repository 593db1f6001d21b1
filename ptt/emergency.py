"""Emergency and imminent peril alerts of group members (the emergency group call and emergency alert and
the imminent peril group call of TS 24.379), as pure values and decisions: no I/O, time passed in.

A member raises an **alert** in one of its groups at one of two levels, imminent peril below emergency, with or
without a call (``call``: the member's client also asks for the floor at once). The alert stays until the member
or a dispatcher cancels it; a member raises and cancels only its own, a dispatcher cancels anyone's. Several
members of a group may be in emergency at once; the **group's level** is the highest of its active alerts.

While a member's alert is active, its floor requests in that group carry the Floor Indicator bit of its level and
the floor control server treats them with that urgency (:mod:`ptt.floor.arbiter`: emergency pre-empts imminent
peril and normal talkers, and a broadcast; imminent peril pre-empts normal talkers). Floor Granted, Floor Taken
and Floor Idle to everyone carry the group's level too (the call is an emergency call).

A dispatcher **acknowledges** an active alert (it has seen it and is handling it): the alert records who and
when, the floor does not change, and an upgrade (imminent peril → emergency) needs a new acknowledgement. Members
are not told of acknowledgements over the control channel (its ``alert`` message has no such state yet).

Raising while already in alert: the same level is idempotent (the original ``since`` stays); imminent peril →
emergency is an upgrade (``since`` restarts); emergency → imminent peril is refused (cancel first), because a user
in danger must not lose its priority by a second key press.

The control channel carries (``ptt.control`` SCHEMA, client → server):

  ``emergency {group, level, call?}``        raise (``level``: "emergency" | "imminent-peril")
  ``emergency_cancel {group, uri?}``         cancel one's own (``uri`` omitted or the sender's own)

and server → every member of the group: ``alert {group, state, uri, level, since, call, by?}`` with ``state``
"raised" | "cancelled" (``by``: who cancelled); the requester also gets ``emergency_ok {group}``. The ``groups``
and ``welcome`` entries list a group's active alerts under ``alerts``, so a member logging in later sees them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ptt.floor.fields import FloorIndicator

MAX_URI = 255


class EmergencyMessageError(ValueError):
    """An emergency control message that is malformed (wrong fields, unknown level, bad URI)."""


class EmergencyRefused(Exception):
    """A well-formed request that is not allowed, with an HTTP-like code (403 not allowed, 404 no alert, 409
    conflicting state)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Level(enum.IntEnum):
    """Alert levels, ordered by urgency (the Floor Indicator's urgency: emergency > imminent peril > normal)."""

    IMMINENT_PERIL = 1
    EMERGENCY = 2

    @property
    def label(self) -> str:
        return "emergency" if self is Level.EMERGENCY else "imminent-peril"

    @property
    def indicator(self) -> int:
        return int(FloorIndicator.EMERGENCY if self is Level.EMERGENCY else FloorIndicator.IMMINENT_PERIL)

    @classmethod
    def parse(cls, text: object) -> Level:
        for level in cls:
            if text == level.label:
                return level
        raise EmergencyMessageError(f"unknown alert level {text!r} (emergency or imminent-peril)")


@dataclass(frozen=True)
class Alert:
    """One member's alert in one group: active while ``cancelled_at`` is None."""

    group: str
    uri: str
    level: Level
    since: float
    call: bool = False
    cancelled_at: float | None = None
    cancelled_by: str | None = None
    acked_at: float | None = None
    """When a dispatcher acknowledged the alert (None: not yet); only dispatchers are shown it."""
    acked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.cancelled_at is None

    @property
    def acknowledged(self) -> bool:
        return self.acked_at is not None

    def without_ack(self) -> Alert:
        return replace(self, acked_at=None, acked_by=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "level": self.level.label, "since": self.since, "call": self.call}
        if self.cancelled_at is not None:
            out["cancelled_at"] = self.cancelled_at
            out["by"] = self.cancelled_by
        return out


# -- decisions ---------------------------------------------------------------------------------------------------


def raise_alert(current: Alert | None, group: str, uri: str, level: Level, call: bool, now: float) -> Alert | None:
    """The alert after ``uri`` raises ``level``: a new one, an upgrade, or None when nothing changes (the same
    level again). Refused (409) from emergency down to imminent peril."""
    if current is not None and current.active:
        if level == current.level:
            return None
        if level < current.level:
            raise EmergencyRefused(409, f"{uri} is in emergency: cancel it before raising imminent peril")
    return Alert(group, uri, level, now, call)


def cancel_alert(current: Alert | None, target: str, actor: str, *, dispatcher: bool, now: float) -> Alert:
    """The cancelled alert of ``target``, cancelled by ``actor`` (a member: only its own; a dispatcher: any)."""
    if not dispatcher and actor != target:
        raise EmergencyRefused(403, f"{actor} may cancel only its own alert, not {target}'s (a dispatcher may)")
    if current is None or not current.active:
        raise EmergencyRefused(404, f"{target} has no active alert")
    return replace(current, cancelled_at=now, cancelled_by=actor)


def acknowledge_alert(current: Alert | None, target: str, actor: str, now: float) -> Alert | None:
    """The alert of ``target`` acknowledged by the dispatcher ``actor``; None when it already was (the first
    acknowledgement stays). Refused (404) without an active alert."""
    if current is None or not current.active:
        raise EmergencyRefused(404, f"{target} has no active alert")
    if current.acknowledged:
        return None
    return replace(current, acked_at=now, acked_by=actor)


def group_level(alerts: Iterable[Alert]) -> Level | None:
    """The group's level: the highest of its active alerts (None: no alert)."""
    levels = [a.level for a in alerts if a.active]
    return max(levels) if levels else None


def indicator_bits(alerts: Iterable[Alert]) -> int:
    level = group_level(alerts)
    return level.indicator if level is not None else 0


def changes(old: Mapping[str, Alert], new: Mapping[str, Alert]) -> list[Alert]:
    """What happened between two snapshots of a group's alerts (by member URI): each alert raised, upgraded or
    cancelled (a cancelled alert carries who cancelled it; one that vanished, e.g. the member was removed, is
    reported cancelled by nobody) or acknowledged by a dispatcher (the member in danger learns that help is coming)."""
    out: list[Alert] = []
    for uri, alert in new.items():
        before = old.get(uri)
        raised = alert.active and (before is None or before.without_ack() != alert.without_ack())
        cancelled = not alert.active and before is not None and before.active
        acknowledged = alert.active and alert.acknowledged and before is not None and not before.acknowledged
        if raised or cancelled or acknowledged:
            out.append(alert)
    for uri, before in old.items():
        if before.active and uri not in new:
            out.append(replace(before, cancelled_at=before.since, cancelled_by=None))
    return out


# -- control messages ----------------------------------------------------------------------------------------------


def _group(message: Mapping[str, Any]) -> str:
    group = message.get("group")
    if not isinstance(group, str) or not group or len(group) > MAX_URI or any(c.isspace() for c in group):
        raise EmergencyMessageError("group: a URI of at most 255 characters is required")
    return group


def _only(message: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(message) - allowed - {"type"})
    if unknown:
        raise EmergencyMessageError(f"{message.get('type')}: unknown field {', '.join(unknown)}")


@dataclass(frozen=True)
class RaiseRequest:
    """``emergency {group, level, call?}``: the sender raises its alert in ``group``."""

    group: str
    level: Level
    call: bool = False

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> RaiseRequest:
        _only(message, {"group", "level", "call"})
        call = message.get("call", False)
        if not isinstance(call, bool):
            raise EmergencyMessageError("emergency: call must be true or false")
        return cls(_group(message), Level.parse(message.get("level")), call)

    def to_json(self) -> dict[str, Any]:
        return {"type": "emergency", "group": self.group, "level": self.level.label, "call": self.call}


@dataclass(frozen=True)
class CancelRequest:
    """``emergency_cancel {group, uri?}``: the sender cancels its alert (``uri``: whose; only its own)."""

    group: str
    uri: str | None = None

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> CancelRequest:
        _only(message, {"group", "uri"})
        uri = message.get("uri")
        if uri is not None and (not isinstance(uri, str) or not uri or len(uri) > MAX_URI):
            raise EmergencyMessageError("emergency_cancel: uri must be a URI of at most 255 characters")
        return cls(_group(message), uri)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "emergency_cancel", "group": self.group}
        if self.uri is not None:
            out["uri"] = self.uri
        return out


@dataclass(frozen=True)
class AlertEvent:
    """``alert {group, state, uri, level, since, call, by?, acked_at?}``: what every member is told of a change.
    ``state`` is raised, acknowledged (``by`` the dispatcher, at ``acked_at``) or cancelled (``by`` whom)."""

    group: str
    alert: Alert

    @property
    def state(self) -> str:
        if not self.alert.active:
            return "cancelled"
        return "acknowledged" if self.alert.acknowledged else "raised"

    def to_json(self) -> dict[str, Any]:
        a = self.alert
        out: dict[str, Any] = {
            "type": "alert",
            "group": self.group,
            "state": self.state,
            "uri": a.uri,
            "level": a.level.label,
            "since": a.since,
            "call": a.call,
        }
        if not a.active:
            out["by"] = a.cancelled_by
        elif a.acknowledged:
            out["by"] = a.acked_by
            out["acked_at"] = a.acked_at
        return out

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> AlertEvent:
        _only(message, {"group", "state", "uri", "level", "since", "call", "by", "acked_at"})
        group = _group(message)
        uri, since, state, by = message.get("uri"), message.get("since"), message.get("state"), message.get("by")
        if not isinstance(uri, str) or not uri or len(uri) > MAX_URI:
            raise EmergencyMessageError("alert: uri missing")
        since = _number(since, "since")
        if state not in ("raised", "acknowledged", "cancelled"):
            raise EmergencyMessageError(f"alert: unknown state {state!r}")
        if by is not None and (not isinstance(by, str) or len(by) > MAX_URI):
            raise EmergencyMessageError("alert: by must be a string")
        alert = Alert(group, uri, Level.parse(message.get("level")), since, bool(message.get("call", False)))
        if state == "cancelled":
            alert = replace(alert, cancelled_at=since, cancelled_by=by)
        elif state == "acknowledged":
            if by is None:
                raise EmergencyMessageError("alert: an acknowledgement names the dispatcher (by)")
            alert = replace(alert, acked_at=_number(message.get("acked_at", since), "acked_at"), acked_by=by)
        return cls(group, alert)


def _number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise EmergencyMessageError(f"alert: {name} must be a number")
    return float(value)


def alerts_json(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    return [a.to_json() for a in sorted(alerts, key=lambda a: (a.since, a.uri)) if a.active]
