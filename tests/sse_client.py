"""A small blocking client of the dispatcher API's event stream (``GET /api/events``) for end-to-end tests: reads
events on a thread into a list."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class EventReader:
    def __init__(self, port: int, cacert: Path, user: str, password: str) -> None:
        context = ssl.create_default_context(cafile=str(cacert))
        self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.connection.request("GET", "/api/events", headers={"Authorization": f"Basic {token}"})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    self.events.append((time.time(), json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):  # closed by the test
            pass

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, event in list(self.events):
                if match(event):
                    return at, event
            time.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout} s: {[e for _, e in self.events][-20:]}")

    def close(self) -> None:
        self.connection.close()
