"""The group store's part of deferred delivery (issue 17, schema 6): the index of stored voice messages.

A row is one voice message from a sender to an addressee: the PCK I_MESSAGE (SAKKE-encrypted to the addressee: the
server cannot open it), the SHA-256 of its signed octets (unique: the same I_MESSAGE is never stored twice), the
time it was made (its T), the size, where its SRTP file is (``server.voicemessages`` writes it), when the
addressee fetched it (delivered) and reported it played, and how far the sender has been told (0 stored,
1 delivered, 2 played), so a sender that was offline learns it at its next login. A message expires one key
period after it was made (``ptt.voicemessage.stored_max_age``: the addressee could not open it later anyway).
A message to a group (``to_group``: the addressee is the group, no I_MESSAGE, the SRTP under its GMK) is for the
members who were members when it was stored, other than its sender; each member's fetch and play is a receipt
(``voice_message_receipts``) the sender is told of; it is kept a day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.groups.database import StoreDatabase
from server.groups.records import GroupError

__all__ = ["STATES", "MessageLimits", "MessageRefused", "Receipt", "VoiceMessageRecord", "VoiceMessageStore"]

STATES = ("stored", "delivered", "played")
_COLUMNS = (
    "id, sender, addressee, imessage, sent_at, stored_at, expires_at, packets, octets, seconds, path, "
    "delivered_at, played_at, sender_told, to_group"
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
    to_group: bool = False
    """A message to the group ``addressee`` (under its GMK): delivery is per member (``Receipt``)."""

    @property
    def state(self) -> int:
        return 2 if self.played_at is not None else 1 if self.delivered_at is not None else 0

    def notice(self, state: int | None = None) -> dict[str, Any]:
        """What the addressee (a member, for a group message: with its own ``state``) is told (``message_new``)."""
        notice = {
            "type": "message_new",
            "message": self.id,
            "from": self.sender,
            "sent": self.sent_at,
            "seconds": self.seconds,
            "state": STATES[self.state if state is None else state],
        }
        if self.to_group:
            notice["group"] = self.addressee
        return notice

    def status(self) -> dict[str, Any]:
        """What the sender is told of it (``message_status``)."""
        return {"type": "message_status", "message": self.id, "to": self.addressee, "state": STATES[self.state]}

    def __repr__(self) -> str:
        return f"VoiceMessageRecord({self.id}, {self.sender} → {self.addressee}, {STATES[self.state]})"


def _record(row: Sequence[Any]) -> VoiceMessageRecord:
    i, sender, addressee, imessage, sent, stored, expires, packets, octets, seconds, path, delivered, played = row[:13]
    told, to_group = row[13:]
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
        bool(to_group),
    )


@dataclass(frozen=True)
class Receipt:
    """A group message's delivery to one member."""

    message: VoiceMessageRecord
    member: str
    delivered_at: float | None
    played_at: float | None
    sender_told: int

    @property
    def state(self) -> int:
        return 2 if self.played_at is not None else 1 if self.delivered_at is not None else 0

    def status(self) -> dict[str, Any]:
        """What the sender is told (``message_status`` for one member of the group)."""
        status = self.message.status()
        status.update(to=self.member, group=self.message.addressee, state=STATES[self.state])
        return status


def _receipt(row: Sequence[Any], member: str) -> Receipt:
    delivered, played, told = row[-3:]
    return Receipt(
        _record(row[:-3]),
        member,
        None if delivered is None else float(delivered),
        None if played is None else float(played),
        0 if told is None else int(told),
    )


