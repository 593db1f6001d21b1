"""The group store's part of deferred delivery (issue 17, schema 6): the index of stored voice messages.

A row is one voice message from a sender to an addressee: the PCK I_MESSAGE (SAKKE-encrypted to the addressee: the
server cannot open it), the SHA-256 of its signed octets (unique: the same I_MESSAGE is never stored twice), the
time it was made (its T), the size, where its SRTP file is (``server.voicemessages`` writes it), when the
addressee fetched it (delivered) and reported it played, and how far the sender has been told (0 stored,
1 delivered, 2 played), so a sender that was offline learns it at its next login. A message expires one key
period after it was made (``ptt.voicemessage.stored_max_age``: the addressee could not open it later anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.groups.database import StoreDatabase
from server.groups.records import GroupError

__all__ = ["STATES", "MessageRefused", "VoiceMessageRecord", "VoiceMessageStore"]

STATES = ("stored", "delivered", "played")
_COLUMNS = (
    "id, sender, addressee, imessage, sent_at, stored_at, expires_at, packets, octets, seconds, path, "
    "delivered_at, played_at, sender_told"
)


class MessageRefused(GroupError):
    """A voice message the store does not take: ``code`` 409 (stored already) or 429 (a limit reached)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True, repr=False)
class VoiceMessageRecord:
    id: int
    sender: str
    addressee: str
    imessage: bytes
    sent_at: float
    stored_at: float
    expires_at: float
    packets: int
    octets: int
    seconds: float
    path: str
    delivered_at: float | None
    played_at: float | None
    sender_told: int

    @property
    def state(self) -> int:
        return 2 if self.played_at is not None else 1 if self.delivered_at is not None else 0

    def notice(self) -> dict[str, Any]:
        """What the addressee is told of it (``message_new``)."""
        return {
            "type": "message_new",
            "message": self.id,
            "from": self.sender,
            "sent": self.sent_at,
            "seconds": self.seconds,
            "state": STATES[self.state],
        }

    def status(self) -> dict[str, Any]:
        """What the sender is told of it (``message_status``)."""
        return {"type": "message_status", "message": self.id, "to": self.addressee, "state": STATES[self.state]}

    def __repr__(self) -> str:
        return f"VoiceMessageRecord({self.id}, {self.sender} → {self.addressee}, {STATES[self.state]})"


def _record(row: Sequence[Any]) -> VoiceMessageRecord:
    i, sender, addressee, imessage, sent, stored, expires, packets, octets, seconds, path, delivered, played, told = row
    return VoiceMessageRecord(
        int(i),
        str(sender),
        str(addressee),
        bytes(imessage),
        float(sent),
        float(stored),
        float(expires),
        int(packets),
        int(octets),
        float(seconds),
        str(path),
        None if delivered is None else float(delivered),
        None if played is None else float(played),
        int(told),
    )


@dataclass(frozen=True)
class MessageLimits:
    waiting_per_addressee: int = 50
    """Unplayed messages one addressee may have waiting (a full mailbox refuses more)."""
    per_pair: int = 10
    """Unplayed messages from one sender to one addressee."""
    per_sender: int = 100
    """Unplayed messages one sender may have stored in all."""


