"""Deferred delivery of voice messages (issue 17): uploads, storage, notification, fetching and the sender's
"delivered" / "played", over the control channel. The checks and the upload assembly are pure
(``ptt.voicemessage``, ``ptt.voicemessage_upload``); the index is the group store's
(``server.groups.voicemessages``); here they are wired to the reactor, the crypto workers and the store thread.

  C message_send {upload, offset, packets, to?, imessage?, total?}  → S message_ack {upload, received, message?}
  S message_new {message, from, sent, seconds, state}   (to the addressee: at once if online, else at its login)
  C message_list {}                                     → S message_inbox {messages: [message_new …]}
  C message_fetch {message, offset?}                    → S message_data {message, from, offset, total, packets,
                                                                          imessage?}
  C message_played {message}                            → S message_played_ok {message}
  S message_status {message, to, state}                 (to the sender: "delivered" once the addressee fetched
                                                         it, "played" once it said so; at its login if offline)

A message to a group (``to`` a group URI, no ``imessage``: the SRTP under the group's current GMK,
``ptt.voicemessage_group``) is taken from a member, under the group's current or previous GMK, told to every other
member, fetched by those who were members when it was stored; ``message_data`` then names the ``group``, and
``message_status`` names the member (``to``) and the ``group``. Kept a day.

Only the addressee fetches: another identity's request and a missing message both answer 404. A message is stored
whether the addressee is online or not, once the I_MESSAGE passed ``check_upload`` (sender and addressee UIDs, T
fresh, not stored before) and the sender's ECCSI signature verified (in a worker). Files:
``<data>/messages/<SHA-256 of the addressee, 16 hex>/<ms>-<8 hex>.pttr`` (0600, written then renamed; the
recording format), ciphertext only. Retention: a message is deleted one key period after it was made.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from ptt.control import ControlProtocolError, b64, unb64
from ptt.groupinfo import Refused
from ptt.mikey.imessage import KmsDomain, replay_key
from ptt.ratelimit import BucketTable
from ptt.recording import RecordingFormatError, encode_burst, parse_burst
from ptt.voicemessage import UploadRefused, check_upload, sender_signature_valid, stored_max_age
from ptt.voicemessage_group import check_group_keys, group_digest
from ptt.voicemessage_upload import CHUNK_OCTETS, CHUNK_PACKETS, Upload, UploadTable, decode_packets, encode_packets
from server.groups.mediablobs import media_blobs
from server.groups.records import StoreError
from server.groups.store import GroupStore
from server.groups.voicemessages import STATES, MessageRefused, Receipt, VoiceMessageRecord

log = logging.getLogger("ptt.server.voicemessages")

NEW_RATE, NEW_BURST = 0.5, 5
"""New uploads a sender may begin: one every two seconds, five at once."""
RATE, BURST = 50.0, 200
"""Every voice message request of one identity (chunks and fetches of a two-minute message fit in the burst)."""
SUFFIX = ".pttr"
GROUP_RETENTION = 86400.0
"""A message to a group is kept a day: for members catching up on a shift (members keep few past GMKs)."""


def _refused(exc: UploadRefused | MessageRefused) -> Refused:
    return Refused(exc.code, str(exc))


class VoiceMessages:
    """What ``CallShell.on_voice_message`` runs, and the pushes at login."""

    def __init__(
        self,
        reactor: Any,
        store: GroupStore,
        directory: Path,
        store_pool: Any,
        *,
        domain: KmsDomain,
        verify: Any,
        online: Any,
        push: Any,
    ) -> None:
        """``verify(f, *args)`` runs a signature check off the reactor (the crypto pool); ``online(uri)`` and
        ``push(uri, message) -> sessions reached`` are the control channel's."""
        self.reactor, self.store, self.store_pool = reactor, store, store_pool
        self.blobs = media_blobs(directory, store)
        self.domain, self.verify, self.online, self.push = domain, verify, online, push
        self.uploads = UploadTable()
        self._new: BucketTable[str] = BucketTable(NEW_RATE, NEW_BURST)
        self._any: BucketTable[str] = BucketTable(RATE, BURST)
        self._log_limit: BucketTable[str] = BucketTable(0.2, 3)
        self.stats = {"stored": 0, "refused": 0, "delivered": 0, "played": 0, "purged": 0}
        self.elsewhere: Callable[[str, dict[str, Any]], None] | None = None
        """With several nodes: ``ClusterNode.push_elsewhere`` (a notice or status for a user not connected here)."""

    # --- on the reactor ---

    def handle(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        if not self._any.take(uri, now):
            raise Refused(429, "too many voice message requests: retry in a second")
        for stale in self.uploads.sweep(now):
            log.info("voice message upload %s of %s idle: forgotten", stale.upload, stale.sender)
        kind = message["type"]
        d: defer.Deferred[dict[str, Any]]
        if kind == "message_send":
            d = self._send(uri, message, now)
        elif kind == "message_list":
            d = self._thread(self._inbox, uri, now)
        else:
            number = message.get("message")
            offset = message.get("offset", 0)
            if type(number) is not int or type(offset) is not int or number < 0 or offset < 0:
                raise Refused(400, f"{kind}: message and offset must be non-negative integers")
            function = self._fetch if kind == "message_fetch" else self._played
            d = self._thread(function, uri, number, offset, now)

        def refused(failure: Any) -> Any:
            if failure.check(Refused) and self._log_limit.take(uri, self.reactor.seconds()):
                log.info("voice message request of %s refused: %s", uri, failure.value)
            if failure.check(Refused) and kind == "message_send":
                self.stats["refused"] += 1
            return failure

        return d.addErrback(refused)

    def _thread(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(self.reactor, self.store_pool, function, *args)

    @defer.inlineCallbacks
    def _send(self, uri: str, message: dict[str, Any], now: float) -> Any:
        upload, offset = message.get("upload"), message.get("offset")
        try:
            packets = decode_packets(message.get("packets"))
        except ValueError as exc:
            raise Refused(400, f"message_send: {exc}") from None
        if offset == 0:
            yield self._begin(uri, message, packets, now)
        try:
            entry = self.uploads.add(uri, str(upload), offset, packets, now)
        except UploadRefused as exc:
            raise _refused(exc) from None
        reply: dict[str, Any] = {"type": "message_ack", "upload": upload, "received": len(entry.packets)}
        if entry.complete:
            record, recipients = yield self._thread(self._store, entry, now)
            reply["message"] = record.id
            self.stats["stored"] += 1
            log.info("voice message %d from %s to %s stored (%.1f s)", record.id, uri, entry.to, record.seconds)
            notified = [r for r in recipients if self._push_anywhere(r, record.notice(0))]
            if notified:
                log.info("voice message %d: %s notified", record.id, ", ".join(notified))
        return reply

    @defer.inlineCallbacks
    def _begin(self, uri: str, message: dict[str, Any], packets: list[tuple[float, bytes]], now: float) -> Any:
        to, text, total = message.get("to"), message.get("imessage"), message.get("total")
        if not isinstance(to, str) or not 0 < len(to) <= 255 or not isinstance(text, str | None):
            raise Refused(400, "message_send: the first chunk names the addressee (to) and carries the imessage")
        if not self._new.take(uri, now):
            raise Refused(429, "too many voice messages: retry in a few seconds")
        if text is None:  # to a group, under its GMK (ptt.voicemessage_group)
            try:
                digest = group_digest(packets)
            except UploadRefused as exc:
                raise _refused(exc) from None
            yield self._thread(self._admissible_group, uri, to, digest, packets, now)
            try:
                self.uploads.begin(uri, str(message.get("upload")), to, b"", digest, total, now)
            except UploadRefused as exc:
                raise _refused(exc) from None
            return
        try:
            imessage = unb64(text, "imessage")
        except ControlProtocolError as exc:
            raise Refused(400, f"message_send: {exc}") from None
        try:
            checked = check_upload(imessage, uri, to, self.domain, now)
        except UploadRefused as exc:
            raise _refused(exc) from None
        valid = yield self.verify(sender_signature_valid, imessage, self.domain)
        if not valid:
            raise Refused(403, "I_MESSAGE refused: the signature does not verify for the sender")
        online = bool(self.online(to))
        yield self._thread(self._admissible, uri, to, checked.digest, online)
        try:
            self.uploads.begin(uri, str(message.get("upload")), to, imessage, checked.digest, total, now)
        except UploadRefused as exc:
            raise _refused(exc) from None

    # --- on the store thread ---

    def _admissible(self, sender: str, to: str, digest: bytes, online: bool) -> None:
        if not online and not self.store.groups_of(to):
            raise Refused(404, f"{to} is not a user of this server")  # known: a member of a group, or online
        try:
            self.store.check_voice_message(sender, to, digest)
        except MessageRefused as exc:
            raise _refused(exc) from None

    def _group_keys(self, group: str) -> list[bytes]:
        """The GMK-IDs a group message may be under: the group's current GMK and the one before it."""
        return [k.gmk_id for k in self.store.key_history(group)[-2:]]

    def _admissible_group(
        self, sender: str, group: str, digest: bytes, packets: list[tuple[float, bytes]], now: float
    ) -> None:
        if self.store.member(group, sender) is None:
            raise Refused(404, f"{sender} is not a member of {group}")
        try:
            check_group_keys(packets, self._group_keys(group))
            self.store.check_voice_message(sender, group, digest, to_group=True, now=now)
        except (UploadRefused, MessageRefused) as exc:
            raise _refused(exc) from None

    def addressee_directory(self, addressee: str) -> str:
        return hashlib.sha256(addressee.encode()).hexdigest()[:16]

    def _store(self, entry: Upload, now: float) -> tuple[VoiceMessageRecord, list[str]]:
        """Write the file and index it; the record and whom to tell (the addressee, or the group's members)."""
        to_group = not entry.imessage
        if to_group:
            try:
                check_group_keys(entry.packets, self._group_keys(entry.to))
            except UploadRefused as exc:
                raise _refused(exc) from None
            sent_at, expires_at = now, now + GROUP_RETENTION
        else:
            _, sent_at = replay_key(entry.imessage)  # checked at the upload's start
            expires_at = sent_at + stored_max_age(self.domain)
        relative = f"{self.addressee_directory(entry.to)}/{int(now * 1000)}-{os.urandom(4).hex()}{SUFFIX}"
        ref = self.blobs.put(relative, encode_burst(entry.packets), now=now)
        try:
            record = self.store.add_voice_message(
                sender=entry.sender,
                addressee=entry.to,
                digest=entry.digest,
                imessage=entry.imessage,
                sent_at=sent_at,
                expires_at=expires_at,
                packets=len(entry.packets),
                octets=entry.octets,
                seconds=entry.seconds,
                path=ref,
                now=now,
                to_group=to_group,
            )
        except MessageRefused as exc:
            self.blobs.delete(ref)
            raise _refused(exc) from None
        if not to_group:
            return record, [entry.to]
        return record, [m.uri for m in self.store.members(entry.to) if m.uri != entry.sender]

    def _inbox(self, uri: str, now: float) -> dict[str, Any]:
        notices = [r.notice() for r in self.store.inbox(uri, now=now)]
        notices += [r.message.notice(r.state) for r in self.store.group_inbox(uri, now=now)]
        return {"type": "message_inbox", "messages": notices}

    def _mine(self, uri: str, number: int, now: float) -> tuple[VoiceMessageRecord, Receipt | None]:
        """The message if ``uri`` may have it (and its receipt, for a group message); else 404, alike for a
        missing, expired or someone else's message."""
        record = self.store.voice_message(number)
        receipt = None
        if record is not None and record.to_group:
            receipt = self.store.group_receipt(number, uri, now=now)
            if receipt is not None:
                return record, receipt
        elif record is not None and record.addressee == uri and record.expires_at > now:
            return record, None
        raise Refused(404, f"no voice message {number} for {uri}")

    def _fetch(self, uri: str, number: int, offset: int, now: float) -> dict[str, Any]:
        record, receipt = self._mine(uri, number, now)
        try:
            packets = parse_burst(self.blobs.get(record.path))
        except (OSError, ValueError, RecordingFormatError) as exc:
            log.error("voice message %d unreadable: %s", number, exc)
            raise Refused(500, f"voice message {number} is unreadable") from None
        chunk: list[tuple[float, bytes]] = []
        size = 0
        for at, packet in packets[offset:]:
            if (size + len(packet) > CHUNK_OCTETS or len(chunk) >= CHUNK_PACKETS) and chunk:
                break
            chunk.append((at, packet))
            size += len(packet)
        reply: dict[str, Any] = {
            "type": "message_data",
            "message": number,
            "from": record.sender,
            "offset": offset,
            "total": len(packets),
            "packets": encode_packets(chunk),
        }
        if offset == 0 and receipt is not None:
            reply["group"] = record.addressee
            if receipt.delivered_at is None:
                self._receipt_changed(number, uri, 1, now)
        elif offset == 0:
            reply["imessage"] = b64(record.imessage)
            if record.delivered_at is None:
                self._changed(self.store.mark_voice_message(number, uri, 1, now=now))
        return reply

    def _played(self, uri: str, number: int, _offset: int, now: float) -> dict[str, Any]:
        _, receipt = self._mine(uri, number, now)
        if receipt is not None:
            self._receipt_changed(number, uri, 2, now)
        else:
            self._changed(self.store.mark_voice_message(number, uri, 2, now=now))
        return {"type": "message_played_ok", "message": number}

    def _changed(self, record: VoiceMessageRecord) -> None:
        self.stats["delivered" if record.state == 1 else "played"] += 1
        self.reactor.callFromThread(self._tell_sender, record.sender, record.status(), record.id, None, record.state)

    def _receipt_changed(self, number: int, member: str, state: int, now: float) -> None:
        self.store.mark_group_receipt(number, member, state, now=now)
        receipt = self.store.group_receipt(number, member, now=now)
        if receipt is not None:
            self.stats["delivered" if receipt.state == 1 else "played"] += 1
            sender, status = receipt.message.sender, receipt.status()
            self.reactor.callFromThread(self._tell_sender, sender, status, number, member, receipt.state)

    # --- the sender's "delivered" / "played", and the pushes at login ---

    def _tell_sender(self, sender: str, status: dict[str, Any], number: int, member: str | None, state: int) -> None:
        """Push a message's (or a group member's receipt's) new state to its sender; once pushed, it is told."""
        if not self.push(sender, status):
            if self.elsewhere is not None:
                self.elsewhere(sender, status)  # the node the sender is connected to marks it told
            return
        self._mark_told(number, member, state)

    def _mark_told(self, number: int, member: str | None, state: int) -> None:
        if member is None:
            d = self._thread(self.store.mark_told, number, state)
        else:
            d = self._thread(self.store.mark_receipt_told, number, member, state)
        d.addErrback(lambda f: log.error("voice message %d: %s", number, f.getErrorMessage()))

    def _push_anywhere(self, uri: str, message: dict[str, Any]) -> bool:
        """To ``uri``'s sessions here (True if any), else with several nodes to the other nodes."""
        if self.push(uri, message):
            return True
        if self.elsewhere is not None:
            self.elsewhere(uri, message)  # sent there if connected there; else it waits for the next login
        return False

    def pushed_from_node(self, uri: str, message: dict[str, Any]) -> None:
        """Another node's notice or status for ``uri``: sent to its sessions here; a status pushed is marked told
        (in the shared store). Anything but these two kinds is dropped."""
        kind, number, state = message.get("type"), message.get("message"), message.get("state")
        if kind not in ("message_new", "message_status") or type(number) is not int or state not in STATES:
            log.warning("a pushed voice message %s for %s dropped: malformed", kind, uri)
            return
        if not self.push(uri, message) or kind != "message_status":
            return
        member = message.get("to") if "group" in message else None
        self._mark_told(number, member if isinstance(member, str) else None, STATES.index(state))

    def login_pushes(self, uri: str, now: float) -> list[dict[str, Any]]:
        """(On the store thread) what a member logging in is told: its unplayed messages, and the states of the
        messages it sent that moved on since it was last told (marked told: they are sent right after)."""
        pushes = [r.notice() for r in self.store.inbox(uri, now=now) if r.played_at is None]
        pushes += [r.message.notice(r.state) for r in self.store.group_inbox(uri, now=now) if r.played_at is None]
        for record in self.store.untold(uri):
            pushes.append(record.status())
            self.store.mark_told(record.id, record.state)
        for receipt in self.store.untold_receipts(uri):
            pushes.append(receipt.status())
            self.store.mark_receipt_told(receipt.message.id, receipt.member, receipt.state)
        return pushes

    # --- retention (on the store thread, hourly) ---

    def purge(self, now: float) -> int:
        expired = self.store.expired_voice_messages(now)
        for record in expired:
            try:
                self.blobs.delete(record.path)
            except (OSError, ValueError, StoreError) as exc:
                log.error("voice message %d: stored media not deleted: %s", record.id, exc)
        self.store.delete_voice_messages([r.id for r in expired], now=now)
        self.stats["purged"] += len(expired)
        if expired:
            log.info("%d voice messages past their retention deleted", len(expired))
        return len(expired)
