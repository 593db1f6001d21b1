"""Voice message uploads in chunks over the control channel (issue 17), without I/O: the server's assembly of one
sender's uploads, bounded in size, count and time, and the packet lists of the chunks.

  C message_send {upload, offset, packets, to?, imessage?, total?}   → S message_ack {upload, received, message?}

The first chunk (``offset`` 0) names the addressee, carries the PCK I_MESSAGE and the ``total`` packet count; each
chunk carries at most ``CHUNK_OCTETS`` of SRTP as [offset in ms, base64] and must continue where the last ended.
The reply says how many packets the server holds; the last one carries the stored message's ID. An upload idle
for ``IDLE`` seconds is forgotten (its sender starts again).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from ptt.voicemessage import MAX_PACKET_OCTETS, MAX_PACKETS, MAX_SECONDS, UploadRefused

__all__ = [
    "CHUNK_OCTETS",
    "CHUNK_PACKETS",
    "IDLE",
    "MAX_PENDING",
    "MAX_UPLOAD_OCTETS",
    "Upload",
    "UploadTable",
    "decode_packets",
    "encode_packets",
    "is_upload_id",
]

CHUNK_OCTETS = 96 * 1024
"""SRTP octets per chunk: base64 and JSON keep a chunk's frame well under the 256 KiB frame limit."""
CHUNK_PACKETS = 1000
"""Packets per chunk at most (a frame's arrays hold at most 4096 items: ``ptt.control.JSON_LIMITS``)."""
MAX_UPLOAD_OCTETS = 1024 * 1024
"""A voice message's SRTP at most: two minutes of Opus at up to ~64 kbit/s (24 kbit/s takes ~580 kB)."""
MAX_PENDING = 2
"""Uploads one sender may have under way at once."""
IDLE = 30.0


def is_upload_id(value: object) -> bool:
    """``up:`` and 16 lower-case hex digits (the client's random name for one upload)."""
    return (
        isinstance(value, str)
        and len(value) == 19
        and value.startswith("up:")
        and all(c in "0123456789abcdef" for c in value[3:])
    )


def encode_packets(packets: list[tuple[float, bytes]]) -> list[list[object]]:
    return [[round(at * 1000), base64.b64encode(p).decode("ascii")] for at, p in packets]


def decode_packets(items: object) -> list[tuple[float, bytes]]:
    """[[ms, base64], …] → [(seconds, octets), …]; ValueError with the reason for anything else."""
    if not isinstance(items, list):
        raise ValueError("packets: not a list")
    if len(items) > CHUNK_PACKETS:
        raise ValueError(f"packets: more than {CHUNK_PACKETS} in one chunk")
    packets: list[tuple[float, bytes]] = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int or not isinstance(item[1], str):
            raise ValueError("packets: each is [offset in ms, base64]")
        if not 0 <= item[0] <= MAX_SECONDS * 1000 + 1000:
            raise ValueError(f"packets: offset {item[0]} ms out of range")
        try:
            data = base64.b64decode(item[1].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("packets: not base64") from None
        if not 12 <= len(data) <= MAX_PACKET_OCTETS:
            raise ValueError(f"packets: a packet of {len(data)} octets")
        packets.append((item[0] / 1000.0, data))
    return packets


@dataclass(repr=False)
class Upload:
    sender: str
    upload: str
    to: str
    imessage: bytes
    digest: bytes
    total: int
    last: float
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    octets: int = 0

    @property
    def complete(self) -> bool:
        return len(self.packets) == self.total

    @property
    def seconds(self) -> float:
        return round(self.packets[-1][0] + 0.02, 3) if self.packets else 0.0

    def __repr__(self) -> str:
        return f"Upload({self.upload}, {self.sender} → {self.to}, {len(self.packets)}/{self.total})"


class UploadTable:
    """The uploads under way, per sender; every refusal is an :class:`UploadRefused`."""

    def __init__(self, *, max_pending: int = MAX_PENDING, max_octets: int = MAX_UPLOAD_OCTETS) -> None:
        self.max_pending = max_pending
        self.max_octets = max_octets
        self._uploads: dict[tuple[str, str], Upload] = {}

    def __len__(self) -> int:
        return len(self._uploads)

    def begin(
        self, sender: str, upload: str, to: str, imessage: bytes, digest: bytes, total: object, now: float
    ) -> Upload:
        """A new upload (its I_MESSAGE already checked by ``ptt.voicemessage.check_upload``)."""
        self.sweep(now)
        if not is_upload_id(upload):
            raise UploadRefused(400, "message_send: upload must be 'up:' and 16 hex digits")
        if type(total) is not int or not 1 <= total <= MAX_PACKETS:
            raise UploadRefused(413, f"message_send: total must be 1 to {MAX_PACKETS} packets ({MAX_SECONDS} s)")
        if (sender, upload) in self._uploads:
            raise UploadRefused(409, f"upload {upload} is already under way")
        if sum(1 for s, _ in self._uploads if s == sender) >= self.max_pending:
            raise UploadRefused(429, f"at most {self.max_pending} uploads at once: finish one first")
        if any(u.digest == digest for u in self._uploads.values()):
            raise UploadRefused(409, "this I_MESSAGE is already being uploaded")
        entry = Upload(sender, upload, to, bytes(imessage), digest, total, now)
        self._uploads[(sender, upload)] = entry
        return entry

    def add(self, sender: str, upload: str, offset: object, packets: list[tuple[float, bytes]], now: float) -> Upload:
        """Add a chunk; the upload (``complete`` once every packet is in: then it is no longer held here)."""
        entry = self._uploads.get((sender, upload))
        if entry is None:
            raise UploadRefused(404, f"no upload {upload} under way (idle for {IDLE:.0f} s, or never begun)")
        if offset != len(entry.packets):
            raise UploadRefused(400, f"upload {upload}: chunk at {offset!r}, expected {len(entry.packets)}")
        octets = entry.octets + sum(len(p) for _, p in packets)
        if len(entry.packets) + len(packets) > entry.total or octets > self.max_octets:
            self._uploads.pop((sender, upload), None)
            raise UploadRefused(413, f"upload {upload}: more than {entry.total} packets or {self.max_octets} octets")
        previous = entry.packets[-1][0] if entry.packets else 0.0
        for at, _ in packets:
            if at < previous:
                self._uploads.pop((sender, upload), None)
                raise UploadRefused(400, f"upload {upload}: packet offsets go backwards")
            previous = at
        entry.packets.extend(packets)
        entry.octets = octets
        entry.last = now
        if entry.complete:
            del self._uploads[(sender, upload)]
        return entry

    def sweep(self, now: float) -> list[Upload]:
        """Forget uploads idle for ``IDLE`` seconds; they are returned."""
        stale = [k for k, u in self._uploads.items() if now - u.last > IDLE]
        return [self._uploads.pop(k) for k in stale]
