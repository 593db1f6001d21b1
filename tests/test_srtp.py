"""Group media SRTP: per-sender keys from the GMK, MKI placement and key selection, rekey without loss."""

from __future__ import annotations

import struct

import pytest

from ptt.groupkeys import make_group_key
from ptt.srtp import (
    AEAD_AES_128_GCM,
    AES_CM_128_HMAC_SHA1_80,
    AwaitingKey,
    Profile,
    SrtpError,
    SrtpReceiver,
    SrtpSender,
    split_mki,
)


def rtp(seq: int, ssrc: int = 0x1234, payload: bytes = b"voice" * 20) -> bytes:
    return struct.pack(">BBHII", 0x80, 96, seq, seq * 960, ssrc) + payload


@pytest.mark.parametrize("profile", [AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80], ids=lambda p: p.name)
def test_receivers_select_the_senders_key_by_mki(profile: Profile) -> None:
    key = make_group_key()
    alice = SrtpSender(key, "sip:alice@example.org", profile)
    bob = SrtpSender(key, "sip:bob@example.org", profile)
    receiver = SrtpReceiver(profile)
    receiver.add_key(key)
    for seq in range(5):
        for sender in (alice, bob):
            packet = sender.protect(rtp(seq, ssrc=id(sender) & 0xFFFFFFFF))
            assert split_mki(packet, profile)[1] == sender.mki
            plain, mki = receiver.unprotect(packet)
            assert plain == rtp(seq, ssrc=id(sender) & 0xFFFFFFFF) and mki == sender.mki
    assert alice.mki[:4] == bob.mki[:4] == key.gmk_id and alice.mki != bob.mki


def test_rekey_mid_burst_loses_nothing() -> None:
    old, new = make_group_key(), make_group_key()
    receiver = SrtpReceiver()
    receiver.add_key(old)
    receiver.add_key(new)
    before = SrtpSender(old, "sip:alice@example.org")
    after = SrtpSender(new, "sip:alice@example.org")
    packets = [before.protect(rtp(1)), after.protect(rtp(2)), before.protect(rtp(3))]  # reordered around the rekey
    assert [receiver.unprotect(p)[0] for p in packets] == [rtp(1), rtp(2), rtp(3)]


def test_rejections() -> None:
    key = make_group_key()
    sender = SrtpSender(key, "sip:alice@example.org")
    receiver = SrtpReceiver()
    packet = sender.protect(rtp(1))
    with pytest.raises(SrtpError, match="no GMK"):
        receiver.unprotect(packet)
    receiver.add_key(key)
    tampered = bytearray(packet)
    tampered[20] ^= 1
    with pytest.raises(SrtpError):
        receiver.unprotect(bytes(tampered))
    assert receiver.unprotect(packet)[0] == rtp(1)
    with pytest.raises(SrtpError):  # replay
        receiver.unprotect(packet)
    with pytest.raises(SrtpError):
        receiver.unprotect(b"\x80" * 20)
    other = SrtpReceiver()
    other.add_key(make_group_key())  # a removed member holds only the old key: the new one is not derivable
    with pytest.raises(SrtpError):
        other.unprotect(sender.protect(rtp(2)))
    receiver.drop_key(key.gmk_id)
    with pytest.raises(SrtpError):
        receiver.unprotect(sender.protect(rtp(3)))


@pytest.mark.parametrize("profile", [AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80], ids=lambda p: p.name)
def test_srtcp_under_the_gmk_for_off_network_floor_control(profile: Profile) -> None:
    key, other = make_group_key(), make_group_key()
    alice = SrtpSender(key, "sip:alice@example.org", profile)
    receiver = SrtpReceiver(profile)
    receiver.add_key(key)
    # a Floor Request as RTCP APP "MCPT" (header only is enough for SRTCP)
    rtcp = struct.pack(">BBHI4s", 0x80, 204, 2, 0x1234, b"MCPT")
    packet = alice.protect_rtcp(rtcp)
    assert packet[:8] == rtcp[:8] and split_mki(packet, profile)[1] == alice.mki  # header in clear, MKI last-but-tag
    assert receiver.unprotect_rtcp(packet) == (rtcp, alice.mki)
    with pytest.raises(SrtpError, match="replay"):
        receiver.unprotect_rtcp(packet)
    tampered = bytearray(alice.protect_rtcp(rtcp))
    tampered[10] ^= 1
    with pytest.raises(SrtpError):
        receiver.unprotect_rtcp(bytes(tampered))
    outsider = SrtpReceiver(profile)
    outsider.add_key(other)  # a non-member holds another GMK only
    with pytest.raises(SrtpError, match="no GMK"):
        outsider.unprotect_rtcp(alice.protect_rtcp(rtcp))


def test_media_awaiting_its_gmk_is_kept_briefly_and_bounded() -> None:
    held, unknown = make_group_key(), make_group_key()
    receiver = SrtpReceiver()
    receiver.add_key(held)
    early = SrtpSender(unknown, "sip:alice@example.org").protect(rtp(1))
    assert AwaitingKey.awaits_key(receiver, early)
    assert not AwaitingKey.awaits_key(receiver, SrtpSender(held, "sip:alice@example.org").protect(rtp(1)))
    assert not AwaitingKey.awaits_key(receiver, b"short")
    store = AwaitingKey(keep_for=2.0, limit=3)
    assert all(store.hold(early + bytes([n]), 100.0 + n * 0.1) for n in range(3))
    assert not store.hold(early, 100.5)  # full of fresh packets: dropped
    assert store.hold(early, 102.05)  # the first one aged out and made room
    assert store.release(102.08) == [early + b"\x01", early + b"\x02", early] and len(store) == 0
