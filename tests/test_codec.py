"""Opus for voice (client/codec.py): tone and speech round trips, packet loss concealment, in-band FEC recovery,
the loss hint and input checks. Speech is espeak-ng's (tests/audio_harness.speech_wav)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import opuslib
import pytest

from client.codec import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, CodecError, OpusDecoder, OpusEncoder
from tests.audio_harness import envelope, normalised_xcorr, read_wav, speech_wav

Samples = np.ndarray[Any, np.dtype[np.int16]]


def tone(frequency: float, seconds: float, amplitude: float = 0.3) -> Samples:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def frames_of(samples: Samples) -> list[bytes]:
    usable = len(samples) // FRAME_SAMPLES * FRAME_SAMPLES
    return [samples[i : i + FRAME_SAMPLES].tobytes() for i in range(0, usable, FRAME_SAMPLES)]


def pcm(data: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.frombuffer(data, dtype=np.int16).astype(np.float64)


def rms(x: Any) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def peak_frequency(x: Any) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    path = speech_wav("Alpha team, move to the north entrance. Over.", tmp_path_factory.mktemp("codec") / "s.wav")
    return read_wav(path)


def test_tone_round_trip() -> None:
    original = tone(1000, 1.0)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets = [encoder.encode(frame) for frame in frames_of(original)]
    assert all(0 < len(packet) < 200 for packet in packets)
    decoded = b"".join(decoder.decode(packet) for packet in packets)
    assert len(decoded) == len(original) * 2
    correlation, lag = normalised_xcorr(original, np.frombuffer(decoded, dtype=np.int16), max_lag_s=0.02)
    print(f"tone: correlation {correlation:.4f} (lag {lag * SAMPLE_RATE:.0f} samples, ambiguous by a period)")
    assert correlation >= 0.9
    steady = pcm(decoded)[SAMPLE_RATE // 10 :]
    assert peak_frequency(steady) == pytest.approx(1000, abs=5)
    assert 20 * np.log10(rms(steady) / rms(original)) == pytest.approx(0, abs=1.0)


def test_speech_round_trip_and_cost(speech: Samples) -> None:
    frames = frames_of(speech)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    start = time.perf_counter()
    packets = [encoder.encode(frame) for frame in frames]
    encoded = time.perf_counter()
    decoded = [decoder.decode(packet) for packet in packets]
    done = time.perf_counter()
    encode_us = (encoded - start) / len(frames) * 1e6
    decode_us = (done - encoded) / len(frames) * 1e6
    bitrate = sum(map(len, packets)) * 8 / (len(frames) * FRAME_SAMPLES / SAMPLE_RATE)
    heard = np.frombuffer(b"".join(decoded), dtype=np.int16)
    sent = speech[: len(heard)]
    raw, lag = normalised_xcorr(sent, heard, max_lag_s=0.05)
    env, _ = normalised_xcorr(envelope(sent), envelope(heard), max_lag_s=0.05, rate=100)
    print(
        f"speech: {len(frames)} frames, encode {encode_us:.0f} us, decode {decode_us:.0f} us per 20 ms frame, "
        f"{bitrate / 1000:.1f} kbit/s; correlation raw {raw:.3f} (lag {lag * SAMPLE_RATE:.0f}), envelope {env:.3f}"
    )
    assert all(len(frame) == FRAME_BYTES for frame in decoded)
    assert 15000 < bitrate < 30000
    assert raw >= 0.85 and env >= 0.9
    assert encode_us < 5000 and decode_us < 2000  # far inside real time (20 ms)
    # SILK wideband frames (TOC config 8-11, RFC 6716 3.1): the mode in which in-band FEC exists.
    assert {packet[0] >> 3 for packet in packets} <= {8, 9, 10, 11}


def test_concealment_continues_then_fades() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    original = tone(1000, 0.6)
    last = b""
    for frame in frames_of(original):
        last = decoder.decode(encoder.encode(frame))
    concealed = [decoder.conceal() for _ in range(6)]
    assert all(len(frame) == FRAME_BYTES for frame in concealed)
    first = pcm(concealed[0])
    assert peak_frequency(first) == pytest.approx(1000, abs=50)  # the pitch carries on
    assert rms(first) > 0.25 * rms(pcm(last))
    energies = [rms(pcm(frame)) for frame in concealed]
    assert energies == sorted(energies, reverse=True) and energies[-1] < 0.01 * energies[0]  # then fades out


def fec_and_plc_errors(speech: Samples, encoder: OpusEncoder) -> tuple[float, float, int]:
    """Drop single voiced frames; recover each with decode_fec(next packet) and, separately, with conceal().
    Returns the error energies (against the frame decoded without loss) summed over the dropped frames."""
    frames = frames_of(speech)
    packets = [encoder.encode(frame) for frame in frames]
    reference = OpusDecoder()
    clean = [reference.decode(packet) for packet in packets]
    fec_error = plc_error = 0.0
    lost = 0
    for k in range(5, len(packets) - 1, 7):
        if rms(pcm(clean[k])) < 300:  # only frames with speech in them
            continue
        with_fec, with_plc = OpusDecoder(), OpusDecoder()
        for packet in packets[:k]:
            with_fec.decode(packet)
            with_plc.decode(packet)
        recovered = with_fec.decode_fec(packets[k + 1])
        assert len(recovered) == FRAME_BYTES
        with_fec.decode(packets[k + 1])  # and the next frame itself, as a receiver does
        fec_error += float(np.sum((pcm(recovered) - pcm(clean[k])) ** 2))
        plc_error += float(np.sum((pcm(with_plc.conceal()) - pcm(clean[k])) ** 2))
        lost += 1
    return fec_error, plc_error, lost


def test_fec_recovers_a_lost_frame_better_than_concealment(speech: Samples) -> None:
    fec_error, plc_error, lost = fec_and_plc_errors(speech, OpusEncoder())
    print(f"FEC: {lost} lost frames, error energy FEC/PLC = {fec_error / plc_error:.3f}")
    assert lost >= 10
    assert fec_error < 0.5 * plc_error
    # Without FEC in the packets, "recovery" is just concealment: it is the redundancy that helps.
    fec_error, plc_error, _ = fec_and_plc_errors(speech, OpusEncoder(fec=False))
    assert fec_error == plc_error


def test_expected_loss_hint() -> None:
    encoder = OpusEncoder(expected_loss_percent=10)
    assert encoder.expected_loss == 10 and encoder.fec and encoder.bitrate == 25000
    for percent in (0, 25, 100):
        encoder.set_expected_loss(percent)
        assert encoder.expected_loss == percent
    for bad in (-1, 101, 5.5, True, "5"):
        with pytest.raises(ValueError):
            encoder.set_expected_loss(bad)  # type: ignore[arg-type]
    assert encoder.expected_loss == 100
    with pytest.raises(ValueError):
        OpusEncoder(expected_loss_percent=200)
    assert not OpusEncoder(fec=False).fec


def test_bad_input_is_refused() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    for size in (0, 2, FRAME_BYTES - 2, FRAME_BYTES - 1, FRAME_BYTES + 1, 2 * FRAME_BYTES):
        with pytest.raises(ValueError):
            encoder.encode(bytes(size))
    for bad in ({"bitrate": 1000}, {"bitrate": 600000}, {"max_bandwidth": "ultra"}):
        with pytest.raises(ValueError):
            OpusEncoder(**bad)
    with pytest.raises(ValueError):
        decoder.decode(b"")
    with pytest.raises(ValueError):
        decoder.decode_fec(b"")
    with pytest.raises(CodecError, match="corrupted stream"):
        decoder.decode(bytes([0xFF, 0xFF, 0xFF]))  # code 3 packet with an impossible frame count
    assert issubclass(CodecError, ValueError)
    assert len(decoder.decode(encoder.encode(bytes(FRAME_BYTES)))) == FRAME_BYTES  # still usable


def test_decodes_a_peers_longer_packets() -> None:
    """Another implementation may send 40 ms packets (RFC 7587 allows up to 120 ms): decoded whole."""
    peer = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
    packet = peer.encode(tone(440, 0.04).tobytes(), 2 * FRAME_SAMPLES)
    assert len(OpusDecoder().decode(packet)) == 2 * FRAME_BYTES


def test_decoder_reset(speech: Samples) -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    for frame in frames_of(speech)[:20]:
        decoder.decode(encoder.encode(frame))
    decoder.reset()
    assert not any(decoder.conceal())  # nothing left to conceal from: silence


def aligned_snr_db(sent: Samples, heard: bytes, max_lag: int = 800) -> float:
    """SNR of decoded speech against the original, at the lag (the codec's delay) that maximises it."""
    x, y = sent.astype(np.float64), pcm(heard)
    best = -np.inf
    for lag in range(max_lag):
        a, b = x[: len(y) - lag], y[lag:]
        best = max(best, 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)))
    return float(best)


