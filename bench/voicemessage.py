"""Voice message cost (deferred delivery, issue 17), in one process with the real parts (no network): a message of
60 s of Opus (a tone with a slow envelope, 20 ms frames) sealed by the sender (PCK I_MESSAGE: SAKKE + ECCSI; SRTP),
its size as the server stores it (the recording format + the I_MESSAGE), and opened by the addressee (every
I_MESSAGE check, SAKKE decapsulation, SRTP) and decoded to PCM. Each measurement runs 3 times: min / median / max.
Run with ``.venv/bin/python -m bench.voicemessage [--quick]`` (``--quick``: 20 s).
"""

from __future__ import annotations

import argparse
import math
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

from client.codec import OpusEncoder
from client.history import decode_rtp
from ptt.crypto.kms import derive_user_keys, generate_master_secrets
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache
from ptt.recording import encode_burst
from ptt.voicemessage import open_voice, seal_voice, stored_max_age

ALICE, BOB = "sip:alice@example.org", "sip:bob@example.org"


def frames(seconds: int) -> list[bytes]:
    encoder = OpusEncoder()
    out = []
    for i in range(seconds * 50):
        level = 8000 * (0.5 + 0.5 * math.sin(i / 50))
        samples = (int(level * math.sin(2 * math.pi * 440 * (i * 960 + n) / 48000)) for n in range(960))
        out.append(encoder.encode(struct.pack("<960h", *samples)))
    return out


def timed(function: Callable[[], Any]) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(3):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def show(name: str, times: list[float]) -> None:
    print(f"{name:<44} {min(times) * 1e3:7.0f} / {statistics.median(times) * 1e3:7.0f} / {max(times) * 1e3:7.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    seconds = 20 if parser.parse_args().quick else 60
    now = time.time()
    master = generate_master_secrets()
    domain = KmsDomain("kms.example.org", master.kpak, master.z_public)
    period = domain.period_number(now)

    def keys(uri: str) -> IdentityKeys:
        material = derive_user_keys(domain.uid(uri, period), master)
        return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)

    alice, bob = keys(ALICE), keys(BOB)
    opus = frames(seconds)
    seal_voice(alice, BOB, opus[:1], now=now)  # the fixed-base tables, built once per process
    seal_times, sealed = timed(lambda: seal_voice(alice, BOB, opus, now=now))
    stored = len(encode_burst(sealed.packets)) + len(sealed.imessage)

    def opened() -> Any:
        return open_voice(
            sealed.imessage,
            sealed.packets,
            addressee=[bob],
            sender=ALICE,
            trusted_kms={domain.kms_uri: domain},
            now=now + 3600,
            replay_cache=ReplayCache(4),
            max_age=stored_max_age(domain),
        )

    open_times, message = timed(opened)
    decode_times, pcm = timed(lambda: decode_rtp(message.rtp))
    print(f"voice message of {seconds} s: {len(sealed.packets)} SRTP packets, I_MESSAGE {len(sealed.imessage)} octets")
    print(f"stored: {stored} octets = {stored / seconds * 3600 / 1e6:.1f} MB per hour of speech (ciphertext)")
    print("                                              min / median / max")
    show("seal at the sender (PCK I_MESSAGE + SRTP)", seal_times)
    show("open at the addressee (I_MESSAGE + SRTP)", open_times)
    show("Opus decoding to PCM", decode_times)
    assert len(message.rtp) == len(sealed.packets) and len(pcm) == seconds * 50 * 1920


if __name__ == "__main__":
    main()
