"""The call targets of ``tests.fuzzing`` (issue 16): emergency control messages, private call messages and PCK
I_MESSAGEs as the server reads them."""

from __future__ import annotations

import base64
from typing import Any

from tests.fuzzing_base import Harness


def emergency_harness() -> Harness:
    """The emergency control messages (issue 16): a frame, then the ``ptt.emergency`` parser of its type."""
    from ptt.control import ControlProtocolError, FrameDecoder, encode_frame
    from ptt.emergency import AlertEvent, CancelRequest, EmergencyMessageError, RaiseRequest

    group = "sip:fire-ops@example.org"
    messages: list[dict[str, Any]] = [
        {"type": "emergency", "group": group, "level": "emergency", "call": True},
        {"type": "emergency", "group": group, "level": "imminent-peril"},
        {"type": "emergency_cancel", "group": group, "uri": "sip:bob@example.org"},
        {"type": "emergency_cancel", "group": group},
        {"type": "alert", "group": group, "state": "raised", "uri": "sip:bob@example.org", "level": "emergency",
         "since": 1790000000.5, "call": False},
        {"type": "alert", "group": group, "state": "cancelled", "uri": "sip:bob@example.org",
         "level": "imminent-peril", "since": 1790000000, "call": True, "by": "dana"},
    ]  # fmt: skip
    parsers = {"emergency": RaiseRequest.parse, "emergency_cancel": CancelRequest.parse, "alert": AlertEvent.parse}

    def run(data: bytes) -> bool:
        try:
            decoded = FrameDecoder().feed(data)
        except ControlProtocolError:
            return False
        accepted = True
        for message in decoded:
            parse = parsers.get(message["type"])
            if parse is None:
                continue
            try:
                parse(message)
            except EmergencyMessageError:
                accepted = False
        return accepted

    return Harness([encode_frame(m) for m in messages], run)


def privatecall_harness() -> Harness:
    """Private call frames (``ptt.privatecall.messages`` after the control frame decoder) and PCK I_MESSAGEs as the
    server reads them (``PckOffer.parse``): seeds tagged ``F`` (a frame) or ``P`` (an I_MESSAGE)."""
    from ptt.control import ControlProtocolError, FrameDecoder, encode_frame
    from ptt.mikey.errors import MikeyError
    from ptt.privatecall.messages import CALL_MESSAGE_TYPES, CallMessageError, parse_call_message
    from ptt.privatecall.pck import PckOffer, build_pck_message, make_private_call_key
    from tests.identities import keys_for, make_world

    now = 1_760_000_000.0
    pck = build_pck_message(
        keys_for(make_world(), "sip:alice@example.org", now), "sip:bob@example.org", make_private_call_key(), now=now
    )
    call, data = "call:0123456789abcdef", base64.b64encode(pck).decode()
    messages: list[dict[str, Any]] = [
        {"type": "call_setup", "call": call, "to": "sip:bob@example.org", "commencement": "manual", "imessage": data},
        {"type": "call_offer", "call": call, "caller": "sip:a@x.org", "commencement": "automatic", "imessage": data},
        {"type": "call_ringing", "call": call},
        {"type": "call_accept", "call": call},
        {"type": "call_reject", "call": call, "reason": "rejected"},
        {"type": "call_connected", "call": call, "peer": "sip:b@x.org", "relay": {"host": "192.0.2.1", "port": 9}},
        {"type": "call_end", "call": call, "reason": "ended"},
        {"type": "call_ended", "call": call, "reason": "unreachable"},
    ]
    seeds = [b"F" + encode_frame(m) for m in messages] + [b"P" + pck]

    def run(data: bytes) -> bool:
        if data[:1] == b"P":
            try:
                PckOffer.parse(data[1:])
            except MikeyError:
                return False
            return True
        try:
            decoded = FrameDecoder().feed(data[1:])
        except ControlProtocolError:
            return False
        accepted = True
        for message in decoded:
            if message["type"] in CALL_MESSAGE_TYPES:
                try:
                    parsed = parse_call_message(message)
                except CallMessageError:
                    accepted = False
                    continue
                if parse_call_message(parsed.to_json()) != parsed:
                    raise AssertionError("a parsed call message does not round-trip")
        return accepted

    return Harness(seeds, run)


def voicemessage_harness() -> Harness:
    """Voice message uploads as the server reads them (issue 17): seeds tagged ``U`` (an uploaded I_MESSAGE through
    ``check_upload`` and the signature check) or ``F`` (a ``message_send`` frame and its packets)."""
    from ptt.control import ControlProtocolError, FrameDecoder, encode_frame
    from ptt.voicemessage import UploadRefused, check_upload, seal_voice, sender_signature_valid
    from ptt.voicemessage_upload import decode_packets, encode_packets
    from tests.identities import keys_for, make_world

    now = 1_760_000_000.0
    world = make_world()
    sealed = seal_voice(
        keys_for(world, "sip:alice@example.org", now), "sip:bob@example.org", [b"\x05" * 40] * 3, now=now
    )
    frame = encode_frame(
        {"type": "message_send", "upload": "up:" + "0" * 16, "offset": 0, "packets": encode_packets(sealed.packets),
         "to": "sip:bob@example.org", "imessage": base64.b64encode(sealed.imessage).decode(), "total": 3}
    )  # fmt: skip

    def run(data: bytes) -> bool:
        if data[:1] == b"U":
            try:
                check_upload(data[1:], "sip:alice@example.org", "sip:bob@example.org", world[0], now)
            except UploadRefused:
                return False
            return sender_signature_valid(data[1:], world[0]) or False
        try:
            decoded = FrameDecoder().feed(data[1:])
            for message in decoded:
                decode_packets(message.get("packets"))
        except (ControlProtocolError, ValueError):
            return False
        return bool(decoded)

    return Harness([b"U" + sealed.imessage, b"F" + frame], run)
