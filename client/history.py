"""Replay of a group's recorded bursts at a member (issue 17): list and fetch them over the control channel
(``server.history``), open the archived GMK I_MESSAGEs addressed to this member and decrypt (``ptt.playback``),
decode the Opus to 48 kHz PCM, write WAV files. The same decoding serves ``ptt-audit``.

``ptt-client history GROUP [--play N] [--wav-dir D]`` and the headless step ``history GROUP DIR [N]`` use it.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from client.codec import FRAME_SAMPLES, SAMPLE_RATE, CodecError, OpusDecoder
from ptt.control import ControlProtocolError, unb64
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.playback import decrypt_burst, open_archived_keys
from ptt.rtp import RtpPacket

__all__ = ["MAX_FETCH_ROUNDS", "ReplayedBurst", "decode_rtp", "fetch_history", "replay", "write_wav"]

MAX_FETCH_ROUNDS = 64
"""Chunks of one burst fetched at most (64 x 128 KiB: far above a 10-minute burst)."""


@dataclass
class ReplayedBurst:
    id: int
    talker: str
    started: float
    ended: float
    packets: int
    pcm: bytes  # 48 kHz mono 16-bit; empty if nothing could be decrypted
    decrypted: int
    failed: int
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "talker": self.talker,
            "started": self.started,
            "ended": self.ended,
            "packets": self.packets,
            "decrypted": self.decrypted,
            "failed": self.failed,
            "seconds": round(len(self.pcm) / 2 / SAMPLE_RATE, 3),
            "reason": self.reason,
        }


def decode_rtp(rtp: Iterable[tuple[float, bytes]]) -> bytes:
    """Opus RTP packets → PCM, in sequence order; a gap in the sequence numbers is concealed frame by frame."""
    decoder = OpusDecoder()
    packets = sorted(((p.sequence, p) for p in _parsed(rtp)), key=lambda item: item[0])
    out: list[bytes] = []
    previous: int | None = None
    for seq, packet in packets:
        if previous is not None:
            for _ in range(min((seq - previous - 1) & 0xFFFF, 50)):
                out.append(decoder.conceal())
        previous = seq
        try:
            out.append(decoder.decode(packet.payload))
        except CodecError:
            out.append(bytes(FRAME_SAMPLES * 2))
    return b"".join(out)


def _parsed(rtp: Iterable[tuple[float, bytes]]) -> list[RtpPacket]:
    parsed = []
    for _, data in rtp:
        try:
            parsed.append(RtpPacket.parse(data))
        except ValueError:
            continue
    return parsed


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm)
    return path


def open_burst(
    meta: dict[str, Any],
    packets: list[tuple[float, bytes]],
    messages: list[bytes],
    *,
    group: str,
    holder_keys: list[IdentityKeys],
    domain: KmsDomain,
) -> ReplayedBurst:
    """Keys, SRTP, Opus: one burst as this holder hears it (runs in a thread: SAKKE and Opus work)."""
    keys, refused = open_archived_keys(messages, group=group, holder_keys=holder_keys, domain=domain)
    opened = decrypt_burst(packets, keys)
    reason = "; ".join(refused[:2] + opened.reasons[:1])
    return ReplayedBurst(
        int(meta["id"]),
        str(meta["talker"]),
        float(meta["started"]),
        float(meta["ended"]),
        len(packets),
        decode_rtp(opened.rtp) if opened.rtp else b"",
        len(opened.rtp),
        opened.failed,
        reason,
    )


@defer.inlineCallbacks
def fetch_history(control: Any, group: str, limit: int = 50) -> Any:
    """The group's last ``limit`` bursts this member may replay (their metadata)."""
    reply = yield control.request({"type": "history", "group": group, "limit": limit}, "history_list")
    return list(reply["bursts"])


@defer.inlineCallbacks
def fetch_burst(control: Any, group: str, burst_id: int) -> Any:
    """(packets, archived I_MESSAGEs addressed to this member) of one burst, fetched chunk by chunk."""
    packets: list[tuple[float, bytes]] = []
    messages: list[bytes] = []
    for _ in range(MAX_FETCH_ROUNDS):
        request = {"type": "history_fetch", "group": group, "burst": burst_id, "offset": len(packets)}
        reply = yield control.request(request, "history_burst")
        try:
            for item in reply.get("keys", []):
                messages.append(unb64(item["data"], "key"))
            chunk = [(int(at) / 1000.0, unb64(data, "packet")) for at, data in reply["packets"]]
        except (ControlProtocolError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"burst {burst_id}: malformed reply ({exc})") from None
        packets.extend(chunk)
        if not chunk or len(packets) >= int(reply["total"]):
            return packets, messages
    raise ValueError(f"burst {burst_id}: more than {MAX_FETCH_ROUNDS} chunks")


@defer.inlineCallbacks
def replay(session: Any, group: str, limit: int = 50) -> Any:
    """List, fetch and open the last ``limit`` bursts of ``group`` for ``session``'s member: ReplayedBursts."""
    assert session.control is not None
    bursts = yield fetch_history(session.control, group, limit)
    holder_keys = session.keystore.held_keys(session.uri)
    out: list[ReplayedBurst] = []
    for meta in bursts:
        packets, messages = yield fetch_burst(session.control, group, int(meta["id"]))
        burst = yield threads.deferToThread(
            open_burst, meta, packets, messages, group=group, holder_keys=holder_keys, domain=session.domain
        )
        out.append(burst)
    return out
