"""Opus for push-to-talk voice (RFC 6716; RTP payload format RFC 7587): 48 kHz mono, 20 ms frames.

The encoder is set up for speech over a lossy network: application VOIP, a voice signal hint, variable bitrate
around ``bitrate``, in-band FEC on and the expected packet loss as a hint (FEC in Opus is the SILK layer's low
bitrate redundancy: packet n+1 also carries a coarse copy of frame n, used only if the loss hint is above zero).

The audio bandwidth is capped at wideband (8 kHz audio, what MCPTT's AMR-WB gives) by default: libopus 1.3 turns
FEC on only if the bitrate exceeds a threshold for the current bandwidth (with the loss hint at 5 % or less it does
not lower the bandwidth to make room). At 24 kbit/s it would pick super-wideband hybrid mode, whose threshold is
above 24 kbit/s, so the packets would carry no FEC at all (measured: recovering a lost frame from the next packet
gave exactly the concealment output); capped at wideband FEC is on and a recovered frame has ~1/6 of the
concealment's error energy.

Complexity 5 (libopus defaults to 10): at 10 the encoder runs a signal analysis and the SILK layer's largest
delayed-decision quantiser (4 states), LPC and noise-shaping orders; 5 uses 2 states and orders 10/16 (4 and 5 are
the same SILK settings). Measured on espeak speech: encoding costs 204 us per 20 ms frame at 5, 281 at 6, about
twice that at 10, for a decoded SNR within 0.35 dB of 10's and FEC recovery as good (tests/test_codec.py); encoding
was the largest part of a talker's CPU (``scripts/bench voice``).
libopus counts complexity in the "equivalent rate" it compares with the FEC threshold (x (90 + complexity) %): at
24 kbit/s and complexity 5 or 6 FEC silently goes off (recovery = concealment), so the bitrate is 25 kbit/s: at 5,
with the 5 % loss hint, 25000 x 0.95 x 0.875 = 20 781 bit/s against the wideband threshold of 20 400.
The decoder gives one frame per packet, conceals a lost frame (PLC) and recovers a lost frame from the next
packet's FEC data.

libopus is called through opuslib's ctypes bindings, with buffers allocated once per encoder/decoder (opuslib's
high-level classes allocate and copy per call and cannot pass a NULL packet for concealment).
"""

from __future__ import annotations

import ctypes
from typing import Any

import opuslib
import opuslib.api
import opuslib.api.ctl
import opuslib.api.decoder
import opuslib.api.encoder
import opuslib.api.info

SAMPLE_RATE = 48000
CHANNELS = 1
FRAME_SAMPLES = 960  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
MAX_FRAME_SAMPLES = 5760  # 120 ms, the longest Opus packet: a peer may send 40 or 60 ms packets
DEFAULT_COMPLEXITY = 5  # see the module docstring
DEFAULT_BITRATE = 25000  # at complexity 5: above libopus's FEC threshold (see the module docstring)
MAX_PACKET_BYTES = 1276  # RFC 6716 3.4 (R2): the largest single-frame packet; ample for one 20 ms frame
BANDWIDTHS = {
    "narrowband": opuslib.BANDWIDTH_NARROWBAND,  # 4 kHz audio
    "mediumband": opuslib.BANDWIDTH_MEDIUMBAND,  # 6 kHz
    "wideband": opuslib.BANDWIDTH_WIDEBAND,  # 8 kHz
    "superwideband": opuslib.BANDWIDTH_SUPERWIDEBAND,  # 12 kHz
    "fullband": opuslib.BANDWIDTH_FULLBAND,  # 20 kHz
}

__all__ = [
    "BANDWIDTHS",
    "CHANNELS",
    "DEFAULT_BITRATE",
    "DEFAULT_COMPLEXITY",
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "CodecError",
    "OpusDecoder",
    "OpusEncoder",
]


class CodecError(ValueError):
    """A packet libopus refuses (corrupt or truncated) or a bad argument."""


def _check(result: int, what: str) -> int:
    if result < 0:
        message = opuslib.api.info.strerror(result)
        if isinstance(message, bytes):
            message = message.decode("ascii", "replace")
        raise CodecError(f"{what}: {message} ({result})")
    return result