@dataclass(frozen=True)
class MessageLimits:
    waiting_per_addressee: int = 50
    """Unplayed messages one addressee may have waiting (a full mailbox refuses more)."""
    per_pair: int = 10
    """Unplayed messages from one sender to one addressee."""
    per_sender: int = 100
    """Unplayed messages one sender may have stored in all."""
    per_group: int = 200
    """Messages kept for one group (until they expire: a day)."""
    per_sender_group: int = 50
    """Messages from one sender kept for one group."""


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
        to_group: bool = False,
    ) -> VoiceMessageRecord:
        """Index a stored message; MessageRefused if its I_MESSAGE (for a group message: its first packet) is
        stored already or a limit is reached."""
        with self._tx() as db:
            self.check_voice_message(sender, addressee, digest, limits, db=db, to_group=to_group, now=now)
            (row_id,) = db.execute(
                "INSERT INTO voice_messages (sender, addressee, digest, imessage, sent_at, stored_at, expires_at, "
                "packets, octets, seconds, path, to_group) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (sender, addressee, digest, imessage, sent_at, now, expires_at, packets, octets, seconds, path,
                 int(to_group)),
            ).fetchone()  # fmt: skip
            row = db.execute(f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ?", (row_id,)).fetchone()
        return _record(row)

    def check_voice_message(
        self,
        sender: str,
        addressee: str,
        digest: bytes,
        limits: MessageLimits = MessageLimits(),
        *,
        db: Any = None,
        to_group: bool = False,
        now: float = 0.0,
    ) -> None:
        """MessageRefused if the message could not be stored now (checked again when it is)."""
        if db is None:
            with self._read() as reading:
                self.check_voice_message(sender, addressee, digest, limits, db=reading, to_group=to_group, now=now)
            return
        if db.execute("SELECT 1 FROM voice_messages WHERE digest = ?", (digest,)).fetchone() is not None:
            raise MessageRefused(409, "this message is stored already (a replayed upload)")
        counts: tuple[tuple[str, tuple[str, ...], int, str], ...]
        alive_args: tuple[float, ...]
        if to_group:  # kept a day whether played or not: count what is kept
            alive, alive_args, what = "to_group = 1 AND expires_at > ?", (now,), "messages kept"
            counts = (
                ("addressee = ?", (addressee,), limits.per_group, f"{addressee} holds too many"),
                ("sender = ? AND addressee = ?", (sender, addressee), limits.per_sender_group, "too many to it sent"),
            )
        else:
            alive, alive_args, what = "to_group = 0 AND played_at IS NULL", (), "unplayed messages"
            counts = (
                ("addressee = ?", (addressee,), limits.waiting_per_addressee, f"{addressee}'s mailbox is full"),
                (
                    "sender = ? AND addressee = ?",
                    (sender, addressee),
                    limits.per_pair,
                    f"too many unplayed to {addressee}",
                ),
                ("sender = ?", (sender,), limits.per_sender, "too many unplayed messages sent"),
            )
        for where, args, limit, text in counts:
            query = f"SELECT COUNT(*) FROM voice_messages WHERE {where} AND {alive}"
            (count,) = db.execute(query, (*args, *alive_args)).fetchone()
            if int(count) >= limit:
                raise MessageRefused(429, f"{text} ({limit} {what})")

    def voice_message(self, message_id: int) -> VoiceMessageRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM voice_messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _record(row)

    def inbox(self, addressee: str, *, now: float, limit: int = 200) -> list[VoiceMessageRecord]:
        """The last ``limit`` unexpired messages to ``addressee``, oldest first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM (SELECT * FROM voice_messages WHERE addressee = ? AND expires_at > ? "
                "AND to_group = 0 ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",
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

    # --- messages to groups: a receipt per member ---

    def group_inbox(self, member: str, *, now: float, limit: int = 200) -> list[Receipt]:
        """The unexpired messages to the groups ``member`` is in, sent since it joined, by others; with its
        receipt (state 0 if it has none yet), oldest first."""
        columns = ", ".join(f"v.{c}" for c in _COLUMNS.split(", "))
        with self._read() as db:
            rows = db.execute(
                f"SELECT {columns}, r.delivered_at, r.played_at, r.sender_told FROM voice_messages v "
                "JOIN members m ON m.group_uri = v.addressee AND m.uri = ? AND m.added_at <= v.stored_at "
                "LEFT JOIN voice_message_receipts r ON r.message_id = v.id AND r.member = ? "
                "WHERE v.to_group = 1 AND v.sender <> ? AND v.expires_at > ? ORDER BY v.id DESC LIMIT ?",
                (member, member, member, now, limit),
            ).fetchall()
        return [_receipt(r, member) for r in reversed(rows)]

    def group_receipt(self, message_id: int, member: str, *, now: float) -> Receipt | None:
        """``member``'s receipt of group message ``message_id``: None unless it may have it (a member of the group
        since before it was stored, not its sender, not expired)."""
        for receipt in self.group_inbox(member, now=now, limit=1_000_000):
            if receipt.message.id == message_id:
                return receipt
        return None

    def mark_group_receipt(self, message_id: int, member: str, state: int, *, now: float) -> None:
        """``member`` fetched (1) or played (2) a group message (the first time counts; played implies delivered)."""
        played = now if state == 2 else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO voice_message_receipts (message_id, member, delivered_at, played_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (message_id, member) DO UPDATE SET delivered_at = "
                "COALESCE(voice_message_receipts.delivered_at, excluded.delivered_at), played_at = "
                "COALESCE(voice_message_receipts.played_at, excluded.played_at)",
                (message_id, member, now, played),
            )

    def untold_receipts(self, sender: str) -> list[Receipt]:
        """The receipts of the sender's group messages that moved on since it was last told."""
        columns = ", ".join(f"v.{c}" for c in _COLUMNS.split(", "))
        with self._read() as db:
            rows = db.execute(
                f"SELECT {columns}, r.delivered_at, r.played_at, r.sender_told, r.member FROM voice_messages v "
                "JOIN voice_message_receipts r ON r.message_id = v.id WHERE v.sender = ? AND r.sender_told < "
                "(CASE WHEN r.played_at IS NOT NULL THEN 2 WHEN r.delivered_at IS NOT NULL THEN 1 ELSE 0 END) "
                "ORDER BY v.id, r.member",
                (sender,),
            ).fetchall()
        return [_receipt(r[:-1], str(r[-1])) for r in rows]

    def mark_receipt_told(self, message_id: int, member: str, state: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE voice_message_receipts SET sender_told = ? WHERE message_id = ? AND member = ? "
                "AND sender_told < ?",
                (state, message_id, member, state),
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
                db.execute("DELETE FROM voice_message_receipts WHERE message_id = ?", (message_id,))
                db.execute("DELETE FROM voice_messages WHERE id = ?", (message_id,))
            self._audit(db, now, None, "voice-message-purge", f"{len(ids)} voice messages past their retention")
