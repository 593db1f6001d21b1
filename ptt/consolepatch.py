"""A dispatcher console's temporary patch of two groups (issue 15), without I/O: the console is a member of both
and forwards what it hears in one into the other, asking for the floor there as a member would.

Voice heard in group A (a decoded frame) → the floor of B is asked for (once); while it is granted the console
sends A's voice into B. When A has been silent for ``hang`` seconds the floor of B is released. Both directions
work alike; the floor makes them exclusive in practice (while the console talks in B, B's relay forwards nobody
else's voice to it). Ending the patch releases whatever it holds. Actions are ``(verb, group)`` with ``verb``
"request" or "release"; the shell carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HANG", "Action", "Patch"]

HANG = 0.6
Action = tuple[str, str]


@dataclass
class Patch:
    a: str
    b: str
    hang: float = HANG
    _last_voice: dict[str, float] = field(default_factory=dict)  # source group -> when its voice was last heard
    _held: set[str] = field(default_factory=set)  # target groups whose floor the patch asked for

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError("a patch joins two different groups")

    def other(self, group: str) -> str | None:
        return self.b if group == self.a else self.a if group == self.b else None

    def voice(self, source: str, now: float) -> list[Action]:
        """A frame of voice was heard in ``source``: forward it (the target's floor is asked for once)."""
        target = self.other(source)
        if target is None or source in self._held:  # the console itself talks in source: not someone's voice
            return []
        self._last_voice[source] = now
        if target in self._held:
            return []
        self._held.add(target)
        return [("request", target)]

    def target_of(self, source: str) -> str | None:
        """Where voice heard in ``source`` goes now (None: nowhere)."""
        target = self.other(source)
        return target if target is not None and target in self._held else None

    def tick(self, now: float) -> list[Action]:
        """Release the targets whose source has been silent for ``hang`` seconds."""
        out: list[Action] = []
        for source, last in list(self._last_voice.items()):
            target = self.other(source)
            if target is not None and now - last >= self.hang and target in self._held:
                self._held.discard(target)
                del self._last_voice[source]
                out.append(("release", target))
        return out

    def end(self) -> list[Action]:
        """The patch ends: every floor it holds or asked for is released."""
        out = [("release", target) for target in sorted(self._held)]
        self._held.clear()
        self._last_voice.clear()
        return out
