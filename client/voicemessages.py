"""A session's voice messages (deferred delivery, issue 17): sending, the notices received, fetching, opening.

Sending: the Opus frames are sealed in a thread (``ptt.voicemessage.seal_voice``: a fresh PCK, its I_MESSAGE
signed by us and encrypted to the addressee, SRTP under it) and uploaded in chunks (``message_send``). The server
keeps it and tells the addressee (``message_new``) when it is or becomes connected; it tells us
(``message_status``) "delivered" when the addressee fetched it and "played" when it said it played it.

To a group we are in (``addressee`` is one of the session's groups): the speech under the group's current GMK
(``ptt.voicemessage_group``), no I_MESSAGE; members open it with the GMKs they hold (the GUK-ID must be the named
sender's).

Receiving: ``fetch`` gets the I_MESSAGE and the SRTP (chunks of ``message_data``); ``open`` runs every I_MESSAGE
check in a thread (signer = the sender the server names, addressed to our UID, T at most one key period + 1 h old:
a stored message is legitimately old; the replay cache — the session's, kept across restarts — refuses a message
seen before under another ID), then decrypts and decodes to PCM; ``played`` tells the server. Opening the same
message (same ID, same I_MESSAGE) again skips the replay check, also after a restart: it is that message again,
not a replay. The digest of each opened message is kept with its ID in the replay file beside the keystore
(``message:ID`` entries beside the groups' current GMK messages, until the message could no longer be opened).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from client.history import decode_rtp
from ptt.control import ControlProtocolError, b64, unb64
from ptt.groupkeys import GroupKey
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import ReplayCache, replay_key
from ptt.privatecall.messages import is_call_id
from ptt.voicemessage import open_voice, seal_voice, stored_max_age
from ptt.voicemessage_group import open_group_voice, seal_group_voice
from ptt.voicemessage_upload import CHUNK_OCTETS, CHUNK_PACKETS, decode_packets, encode_packets

if TYPE_CHECKING:
    from client.session import PttSession

log = logging.getLogger("ptt.client.messages")

MAX_FETCH_ROUNDS = 32
"""Chunks of one message fetched at most (32 x 96 KiB: far above two minutes of speech)."""


@dataclass
class MessageNotice:
    """A voice message to us that the server announced."""

    id: int
    sender: str
    sent: float
    seconds: float
    state: str
    group: str | None = None  # a message to this group (under its GMK)


@dataclass(repr=False)
class OpenedMessage:
    id: int
    sender: str
    sent: float
    pcm: bytes
    packets: int
    decrypted: int
    failed: int
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "sent": self.sent,
            "packets": self.packets,
            "decrypted": self.decrypted,
            "failed": self.failed,
            "seconds": round(len(self.pcm) / 2 / 48000, 3),
            "reasons": self.reasons,
        }

    def __repr__(self) -> str:
        return f"OpenedMessage({self.id} from {self.sender}, {self.decrypted}/{self.packets})"


def chunks(
    packets: list[tuple[float, bytes]], limit: int = CHUNK_OCTETS, count: int = CHUNK_PACKETS
) -> list[list[tuple[float, bytes]]]:
    """The packets in consecutive runs of at most ``limit`` octets and ``count`` packets (at least one each)."""
    out: list[list[tuple[float, bytes]]] = []
    size = limit + 1
    for at, packet in packets:
        if size + len(packet) > limit or len(out[-1]) >= count:
            out.append([])
            size = 0
        out[-1].append((at, packet))
        size += len(packet)
    return out


class VoiceMessages:
    """The voice messages of one ``PttSession``."""

    def __init__(self, session: PttSession) -> None:
        self.session = session
        self.inbox: dict[int, MessageNotice] = {}
        self.sent: dict[int, list[str]] = {}  # message -> states the server reported, in order
        self.receipts: dict[int, dict[str, list[str]]] = {}  # group message -> member -> states, in order
        self.listener: Callable[[dict[str, Any]], None] = lambda message: None

    # --- sending ---

    def group_key(self, addressee: str) -> GroupKey | None:
        """The current GMK if ``addressee`` is one of our groups (a message to it goes under the GMK)."""
        state = self.session.groups.get(addressee)
        return None if state is None or is_call_id(addressee) else state.key

    @defer.inlineCallbacks
    def send(self, addressee: str, opus_frames: Sequence[bytes]) -> Any:
        """Seal and upload; fires with (message ID, its I_MESSAGE — None for a message to a group —, its SRTP)."""
        session = self.session
        now = session.reactor.seconds()
        key = self.group_key(addressee)
        if key is not None:  # to a group we are in: under its current GMK (ptt.voicemessage_group)
            packets = yield session._crypto(seal_group_voice, key, session.uri, list(opus_frames))
            number = yield self.upload(addressee, None, packets)
            return number, None, packets
        sealed = yield session._crypto(seal_voice, session.identity_keys(now), addressee, list(opus_frames), now=now)
        number = yield self.upload(addressee, sealed.imessage, sealed.packets)
        return number, sealed.imessage, sealed.packets

    @defer.inlineCallbacks
    def upload(self, addressee: str, imessage: bytes | None, packets: list[tuple[float, bytes]]) -> Any:
        """Upload an I_MESSAGE (None: to a group) and its SRTP in chunks; fires with the stored message's ID
        (ControlError if the server refuses it)."""
        control = self.session.control
        if control is None:
            raise RuntimeError("not connected to the server")
        upload = "up:" + os.urandom(8).hex()
        received = 0
        reply: dict[str, Any] = {}
        for index, chunk in enumerate(chunks(packets)):
            request: dict[str, Any] = {
                "type": "message_send",
                "upload": upload,
                "offset": received,
                "packets": encode_packets(chunk),
            }
            if index == 0:
                request.update(to=addressee, total=len(packets))
                if imessage is not None:
                    request["imessage"] = b64(imessage)
            reply = yield control.request(request, "message_ack")
            received = int(reply["received"])
        number = reply.get("message")
        if type(number) is not int:
            raise ControlProtocolError("the server acknowledged the upload without a message ID")
        self.sent.setdefault(number, []).append("stored")
        log.info("%s: voice message %d to %s stored by the server", self.session.uri, number, addressee)
        return number

    # --- what the server tells us ---

    def on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "message_new":
            notice = MessageNotice(
                int(message["message"]),
                str(message["from"]),
                float(message.get("sent") or 0.0),
                float(message["seconds"]),
                str(message["state"]),
                message["group"] if isinstance(message.get("group"), str) else None,
            )
            self.inbox[notice.id] = notice
            log.info(
                "%s: voice message %d from %s (%.1f s)",
                self.session.uri,
                notice.id,
                notice.sender,
                notice.seconds,
            )
        elif message["type"] == "message_status" and isinstance(message.get("group"), str):
            member = str(message["to"])  # a member's receipt of our message to a group
            states = self.receipts.setdefault(int(message["message"]), {}).setdefault(member, [])
            if str(message["state"]) not in states:
                states.append(str(message["state"]))
        elif message["type"] == "message_status":
            states = self.sent.setdefault(int(message["message"]), [])
            if str(message["state"]) not in states:
                states.append(str(message["state"]))
            uri = self.session.uri
            log.info("%s: voice message %d to %s %s", uri, message["message"], message["to"], message["state"])
        self.listener(message)

    def unplayed(self) -> list[MessageNotice]:
        return [n for n in self.inbox.values() if n.state != "played"]

    @defer.inlineCallbacks
    def refresh(self) -> Any:
        """Ask the server for our inbox (``message_list``)."""
        control = self.session.control
        assert control is not None
        reply = yield control.request({"type": "message_list"}, "message_inbox")
        for item in reply["messages"]:
            if isinstance(item, dict) and item.get("type") == "message_new":
                self.on_message(item)
        return sorted(self.inbox.values(), key=lambda notice: notice.id)

    # --- receiving ---

    @defer.inlineCallbacks
    def fetch(self, number: int) -> Any:
        """(sender, I_MESSAGE — or the group's URI, str, for a message to a group —, packets) of message ``number``
        (ControlError 404 if it is not ours)."""
        control = self.session.control
        assert control is not None
        packets: list[tuple[float, bytes]] = []
        imessage, sender, group = b"", "", None
        for _ in range(MAX_FETCH_ROUNDS):
            request = {"type": "message_fetch", "message": number, "offset": len(packets)}
            reply = yield control.request(request, "message_data")
            try:
                sender = sender or str(reply["from"])
                if "imessage" in reply:
                    imessage = unb64(reply["imessage"], "imessage")
                if isinstance(reply.get("group"), str):
                    group = reply["group"]
                chunk = decode_packets(reply["packets"])
            except (ControlProtocolError, ValueError) as exc:
                raise ValueError(f"voice message {number}: malformed reply ({exc})") from None
            packets.extend(chunk)
            if not chunk or len(packets) >= int(reply["total"]):
                return sender, imessage if group is None else group, packets
        raise ValueError(f"voice message {number}: more than {MAX_FETCH_ROUNDS} chunks")

    @defer.inlineCallbacks
    def open(self, number: int) -> Any:
        """Fetch and open message ``number``: an OpenedMessage (a MikeyError if its I_MESSAGE is refused)."""
        session = self.session
        sender, imessage, packets = yield self.fetch(number)
        if isinstance(imessage, str):  # to a group: under the GMKs we hold for it, no I_MESSAGE
            message = yield self._open_group(number, sender, imessage, packets)
            return message
        digest = replay_key(imessage)[0]
        opened_before = session._current_messages.get(f"message:{number}")
        again = opened_before is not None and opened_before[0] == digest
        cache = ReplayCache(1) if again else session.replay_cache
        now = session.reactor.seconds()

        def opened_in_thread() -> OpenedMessage:
            opened = open_voice(
                imessage,
                packets,
                addressee=session.keystore.held_keys(session.uri),
                sender=sender,
                trusted_kms={session.domain.kms_uri: session.domain},
                now=now,
                replay_cache=cache,
                max_age=stored_max_age(session.domain),
            )
            pcm = decode_rtp(opened.rtp) if opened.rtp else b""
            return OpenedMessage(
                number,
                sender,
                opened.received.timestamp,
                pcm,
                len(packets),
                len(opened.rtp),
                opened.failed,
                opened.reasons,
            )

        try:
            # under the session's key lock: the replay cache is shared with the GMK messages
            message = yield session._key_lock.run(lambda: session._crypto(opened_in_thread))
        except MikeyError as exc:
            log.warning("%s: voice message %d refused: %s", session.uri, number, exc)
            raise
        finally:
            session._replay_cache_moved(None)
        session._current_messages[f"message:{number}"] = (digest, message.sent + stored_max_age(session.domain))
        session._replay_saver.changed()
        return message

    def _open_group(self, number: int, sender: str, group: str, packets: list[tuple[float, bytes]]) -> Any:
        state = self.session.groups.get(group)
        keys = list(state.keys) if state is not None else []
        notice = self.inbox.get(number)
        sent = notice.sent if notice is not None else 0.0

        def opened_in_thread() -> OpenedMessage:
            opened = open_group_voice(packets, keys, sender)
            pcm = decode_rtp(opened.rtp) if opened.rtp else b""
            return OpenedMessage(
                number, sender, sent, pcm, len(packets), len(opened.rtp), opened.failed, opened.reasons
            )

        return self.session._crypto(opened_in_thread)

    @defer.inlineCallbacks
    def played(self, number: int) -> Any:
        """Tell the server we played message ``number`` (it tells the sender)."""
        control = self.session.control
        assert control is not None
        yield control.request({"type": "message_played", "message": number}, "message_played_ok")
        notice = self.inbox.get(number)
        if notice is not None:
            notice.state = "played"


__all__ = ["MessageNotice", "OpenedMessage", "VoiceMessages", "chunks"]