class VoiceMessageStore(StoreDatabase):
    """Voice messages in the group store's database (the SRTP itself is in files)."""

    def add_voice_message(
        self,
        *,
        sender: str,
        addressee: str,
        digest: bytes,
        imessage: bytes,
        sent_at: float,
        expires_at: float,
        packets: int,
        octets: int,
        seconds: float,
        path: str,
        now: float,
        limits: MessageLimits = MessageLimits(),
    ) -> VoiceMessageRecord:
        """Index a stored message; MessageRefused if its I_MESSAGE is stored already or a limit is reached."""
        with self._tx() as db:
            self.check_voice_message(sender, addressee, digest, limits, db=db)
            (row_id,) = db.execute(
                "INSERT INTO voice_messages (sender, addressee, digest, imessage, sent_at, stored_at, expires_at, "
                "packets, octets, seconds, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (sender, addressee, digest, imessage, sent_at, now, expires_at, packets, octets, seconds, path),
            ).fetchone()
            row = db.execute(f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ?", (row_id,)).fetchone()
        return _record(row)

    def check_voice_message(
        self, sender: str, addressee: str, digest: bytes, limits: MessageLimits = MessageLimits(), *, db: Any = None
    ) -> None:
        """MessageRefused if the message could not be stored now (checked again when it is)."""
        if db is None:
            with self._read() as reading:
                self.check_voice_message(sender, addressee, digest, limits, db=reading)
            return
        if db.execute("SELECT 1 FROM voice_messages WHERE digest = ?", (digest,)).fetchone() is not None:
            raise MessageRefused(409, "this I_MESSAGE is stored already (a replayed upload)")
        unplayed = "played_at IS NULL"
        counts = (
            ("addressee = ?", (addressee,), limits.waiting_per_addressee, f"{addressee}'s mailbox is full"),
            ("sender = ? AND addressee = ?", (sender, addressee), limits.per_pair, f"too many unplayed to {addressee}"),
            ("sender = ?", (sender,), limits.per_sender, "too many unplayed messages sent"),
        )
        for where, args, limit, text in counts:
            (count,) = db.execute(f"SELECT COUNT(*) FROM voice_messages WHERE {where} AND {unplayed}", args).fetchone()
            if int(count) >= limit:
                raise MessageRefused(429, f"{text} ({limit} unplayed messages)")

    def voice_message(self, message_id: int) -> VoiceMessageRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _record(row)

    def inbox(self, addressee: str, *, now: float, limit: int = 200) -> list[VoiceMessageRecord]:
        """The last ``limit`` unexpired messages to ``addressee``, oldest first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM (SELECT * FROM voice_messages WHERE addressee = ? AND expires_at > ? "
                "ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",
                (addressee, now, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def mark_voice_message(self, message_id: int, addressee: str, state: int, *, now: float) -> VoiceMessageRecord:
        """Record that ``addressee`` fetched (1) or played (2) its message (the first time counts); KeyError if
        there is no such message *to it*."""
        column = "delivered_at" if state == 1 else "played_at"
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ? AND addressee = ?", (message_id, addressee)
            ).fetchone()
            if row is None:
                raise KeyError(message_id)
            db.execute(f"UPDATE voice_messages SET {column} = COALESCE({column}, ?) WHERE id = ?", (now, message_id))
            if state == 2:  # played implies delivered
                db.execute(
                    "UPDATE voice_messages SET delivered_at = COALESCE(delivered_at, ?) WHERE id = ?", (now, message_id)
                )
            row = db.execute(f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ?", (message_id,)).fetchone()
        return _record(row)

    def untold(self, sender: str) -> list[VoiceMessageRecord]:
        """The sender's messages whose state moved on since it was last told."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM voice_messages WHERE sender = ? AND sender_told < "
                "(CASE WHEN played_at IS NOT NULL THEN 2 WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END) ORDER BY id",
                (sender,),
            ).fetchall()
        return [_record(r) for r in rows]

    def mark_told(self, message_id: int, state: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE voice_messages SET sender_told = ? WHERE id = ? AND sender_told < ?",
                (state, message_id, state),
            )

    # --- retention ---

    def expired_voice_messages(self, now: float, limit: int = 1000) -> list[VoiceMessageRecord]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM voice_messages WHERE expires_at <= ? ORDER BY id LIMIT ?", (now, limit)
            ).fetchall()
        return [_record(r) for r in rows]

    def delete_voice_messages(self, ids: list[int], *, now: float) -> None:
        if not ids:
            return
        with self._tx() as db:
            for message_id in ids:
                db.execute("DELETE FROM voice_messages WHERE id = ?", (message_id,))
            self._audit(db, now, None, "voice-message-purge", f"{len(ids)} voice messages past their retention")
