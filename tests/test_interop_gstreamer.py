"""Group media interop with independent SRTP/Opus implementations: GStreamer (srtpenc/srtpdec on libsrtp2, with
the MKI) both ways for both profiles, and ffmpeg's own SRTP (AES_CM_128_HMAC_SHA1_80, no MKI) sending to us.

Our side is ``ptt.srtp`` (keys from the GMK, the MKI = GMK-ID ‖ GUK-ID placed by hand) with opuslib; the peers
get only the key ‖ salt from ``ptt.srtp.media_key`` and the MKI. Every pipeline runs on 127.0.0.1 with free
ports; GStreamer and ffmpeg come from ``scripts/setup``, so a missing tool fails the test instead of skipping.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import opuslib
import pylibsrtp
import pytest

from ptt.groupkeys import GroupKey, make_group_key
from ptt.srtp import (
    AEAD_AES_128_GCM,
    AES_CM_128_HMAC_SHA1_80,
    Profile,
    SrtpError,
    SrtpReceiver,
    SrtpSender,
    media_key,
    split_mki,
)
from ptt.ts33180 import srtp_mki

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
FRAMES = 100  # 2 s
PAYLOAD_TYPE = 96
SSRC = 0x5EC0E7A1
OPUS_LOOKAHEAD = 312  # samples of encoder delay at 48 kHz (2.5 ms + 4 ms)
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
PROCESS_TIMEOUT = 20.0

Samples = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GstProfile:
    """How GStreamer's srtpenc/srtpdec spell one of our profiles."""

    profile: Profile
    cipher: str
    auth: str


GST_PROFILES = [
    GstProfile(AEAD_AES_128_GCM, "aes-128-gcm", "null"),
    GstProfile(AES_CM_128_HMAC_SHA1_80, "aes-128-icm", "hmac-sha1-80"),
]


