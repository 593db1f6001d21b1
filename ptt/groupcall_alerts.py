"""What the group call (:mod:`ptt.groupcall`) does with a group's emergency alerts and broadcast rights
(issue 16), as pure functions of the committed alerts: the arbiter's urgencies, the ``alert`` messages a change
makes, and what a member's ``groups`` entry says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptt.emergency import Alert, AlertEvent, alerts_json, changes


def urgencies(alerts: Mapping[str, Alert]) -> dict[str, int]:
    """Member URI -> urgency (1 imminent peril, 2 emergency) of each active alert, for ``FloorArbiter.set_alerts``."""
    return {uri: int(alert.level) for uri, alert in alerts.items() if alert.active}


def alert_messages(group: str, old: Mapping[str, Alert], new: Mapping[str, Alert]) -> list[dict[str, Any]]:
    """The ``alert`` messages for every member, one per alert raised, upgraded or cancelled between two snapshots."""
    return [AlertEvent(group, alert).to_json() for alert in changes(old, new)]


def entry_json(alerts: Mapping[str, Alert], broadcast: bool) -> dict[str, Any]:
    """What a ``groups`` entry adds: the group's active alerts and the member's broadcast right (only when any)."""
    out: dict[str, Any] = {}
    active = alerts_json(alerts.values())
    if active:
        out["alerts"] = active
    if broadcast:
        out["broadcast"] = True
    return out