def test_complexity_five_keeps_speech_quality_and_fec(speech: Samples) -> None:
    """The default complexity (5, cheaper than libopus's 10) decodes speech as faithfully as 10 and keeps FEC."""
    encoder = OpusEncoder()
    assert encoder.complexity == 5 and encoder.fec
    frames = frames_of(speech)
    snr = {}
    for complexity in (5, 10):
        coder, decoder = OpusEncoder(complexity=complexity), OpusDecoder()
        heard = b"".join(decoder.decode(coder.encode(frame)) for frame in frames)
        snr[complexity] = aligned_snr_db(speech[: len(heard) // 2], heard)
    print(f"decoded speech SNR: complexity 5 {snr[5]:.2f} dB, 10 {snr[10]:.2f} dB")
    assert snr[5] >= snr[10] - 1.0 and snr[5] > 6.0
    fec_error, plc_error, lost = fec_and_plc_errors(speech, encoder)
    assert lost >= 10 and fec_error < 0.5 * plc_error
    # libopus lowers its FEC threshold's "equivalent rate" with the complexity: at 24 kbit/s, 5 has no FEC at all
    # (that is why the default bitrate is 25 kbit/s).
    fec_error, plc_error, _ = fec_and_plc_errors(speech, OpusEncoder(24000, complexity=5))
    assert fec_error == plc_error
    for bad in (-1, 11, True, 5.0):
        with pytest.raises(ValueError):
            OpusEncoder(complexity=bad)  # type: ignore[arg-type]