def _ids(gst: GstProfile) -> str:
    return gst.profile.name


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    missing = [tool for tool in ("gst-launch-1.0", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/setup")


# --- signals ---


def chirp(seconds: float, start_hz: float = 300.0, end_hz: float = 3000.0) -> Samples:
    """A linear chirp at half scale: unlike a tone, it shows any lost, repeated or reordered 20 ms frame."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * (start_hz * t + (end_hz - start_hz) * t * t / (2 * seconds))
    return 0.5 * np.sin(phase)


def best_correlation(decoded: Samples, reference: Samples, max_lag: int) -> tuple[float, int]:
    """(highest normalised correlation of ``decoded`` delayed by 0..max_lag samples against ``reference``, lag)."""
    best = (-1.0, 0)
    for lag in range(max_lag + 1):
        n = min(len(decoded) - lag, len(reference))
        if n <= RATE // 10:
            break
        a, b = decoded[lag : lag + n], reference[:n]
        denominator = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
        if denominator > 0:
            best = max(best, (float(np.dot(a, b)) / denominator, lag))
    return best


def dominant_frequency(samples: Samples) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[int(np.argmax(spectrum))])


def to_pcm(samples: Samples) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def from_pcm(pcm: bytes) -> Samples:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768


def read_wav(path: Path) -> Samples:
    """The samples of a mono S16 WAV; none when GStreamer wrote no audio (no file, or a header-only one)."""
    if not path.exists() or path.stat().st_size <= 44:
        return np.zeros(0)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return from_pcm(wav.readframes(wav.getnframes()))


# --- RTP (RFC 3550) carrying Opus (RFC 7587) ---


def opus_frames(samples: Samples) -> list[bytes]:
    encoder = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    pcm = to_pcm(samples)
    return [encoder.encode(pcm[at : at + 2 * FRAME], FRAME) for at in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME)]


def rtp_packets(frames: list[bytes], ssrc: int = SSRC) -> list[bytes]:
    """PT 96, marker on the first packet (start of a talk burst), timestamp +960 per 20 ms frame."""
    first_seq, first_ts = 4711, 0x10000
    return [
        struct.pack(
            ">BBHII",
            0x80,
            (0x80 if i == 0 else 0) | PAYLOAD_TYPE,
            (first_seq + i) & 0xFFFF,
            (first_ts + i * FRAME) & 0xFFFFFFFF,
            ssrc,
        )
        + frame
        for i, frame in enumerate(frames)
    ]


@dataclass(frozen=True)
class Rtp:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(packet: bytes) -> Rtp:
    first, second, sequence, timestamp, ssrc = struct.unpack(">BBHII", packet[:12])
    assert first >> 6 == 2, "not RTP version 2"
    at = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        (words,) = struct.unpack(">H", packet[at + 2 : at + 4])
        at += 4 + 4 * words
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    return Rtp(second & 0x7F, sequence, timestamp, ssrc, packet[at:end])


def in_order(packets: list[Rtp]) -> list[Rtp]:
    """Sorted by sequence number counted from the first packet (modulo 2**16: the random start may wrap)."""
    return sorted(packets, key=lambda p: (p.sequence - packets[0].sequence) & 0xFFFF)


def decode_opus(packets: list[Rtp]) -> Samples:
    decoder = opuslib.Decoder(RATE, 1)
    return from_pcm(b"".join(decoder.decode(p.payload, 6 * FRAME) for p in in_order(packets)))


# --- processes and sockets ---


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def udp_receive_queue(port: int) -> int | None:
    """Octets waiting in the receive queue of the socket bound to the UDP port, None if none is (Linux
    /proc/net/udp: local address and tx_queue:rx_queue columns, in hex)."""
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return None


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=PROCESS_TIMEOUT)


@dataclass
class UdpReceiver:
    sock: socket.socket

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def drain(self, process: subprocess.Popen[bytes], quiet: float = 0.5) -> list[bytes]:
        """Datagrams until the sending process has exited and nothing more arrived for ``quiet`` seconds."""
        datagrams: list[bytes] = []
        deadline = time.monotonic() + PROCESS_TIMEOUT
        self.sock.settimeout(0.1)
        last = time.monotonic()
        while time.monotonic() < deadline:
            try:
                datagrams.append(self.sock.recv(65536))
                last = time.monotonic()
            except TimeoutError:
                if process.poll() is not None and time.monotonic() - last > quiet:
                    return datagrams
        raise AssertionError("the sender did not finish in time")


@pytest.fixture
def udp_receiver() -> Iterator[UdpReceiver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind(("127.0.0.1", 0))
    try:
        yield UdpReceiver(sock)
    finally:
        sock.close()


def run_sender(command: list[str], receiver: UdpReceiver) -> list[bytes]:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        datagrams = receiver.drain(process)
        _, err = process.communicate(timeout=PROCESS_TIMEOUT)
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
        return datagrams
    finally:
        stop(process)


# --- GStreamer ---


def gst_receive(packets: list[bytes], key: bytes, mki: bytes, gst: GstProfile, out: Path) -> Samples:
    """Send SRTP packets to ``udpsrc ! srtpdec ! rtpopusdepay ! opusdec ! wavenc``; the samples it decoded.

    srtpdec takes its keys from the caps; ``mki=(buffer)HEX`` there is the MKI the key is bound to.
    """
    port = free_udp_port()
    caps = (
        f"application/x-srtp,media=(string)audio,clock-rate=(int){RATE},encoding-name=(string)OPUS,"
        f"payload=(int){PAYLOAD_TYPE},ssrc=(uint){SSRC},srtp-key=(buffer){key.hex()},"
        f"srtp-cipher=(string){gst.cipher},srtp-auth=(string){gst.auth},"
        f"srtcp-cipher=(string){gst.cipher},srtcp-auth=(string){gst.auth},mki=(buffer){mki.hex()}"
    )
    command = [
        "gst-launch-1.0", "-q", "-e",
        "udpsrc", "address=127.0.0.1", f"port={port}", f"caps={caps}", "!",
        "srtpdec", "!",
        f"application/x-rtp,media=audio,clock-rate={RATE},encoding-name=OPUS", "!",
        "rtpopusdepay", "!", "opusdec", "plc=false", "!", "audioconvert", "!",
        f"audio/x-raw,format=S16LE,channels=1,rate={RATE}", "!",
        "wavenc", "!", "filesink", f"location={out}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while udp_receive_queue(port) is None:
            assert process.poll() is None, process.communicate()[1].decode(errors="replace")
            assert time.monotonic() < deadline, "udpsrc did not bind"
            time.sleep(0.02)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for packet in packets:
                sender.sendto(packet, ("127.0.0.1", port))
                time.sleep(0.002)  # paced (10x real time) so the receive buffer never overflows
        while udp_receive_queue(port):  # udpsrc has read every datagram: EOS follows them down the pipeline
            assert time.monotonic() < deadline, "udpsrc did not read its datagrams"
            time.sleep(0.02)
        time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # -e: EOS first, so wavenc writes the final header
        _, err = process.communicate(timeout=PROCESS_TIMEOUT)
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    finally:
        stop(process)
    return read_wav(out)


def gst_send_command(port: int, freq: int, key: bytes, mki: bytes, gst: GstProfile) -> list[str]:
    """audiotestsrc → Opus (20 ms) → RTP (PT 96) → srtpenc with ``key`` and ``mki`` (GstBuffer properties, hex)."""
    return [
        "gst-launch-1.0", "-q",
        "audiotestsrc", "wave=sine", f"freq={freq}", f"num-buffers={FRAMES}", f"samplesperbuffer={FRAME}", "!",
        f"audio/x-raw,rate={RATE},channels=1", "!",
        "opusenc", "frame-size=20", "!",
        "rtpopuspay", f"pt={PAYLOAD_TYPE}", f"ssrc={SSRC}", "!",
        "srtpenc", f"key={key.hex()}", f"mki={mki.hex()}",
        f"rtp-cipher={gst.cipher}", f"rtp-auth={gst.auth}", f"rtcp-cipher={gst.cipher}", f"rtcp-auth={gst.auth}", "!",
        "udpsink", "host=127.0.0.1", f"port={port}", "sync=false",
    ]  # fmt: skip


def unprotect_all(receiver: SrtpReceiver, datagrams: list[bytes]) -> tuple[list[Rtp], list[bytes], int]:
    """(RTP packets, their MKIs, number rejected)."""
    packets: list[Rtp] = []
    mkis: list[bytes] = []
    rejected = 0
    for datagram in datagrams:
        try:
            rtp, mki = receiver.unprotect(datagram)
        except SrtpError:
            rejected += 1
            continue
        packets.append(parse_rtp(rtp))
        mkis.append(mki)
    return packets, mkis, rejected


def assert_tone(decoded: Samples, freq: int, min_seconds: float) -> None:
    assert len(decoded) >= min_seconds * RATE, f"only {len(decoded)} samples decoded"
    steady = decoded[RATE // 10 :]  # past the codec's start-up
    assert abs(dominant_frequency(steady) - freq) <= 5
    reference = 0.8 * np.sin(2 * np.pi * freq * np.arange(len(steady) + RATE // freq) / RATE)
    correlation, _ = best_correlation(steady, reference, max_lag=RATE // freq)
    assert correlation >= 0.9, correlation


# --- 1. our sender → GStreamer receiver ---


@pytest.mark.parametrize("gst", GST_PROFILES, ids=_ids)
def test_our_sender_to_gstreamer_receiver(gst: GstProfile, tmp_path: Path) -> None:
    group_key = make_group_key()
    sender = SrtpSender(group_key, ALICE, gst.profile)
    source = chirp(FRAMES * FRAME / RATE)
    packets = [sender.protect(p) for p in rtp_packets(opus_frames(source))]
    key = media_key(group_key, group_key.guk_id(ALICE), gst.profile)
    assert len(key) == 16 + gst.profile.salt_length
    assert sender.mki == srtp_mki(group_key.gmk_id, group_key.guk_id(ALICE))

    decoded = gst_receive(packets, key, sender.mki, gst, tmp_path / "ok.wav")
    assert len(decoded) == FRAMES * FRAME, f"GStreamer decoded {len(decoded)} samples"  # every packet, none lost
    correlation, lag = best_correlation(decoded, source, max_lag=2 * FRAME)
    assert correlation >= 0.9 and abs(lag - OPUS_LOOKAHEAD) <= 8, (correlation, lag)

    # The same packets with the key of another GMK, or with the right key bound to another MKI: nothing.
    wrong_key = media_key(make_group_key(), group_key.guk_id(ALICE), gst.profile)
    assert len(gst_receive(packets, wrong_key, sender.mki, gst, tmp_path / "wrong-key.wav")) == 0
    wrong_mki = sender.mki[:4] + bytes(b ^ 0xFF for b in sender.mki[4:])
    assert len(gst_receive(packets, key, wrong_mki, gst, tmp_path / "wrong-mki.wav")) == 0


# --- 2. GStreamer sender → our receiver ---


@pytest.mark.parametrize("gst", GST_PROFILES, ids=_ids)
def test_gstreamer_sender_to_our_receiver(gst: GstProfile, udp_receiver: UdpReceiver) -> None:
    group_key = make_group_key()
    bob_guk = group_key.guk_id(BOB)
    mki = srtp_mki(group_key.gmk_id, bob_guk)
    command = gst_send_command(udp_receiver.port, 700, media_key(group_key, bob_guk, gst.profile), mki, gst)
    datagrams = run_sender(command, udp_receiver)
    assert len(datagrams) >= FRAMES
    assert {split_mki(d, gst.profile)[1] for d in datagrams} == {mki}  # where we expect it, in every packet

    receiver = SrtpReceiver(gst.profile)
    receiver.add_key(group_key)  # holds the GMK only: Bob's key is derived from the MKI
    packets, mkis, rejected = unprotect_all(receiver, datagrams)
    assert rejected == 0 and set(mkis) == {mki}
    assert {(p.payload_type, p.ssrc) for p in packets} == {(PAYLOAD_TYPE, SSRC)}
    sequences = [p.sequence for p in in_order(packets)]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(datagrams))]  # none lost
    assert_tone(decode_opus(packets), 700, min_seconds=FRAMES * FRAME / RATE)

    # A receiver holding another GMK under the same GMK-ID: the MKI selects it, every packet fails to authenticate.
    impostor = SrtpReceiver(gst.profile)
    impostor.add_key(GroupKey(os.urandom(16), group_key.gmk_id, group_key.rand))
    assert unprotect_all(impostor, datagrams)[2] == len(datagrams)


# --- 3. ffmpeg sender (its own SRTP, no MKI) → a session keyed from media_key ---


def test_ffmpeg_sender_to_media_key_session(udp_receiver: UdpReceiver) -> None:
    profile = AES_CM_128_HMAC_SHA1_80
    group_key = make_group_key()
    key = media_key(group_key, group_key.guk_id(BOB), profile)
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={RATE}", "-t", str(FRAMES * FRAME / RATE), "-ac", "1",
        "-c:a", "libopus", "-application", "voip", "-frame_duration", "20",
        "-payload_type", str(PAYLOAD_TYPE), "-ssrc", str(SSRC), "-f", "rtp",
        "-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80", "-srtp_out_params", base64.b64encode(key).decode(),
        f"srtp://127.0.0.1:{udp_receiver.port}?pkt_size=1200",
    ]  # fmt: skip
    rtp_datagrams = run_sender(command, udp_receiver)  # ffmpeg sends its SRTCP to the next port
    assert len(rtp_datagrams) >= FRAMES - 2

    def session(session_key: bytes) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(
            key=session_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp
        )
        return pylibsrtp.Session(policy)

    ours = session(key)
    packets = [parse_rtp(bytes(ours.unprotect(d))) for d in rtp_datagrams]
    assert {(p.payload_type, p.ssrc) for p in packets} == {(PAYLOAD_TYPE, SSRC)}
    assert_tone(decode_opus(packets), 440, min_seconds=(FRAMES - 2) * FRAME / RATE)

    wrong = session(media_key(make_group_key(), group_key.guk_id(BOB), profile))
    for datagram in rtp_datagrams:
        with pytest.raises(pylibsrtp.Error):
            wrong.unprotect(datagram)
