"""A PTT session's emergency alerts and broadcast calls (issue 16): the alerts of its groups as the server pushes
them (who, which level, since when), raising and cancelling one's own, and floor requests that carry the Floor
Indicator of the user's state (emergency / imminent peril while its alert is active, broadcast when asked).

``SessionEmergency`` is a part of ``client.session.PttSession``. The server decides the urgency of a request from
its own record of the alert (``ptt.floor.arbiter``: verified call types); the bits the client sends say the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from client.session_floor import SessionFloor
from ptt.emergency import Alert, AlertEvent, EmergencyMessageError, Level
from ptt.floor.fields import FloorIndicator

__all__ = ["SessionEmergency"]

log = logging.getLogger("ptt.client.session")


class SessionEmergency(SessionFloor):
    """Alerts by group and member URI; ``alert_listener(group, alert)`` hears each raise and cancel."""

    control: Any

    @property
    def alerts(self) -> dict[str, dict[str, Alert]]:
        """Active alerts: group URI -> member URI -> alert."""
        table: dict[str, dict[str, Alert]] | None = getattr(self, "_alerts_table", None)
        if table is None:
            table = {}
            self._alerts_table = table
        return table

    @property
    def alert_listener(self) -> Callable[[str, Alert], None]:
        listener: Callable[[str, Alert], None] = getattr(self, "_alert_listener", lambda group, alert: None)
        return listener

    @alert_listener.setter
    def alert_listener(self, listener: Callable[[str, Alert], None]) -> None:
        self._alert_listener = listener

    def own_level(self, group: str) -> Level | None:
        """The level of this user's own active alert in ``group`` (None: none)."""
        alert = self.alerts.get(group, {}).get(self.uri)
        return alert.level if alert is not None else None

    # --- requests ------------------------------------------------------------------------------------------------

    def raise_emergency(self, group: str, level: Level = Level.EMERGENCY, *, call: bool = False) -> Any:
        """Raise this user's alert in ``group`` (a Deferred of the server's ``emergency_ok``); with ``call`` the
        floor is asked for at once, with the alert's urgency."""
        if self.control is None:
            raise RuntimeError("not connected")
        message = {"type": "emergency", "group": group, "level": level.label, "call": call}
        d = self.control.request(message, "emergency_ok")

        def raised(reply: Any) -> Any:
            if self.own_level(group) != level:  # the server's alert push normally came first
                self._note(group, Alert(group, self.uri, level, self.reactor.seconds(), call))
            state = self.groups.get(group)
            if call and state is not None and state.participant is not None:
                self.request_floor(group)
            return reply

        d.addCallback(raised)
        return d

    def cancel_emergency(self, group: str, uri: str | None = None) -> Any:
        """Cancel this user's alert (or, for a dispatcher member, ``uri``'s)."""
        if self.control is None:
            raise RuntimeError("not connected")
        message: dict[str, Any] = {"type": "emergency_cancel", "group": group}
        if uri is not None:
            message["uri"] = uri
        return self.control.request(message, "emergency_ok")

    def request_floor(self, group: str, *, priority: int | None = None, indicator: int | None = None) -> None:
        """As ``SessionFloor.request_floor``; while this user's alert is active, the request carries its level."""
        level = self.own_level(group)
        if level is not None:
            indicator = (indicator or 0) & ~int(FloorIndicator.NORMAL) | level.indicator
        super().request_floor(group, priority=priority, indicator=indicator)

    def request_broadcast(self, group: str) -> None:
        """Start a broadcast group call: a Floor Request with the BROADCAST indicator (the server checks the right)."""
        self.request_floor(group, indicator=int(FloorIndicator.BROADCAST))

    # --- from the server -------------------------------------------------------------------------------------------

    def on_alert(self, message: dict[str, Any]) -> None:
        try:
            event = AlertEvent.parse(message)
        except EmergencyMessageError as exc:
            log.warning("%s: unusable alert from the server: %s", self.uri, exc)
            return
        self._note(event.group, event.alert)
        self.alert_listener(event.group, event.alert)

    def _alerts_from_groups(self, groups: list[dict[str, Any]]) -> None:
        """The active alerts listed in a ``welcome`` / ``groups`` message (a member logging in learns them)."""
        for entry in groups:
            group = str(entry.get("uri"))
            listed: dict[str, Alert] = {}
            for item in entry.get("alerts") or []:
                try:
                    alert = AlertEvent.parse({"group": group, "state": "raised", **item}).alert
                except (EmergencyMessageError, TypeError):
                    continue
                listed[alert.uri] = alert
            if listed:
                self.alerts[group] = listed
            else:
                self.alerts.pop(group, None)

    def _note(self, group: str, alert: Alert) -> None:
        table = self.alerts.setdefault(group, {})
        if alert.active:
            table[alert.uri] = alert
        else:
            table.pop(alert.uri, None)
            if not table:
                self.alerts.pop(group, None)