class OpusEncoder:
    """One Opus encoder: 20 ms of 16-bit mono PCM in, one Opus packet out."""

    def __init__(
        self,
        bitrate: int = DEFAULT_BITRATE,
        *,
        fec: bool = True,
        expected_loss_percent: int = 5,
        max_bandwidth: str = "wideband",
        complexity: int = DEFAULT_COMPLEXITY,
    ) -> None:
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000..510000 bit/s, not {bitrate}")
        if max_bandwidth not in BANDWIDTHS:
            raise ValueError(f"max_bandwidth must be one of {', '.join(BANDWIDTHS)}, not {max_bandwidth!r}")
        if isinstance(complexity, bool) or not isinstance(complexity, int) or not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be an integer 0..10, not {complexity!r}")
        self._state: Any = opuslib.api.encoder.create_state(SAMPLE_RATE, CHANNELS, opuslib.APPLICATION_VOIP)
        self._ctl(opuslib.api.ctl.set_bitrate, bitrate)
        self._ctl(opuslib.api.ctl.set_signal, opuslib.SIGNAL_VOICE)
        self._ctl(opuslib.api.ctl.set_max_bandwidth, BANDWIDTHS[max_bandwidth])
        self._ctl(opuslib.api.ctl.set_inband_fec, 1 if fec else 0)
        self._ctl(opuslib.api.ctl.set_complexity, complexity)
        self._output = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self.set_expected_loss(expected_loss_percent)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            opuslib.api.encoder.destroy(state)
            self._state = None

    def _ctl(self, request: Any, value: int | None = None) -> Any:
        return opuslib.api.encoder.encoder_ctl(self._state, request, value)

    def set_expected_loss(self, percent: int) -> None:
        """The packet loss the encoder should expect (0-100 %): more loss, more FEC redundancy."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"expected loss must be an integer percentage 0..100, not {percent!r}")
        self._ctl(opuslib.api.ctl.set_packet_loss_perc, percent)

    @property
    def expected_loss(self) -> int:
        return int(self._ctl(opuslib.api.ctl.get_packet_loss_perc))

    @property
    def bitrate(self) -> int:
        return int(self._ctl(opuslib.api.ctl.get_bitrate))

    @property
    def complexity(self) -> int:
        return int(self._ctl(opuslib.api.ctl.get_complexity))

    @property
    def fec(self) -> bool:
        return bool(self._ctl(opuslib.api.ctl.get_inband_fec))

    def encode(self, pcm: bytes) -> bytes:
        """One 20 ms frame (960 int16 samples, native byte order, 1920 octets) → one Opus packet."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"an Opus frame is {FRAME_BYTES} octets of PCM ({FRAME_SAMPLES} samples), not {len(pcm)}")
        samples = (ctypes.c_int16 * FRAME_SAMPLES).from_buffer_copy(pcm)
        length = opuslib.api.encoder.libopus_encode(self._state, samples, FRAME_SAMPLES, self._output, MAX_PACKET_BYTES)
        return self._output.raw[: _check(length, "opus_encode")]


class OpusDecoder:
    """One Opus decoder (one per talker: its state follows that talker's stream). Like the encoder, an instance
    is for one thread at a time (it reuses its output buffer)."""

    def __init__(self) -> None:
        self._state: Any = opuslib.api.decoder.create_state(SAMPLE_RATE, CHANNELS)
        self._pcm = (ctypes.c_int16 * (MAX_FRAME_SAMPLES * CHANNELS))()
        self._pcm_pointer = ctypes.cast(self._pcm, opuslib.api.c_int16_pointer)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            opuslib.api.decoder.destroy(state)
            self._state = None

    def _decode(self, packet: bytes | None, frame_samples: int, fec: bool) -> bytes:
        length = 0 if packet is None else len(packet)
        samples = opuslib.api.decoder.libopus_decode(
            self._state, packet, length, self._pcm_pointer, frame_samples, 1 if fec else 0
        )
        count = _check(samples, "opus_decode") * CHANNELS
        return ctypes.string_at(self._pcm, count * 2)

    def decode(self, packet: bytes) -> bytes:
        """One Opus packet → its PCM: 960 int16 samples for a 20 ms packet (a peer's 40/60 ms packet gives more)."""
        if not packet:
            raise ValueError("an empty packet: call conceal() for a lost one")
        return self._decode(packet, MAX_FRAME_SAMPLES, False)

    def conceal(self) -> bytes:
        """960 samples of packet loss concealment for a lost frame (opus_decode with no packet)."""
        return self._decode(None, FRAME_SAMPLES, False)

    def decode_fec(self, next_packet: bytes) -> bytes:
        """Recover the lost frame before ``next_packet`` from its in-band FEC data (960 samples). Without FEC data
        in that packet libopus conceals instead. Decode ``next_packet`` itself afterwards as usual."""
        if not next_packet:
            raise ValueError("an empty packet")
        return self._decode(next_packet, FRAME_SAMPLES, True)

    def reset(self) -> None:
        """Forget the stream (a new talk burst from another talker)."""
        opuslib.api.decoder.decoder_ctl(self._state, opuslib.api.ctl.reset_state)
