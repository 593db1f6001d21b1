"""The group server's CSK replay cache kept across restarts, in its data directory.

A CSK I_MESSAGE is accepted for ``CSK_WINDOW`` seconds after its time; a server restarted within that window with
an empty cache would take the same message again. The cache (digests and times, no secrets) is saved a moment
after it changes and before the reactor shuts down, beside the server's database, by the same ``ReplayFile`` and
``DebouncedSave`` the client keeps its I_MESSAGE replay cache with (``client.keystore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.keystore import DebouncedSave, ReplayFile
from ptt.mikey.imessage import ReplayCache

__all__ = ["CSK_REPLAY_FILE", "CskReplay", "csk_replay_path"]

CSK_REPLAY_FILE = "csk-replay.json"


def csk_replay_path(manager: Any) -> Path | None:
    """The file in the server's data directory (where its database is), or None when there is none (an in-memory
    store, or no group manager as in unit tests): then nothing is persisted."""
    database = getattr(getattr(manager, "store", None), "path", None)
    if database is None or str(database) == ":memory:":
        return None
    return Path(database).parent / CSK_REPLAY_FILE


class CskReplay:
    """The CSK replay cache (``cache``), loaded at construction; ``changed()`` after it remembered a CSK saves it a
    moment later, ``flush()`` saves at once (also run before the reactor shuts down)."""

    def __init__(self, reactor: Any, path: Path | None) -> None:
        self._file = None if path is None else ReplayFile(path)
        self.cache: ReplayCache = ReplayCache() if self._file is None else self._file.load(reactor.seconds())[0]
        self._saver = DebouncedSave(reactor, self._save)

    def _save(self) -> None:
        if self._file is not None:
            self._file.save(self.cache)

    def changed(self) -> None:
        if self._file is not None:
            self._saver.changed()

    def flush(self) -> object:
        return self._saver.flush()
