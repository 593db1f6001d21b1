"""Server-sent events (the ``text/event-stream`` format of the HTML standard), as the dispatcher console reads the
dispatcher API's event stream: octets in, JSON objects out. Only ``data:`` lines matter here (one JSON object per
event); comments, ``retry:``, ``id:`` and ``event:`` lines are skipped. Bounded: a line longer than ``max_line``
octets is refused (``SseError``), so a broken server cannot make the reader buffer without end."""

from __future__ import annotations

import json
from typing import Any

from ptt import boundedjson

__all__ = ["SseDecoder", "SseError", "encode_event"]

MAX_LINE = 256 * 1024
EVENT_LIMITS = boundedjson.JsonLimits(max_size=MAX_LINE, max_depth=8, max_items=100_000, max_string=4096)


class SseError(ValueError):
    pass


def encode_event(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


class SseDecoder:
    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The events completed by ``data``; SseError for an overlong line or a data field that is not a JSON
        object (the stream is then unusable: reconnect)."""
        self._buffer += data
        events: list[dict[str, Any]] = []
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > self.max_line:
                    raise SseError(f"an event stream line longer than {self.max_line} octets")
                return events
            self._buffer = rest
            line = line.rstrip(b"\r")
            if not line:  # a blank line ends the event
                if self._data:
                    events.append(self._event(b"\n".join(self._data)))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
                if sum(len(d) for d in self._data) > self.max_line:
                    raise SseError(f"an event longer than {self.max_line} octets")

    @staticmethod
    def _event(data: bytes) -> dict[str, Any]:
        try:
            document = boundedjson.loads(data, EVENT_LIMITS)
        except boundedjson.JsonLimitError as exc:
            raise SseError(f"an event that is not usable JSON: {exc}") from None
        if not isinstance(document, dict):
            raise SseError("an event that is not a JSON object")
        return document
